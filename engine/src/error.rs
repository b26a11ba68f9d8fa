//! Step errors and the one match that decides their class.
//!
//! Every failure a step can report is a variant of [`StepError`]. It is
//! serialized into the journal (it must survive a restart), and
//! [`StepError::class`] — one exhaustive match, no wildcard — decides what the
//! engine does with it:
//! - `transient`: retried by the engine with bounded, jittered backoff;
//! - `needs-operator`: the job pauses with remediation text and a runbook;
//! - `terminal`: the job fails and is unwound per its failure policy.
//!
//! Each class/cause pair names a page under `runbooks/`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error and its sources, `outer: inner: …` (what a caller can act on is
/// often only in the innermost one).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    message
}

/// What the engine does with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    Transient,
    NeedsOperator,
    Terminal,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::NeedsOperator => "needs-operator",
            ErrorClass::Terminal => "terminal",
        }
    }
}

/// Which external system an adapter error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Cloud,
    Tofu,
    Ssh,
    Kubernetes,
    Openbao,
    Dns,
    /// A customer's registrar or DNS host (`byo-api`).
    Registrar,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Cloud => "cloud",
            System::Tofu => "tofu",
            System::Ssh => "ssh",
            System::Kubernetes => "kubernetes",
            System::Openbao => "openbao",
            System::Dns => "dns",
            System::Registrar => "registrar",
        }
    }
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an adapter classifies what its system answered. Adapters map their
/// system's own codes (HTTP status, Hetzner error code, exit status) to one
/// of these; the engine never looks at raw codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Rate limited (HTTP 429, `rate_limit_exceeded`).
    RateLimited,
    /// The system is temporarily unavailable or answered 5xx.
    Unavailable,
    /// The connection failed or timed out.
    Network,
    /// Credentials rejected or lacking a permission.
    Unauthorized,
    /// A quota or capacity limit was reached.
    QuotaExceeded,
    /// The request conflicts with an object that exists and is not ours.
    Conflict,
    /// The request was refused as invalid.
    Invalid,
    /// Something we rely on does not exist.
    NotFound,
    /// A command ran and failed.
    CommandFailed,
}

impl Cause {
    /// How an HTTP API's status is classified when its body says nothing
    /// more precise (PowerDNS, the registrars).
    pub fn from_http_status(status: u16) -> Cause {
        match status {
            401 | 403 => Cause::Unauthorized,
            404 => Cause::NotFound,
            409 => Cause::Conflict,
            400 | 422 => Cause::Invalid,
            429 => Cause::RateLimited,
            _ => Cause::Unavailable,
        }
    }
}

