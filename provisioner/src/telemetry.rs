//! Logs and traces.
//!
//! Logs: `tracing` to stderr, human-readable or JSON lines. The filter
//! comes from `RUST_LOG` (default `info`; `warn` for the all-in-one `run`,
//! whose progress bars own the terminal).
//!
//! Traces: the engine's spans (a `job` per drive, a `phase` per phase it
//! works on, a `step` per attempt, an `adapter` per call to a cloud, DNS,
//! OpenBao, SSH or a command) exported over OTLP/HTTP, configured by the
//! standard variables:
//!
//! - `OTEL_TRACES_EXPORTER`: `otlp` or `none` (default: `otlp` when an
//!   endpoint is set, else `none`);
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`;
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`):
//!   `http/protobuf` (default) or `http/json`. `grpc` is not built in: it
//!   is refused at start, not ignored;
//! - `OTEL_SERVICE_NAME` (default `catalyst-zero`), `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_BSP_*` (the batch exporter).
//!
//! Spans are exported at `info` whatever `RUST_LOG` says. The `job` span
//! carries the trace id as a field, so every log line of a job names its
//! trace (JSON lines list their spans' fields).
//!
//! Installed by the binary only, never by [`crate::server::start`], so
//! tests and embedders keep control of the global subscriber.

use anyhow::{Context, bail};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Keeps logging and tracing installed; dropping it flushes the spans not
/// yet exported.
#[must_use = "hold the guard for the life of the program"]
pub struct TelemetryGuard {
    traces: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.traces.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: the last traces could not be exported: {e}");
        }
    }
}

/// The OTLP trace exporter the `OTEL_*` variables ask for, if any.
pub fn traces_from_env(
    get: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or(var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let exporter = var("OTEL_TRACES_EXPORTER")
        .unwrap_or_else(|| if endpoint.is_some() { "otlp".into() } else { "none".into() });
    match exporter.trim() {
        "none" => return Ok(None),
        "otlp" => {}
        other => bail!("OTEL_TRACES_EXPORTER={other}: only `otlp` and `none` are supported"),
    }
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or(var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    let protocol = match protocol.trim() {
        "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        "grpc" => bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this build exports over OTLP/HTTP only; use \
             http/protobuf (a collector's port 4318)"
        ),
        other => bail!("OTEL_EXPORTER_OTLP_PROTOCOL={other}: use http/protobuf or http/json"),
    };
    // The endpoint, headers and timeout come from the OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .context("cannot build the OTLP trace exporter")?;
    let mut resource = Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("catalyst-zero");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Records the OpenTelemetry trace id of `span` in its `trace_id` field
/// (nothing when traces are off).
pub fn record_trace_id(span: &tracing::Span) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", sc.trace_id().to_string());
    }
}

/// Installs the global subscriber. Fails if one is already installed, or if
/// the `OTEL_*` variables ask for what cannot be done.
pub fn init(format: LogFormat, default_filter: &str) -> anyhow::Result<TelemetryGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // A log line that cannot be written (stderr on a full disk) is lost,
    // never fatal: with internal-error logging on, tracing-subscriber
    // reports the failure with `eprintln!`, which panics when stderr fails
    // too, and took the store's writer thread down with it.
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .with_filter(filter)
            .boxed(),
    };
    let traces = traces_from_env(&|k| std::env::var(k).ok())?;
    let otel = traces.as_ref().map(|p| {
        let ours = Targets::new()
            .with_target("cz_engine", tracing::Level::INFO)
            .with_target("cz_adapters", tracing::Level::INFO)
            .with_target("cz_sim", tracing::Level::INFO)
            .with_target("cz_phases", tracing::Level::INFO)
            .with_target("catalyst_zero", tracing::Level::INFO);
        tracing_opentelemetry::layer().with_tracer(p.tracer("catalyst-zero")).with_filter(ours)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(TelemetryGuard { traces })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn traces_are_off_unless_asked_for_and_bad_settings_are_refused() {
        assert!(traces_from_env(&env(&[])).unwrap().is_none());
        assert!(
            traces_from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ]))
            .unwrap()
            .is_none()
        );
        let e = traces_from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("http/protobuf"), "{e}");
        let e = traces_from_env(&env(&[("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(e.to_string().contains("zipkin"), "{e}");
    }
}
