//! Logging: `tracing` to stderr, human-readable or JSON lines.
//!
//! The filter comes from `RUST_LOG` (default `info`; `warn` for the all-in-one `run`, whose progress bars own the terminal). Installed by the
//! binary only, never by [`crate::server::start`], so tests and embedders
//! keep control of the global subscriber.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Keeps logging installed; dropping it is harmless today, but holding it
/// leaves room for buffered writers later.
#[must_use = "hold the guard for the life of the program"]
pub struct TelemetryGuard {
    _private: (),
}

/// Installs the global subscriber. Fails if one is already installed.
pub fn init(format: LogFormat, default_filter: &str) -> anyhow::Result<TelemetryGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // A log line that cannot be written (stderr on a full disk) is lost,
    // never fatal: with internal-error logging on, tracing-subscriber
    // reports the failure with `eprintln!`, which panics when stderr fails
    // too, and took the store's writer thread down with it.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(TelemetryGuard { _private: () })
}