/// A step failure. Serializable: it goes into the journal and the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepError {
    /// An external system answered with an error.
    #[error("{system} call `{op}` failed ({cause:?}): {message}")]
    Adapter { system: System, op: String, cause: Cause, message: String },
    /// A bounded wait ran out.
    #[error("timed out after {bound_s}s waiting for {reason}")]
    Timeout { reason: String, bound_s: u64 },
    /// A precondition checked by the step does not hold.
    #[error("precondition failed: {message}")]
    Precondition { message: String, remediation: String },
    /// The request itself is unusable for this step (caught late).
    #[error("the request is invalid at `{path}`: {message}")]
    InvalidInput { path: String, message: String },
    /// A step looked up an earlier step's output that is absent.
    #[error("step output `{name}` is missing")]
    MissingOutput { name: String },
    /// A secret the step needs is absent from the store.
    #[error("secret `{name}` is missing from the store")]
    MissingSecret { name: String },
    /// The store could not be read or written. `fault`: the storage under
    /// it failed (a full disk, a read-only file system, a database held by
    /// another process), which no retry fixes until an operator acts.
    #[error("store failure: {message}")]
    Store {
        message: String,
        retryable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        fault: Option<cz_state::StorageFault>,
    },
    /// A fault injected by the engine's fault plan (tests, drills).
    #[error("injected fault at `{node}`")]
    Injected { node: String, class: ErrorClass },
    /// A component deployed to the cluster did not become healthy by its
    /// probe within its bound: `condition` is what the probe last saw
    /// (`CrashLoopBackOff`, `ArtifactFailed`, `Established=False`, ...).
    #[error("component `{component}` is not healthy after {bound_s}s: {condition}: {message}")]
    Unhealthy { component: String, condition: String, message: String, bound_s: u64 },
    /// A bug or an impossible state: never retried.
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl StepError {
    pub fn adapter(
        system: System,
        op: impl Into<String>,
        cause: Cause,
        message: impl Into<String>,
    ) -> Self {
        StepError::Adapter { system, op: op.into(), cause, message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        StepError::Internal { message: message.into() }
    }

    /// The one decision about what the engine does with this error.
    pub fn class(&self) -> ErrorClass {
        use ErrorClass::*;
        match self {
            StepError::Adapter { cause, .. } => match cause {
                Cause::RateLimited | Cause::Unavailable | Cause::Network => Transient,
                Cause::Unauthorized | Cause::QuotaExceeded | Cause::Conflict | Cause::NotFound => {
                    NeedsOperator
                }
                Cause::CommandFailed => NeedsOperator,
                Cause::Invalid => Terminal,
            },
            StepError::Timeout { .. } => NeedsOperator,
            StepError::Precondition { .. } => NeedsOperator,
            StepError::InvalidInput { .. } => Terminal,
            StepError::MissingOutput { .. } => Terminal,
            StepError::MissingSecret { .. } => NeedsOperator,
            StepError::Store { fault: Some(_), .. } => NeedsOperator,
            StepError::Store { retryable: true, .. } => Transient,
            StepError::Store { retryable: false, .. } => Terminal,
            StepError::Injected { class, .. } => *class,
            StepError::Unhealthy { .. } => NeedsOperator,
            StepError::Internal { .. } => Terminal,
        }
    }

    /// The runbook page for this error, relative to the repository root.
    pub fn runbook(&self) -> &'static str {
        match self {
            StepError::Adapter { cause, .. } => match cause {
                Cause::RateLimited => "runbooks/transient-rate-limited.md",
                Cause::Unavailable | Cause::Network => "runbooks/transient-unavailable.md",
                Cause::Unauthorized => "runbooks/needs-operator-unauthorized.md",
                Cause::QuotaExceeded => "runbooks/needs-operator-quota.md",
                Cause::Conflict => "runbooks/needs-operator-conflict.md",
                Cause::NotFound => "runbooks/needs-operator-not-found.md",
                Cause::CommandFailed => "runbooks/needs-operator-command-failed.md",
                Cause::Invalid => "runbooks/terminal-invalid.md",
            },
            StepError::Timeout { .. } => "runbooks/needs-operator-timeout.md",
            StepError::Precondition { .. } => "runbooks/needs-operator-precondition.md",
            StepError::InvalidInput { .. } => "runbooks/terminal-invalid.md",
            StepError::MissingOutput { .. } | StepError::Internal { .. } => {
                "runbooks/terminal-internal.md"
            }
            StepError::MissingSecret { .. } => "runbooks/needs-operator-missing-secret.md",
            StepError::Store { fault: Some(_), .. } => "runbooks/needs-operator-storage.md",
            StepError::Store { .. } => "runbooks/transient-store.md",
            StepError::Injected { .. } => "runbooks/injected-fault.md",
            StepError::Unhealthy { .. } => "runbooks/needs-operator-component-unhealthy.md",
        }
    }

    /// What an operator should do, in one or two sentences.
    pub fn remediation(&self) -> String {
        match self {
            StepError::Adapter { system, cause, .. } => match cause {
                Cause::RateLimited => format!("The {} API is rate limiting us; the engine backs off by itself. If it keeps failing, check other consumers of the same project budget.", system.as_str()),
                Cause::Unavailable | Cause::Network => format!("The {} endpoint is unreachable or failing; check its status and network path, then `retry`.", system.as_str()),
                Cause::Unauthorized => format!("The {} credentials were refused or lack a permission; replace them and `retry`.", system.as_str()),
                Cause::QuotaExceeded => format!("A {} quota or capacity limit was hit; raise the limit or pick another location/size, then `retry`.", system.as_str()),
                Cause::Conflict => format!("An object in {} conflicts with what this job creates and is not ours; remove or rename it, then `retry`.", system.as_str()),
                Cause::NotFound => format!("Something this step needs in {} is missing; restore it or `retry` the phase that creates it.", system.as_str()),
                Cause::CommandFailed => "A command failed on the target; read its exit status and stderr in the job events, fix the host, then `retry`.".to_string(),
                Cause::Invalid => "The request was refused as invalid; submit a corrected request.".to_string(),
            },
            StepError::Timeout { reason, .. } => format!("Waited too long for {reason}; inspect the target, then `retry` the step or `skip` it with a reason if it is done by hand."),
            StepError::Precondition { remediation, .. } => remediation.clone(),
            StepError::InvalidInput { path, .. } => format!("Fix `{path}` in the request and submit again."),
            StepError::MissingOutput { .. } | StepError::Internal { .. } => "This is a bug in Catalyst-Zero; file it with the job id. `abandon` or `cancel` the job.".to_string(),
            StepError::MissingSecret { name } => format!("Secret `{name}` is gone from the store; restore the database backup or re-submit."),
            StepError::Store { fault: Some(f), .. } => format!("The data directory's storage failed ({}): free space, make it writable or stop what holds the database, then `resume` the job.", f.as_str()),
            StepError::Store { .. } => "The local store failed; check disk space and the data directory.".to_string(),
            StepError::Injected { .. } => "A fault was injected on purpose (fault plan); `retry` to continue.".to_string(),
            StepError::Unhealthy { component, .. } => format!("Component `{component}` is deployed but not healthy; follow its section `#{component}` of the runbook, fix the cause in the cluster, then `retry` (the probe runs again; nothing is reinstalled)."),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("step errors serialize");
        if let Some(obj) = v.as_object_mut() {
            obj.insert("class".into(), self.class().as_str().into());
            obj.insert("message".into(), self.to_string().into());
            obj.insert("runbook".into(), self.runbook().into());
            obj.insert("remediation".into(), self.remediation().into());
        }
        v
    }
}

impl From<cz_state::StoreError> for StepError {
    fn from(e: cz_state::StoreError) -> Self {
        StepError::Store { retryable: e.retryable(), message: chain(&e), fault: e.storage_fault() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runbook_exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let samples = [
            StepError::Timeout { reason: "x".into(), bound_s: 1 },
            StepError::Precondition { message: "m".into(), remediation: "r".into() },
            StepError::InvalidInput { path: "p".into(), message: "m".into() },
            StepError::MissingOutput { name: "n".into() },
            StepError::MissingSecret { name: "n".into() },
            StepError::Store { message: "m".into(), retryable: true, fault: None },
            StepError::Store {
                message: "m".into(),
                retryable: false,
                fault: Some(cz_state::StorageFault::DiskFull),
            },
            StepError::Injected { node: "n".into(), class: ErrorClass::Terminal },
            StepError::internal("x"),
        ];
        let causes = [
            Cause::RateLimited,
            Cause::Unavailable,
            Cause::Network,
            Cause::Unauthorized,
            Cause::QuotaExceeded,
            Cause::Conflict,
            Cause::Invalid,
            Cause::NotFound,
            Cause::CommandFailed,
        ];
        let all = samples
            .into_iter()
            .chain(causes.into_iter().map(|c| StepError::adapter(System::Cloud, "op", c, "m")));
        for e in all {
            let page = root.join(e.runbook());
            assert!(page.exists(), "{} names missing runbook {}", e, e.runbook());
            let json = e.to_json();
            assert_eq!(json["class"], e.class().as_str());
        }
    }

    #[test]
    fn errors_round_trip_through_the_journal_form() {
        let e = StepError::adapter(System::Tofu, "apply", Cause::RateLimited, "429");
        let back: StepError = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.class(), ErrorClass::Transient);
    }
}
