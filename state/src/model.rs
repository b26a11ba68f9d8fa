//! Rows of the store as typed values, and the job status machine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::journal::StepEvent;

/// Milliseconds since the Unix epoch (what every `*_at` column holds).
pub type Millis = i64;

pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(
    /// Identifies a job (`provision`, `add-region`, `destroy`).
    JobId
);
id_type!(
    /// Identifies a Sovereign.
    SovereignId
);

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $s)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }
    };
}

str_enum!(
    /// What a job does.
    JobKind { Provision => "provision", AddRegion => "add-region", Destroy => "destroy" }
);

str_enum!(
    /// A job's status, as the API reports it (`docs/api.md`).
    JobStatus {
        Pending => "pending",
        Running => "running",
        Paused => "paused",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        Abandoned => "abandoned",
    }
);

str_enum!(
    /// Whether the engine is moving a job forward or unwinding it (undo).
    JobMode { Forward => "forward", Unwinding => "unwinding" }
);

str_enum!(
    /// A Sovereign's lifecycle.
    SovereignStatus {
        Provisioning => "provisioning",
        Ready => "ready",
        Failed => "failed",
        Destroying => "destroying",
        Destroyed => "destroyed",
    }
);

impl JobStatus {
    /// True for statuses that a daemon start must pick up and drive.
    pub fn in_flight(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Running)
    }

    /// True for statuses no verb can leave.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Cancelled | JobStatus::Abandoned)
    }

    /// The job status machine. `failed` can be left by an operator `retry`
    /// (a job failed with the `keep` policy still holds its resources);
    /// `succeeded`, `cancelled` and `abandoned` are final.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        match (self, next) {
            (a, b) if a == b => true,
            (Pending, Running | Cancelled | Abandoned | Failed) => true,
            (Running, Paused | Succeeded | Failed | Cancelled | Abandoned) => true,
            (Paused, Running | Abandoned | Failed | Cancelled) => true,
            (Failed, Running | Abandoned) => true,
            _ => false,
        }
    }
}

/// A Sovereign row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sovereign {
    pub id: SovereignId,
    pub name: String,
    pub fqdn: String,
    pub status: SovereignStatus,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A job row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub sovereign_id: SovereignId,
    pub kind: JobKind,
    pub status: JobStatus,
    pub mode: JobMode,
    /// The request with every secret removed.
    pub request: Value,
    /// The serialized plan (phases and step DAGs).
    pub plan: Value,
    /// Engine options (failure policy, fault injection, retry policy).
    pub options: Value,
    /// Why the job is paused: remediation text and runbook.
    pub pause: Option<Value>,
    /// Why the job failed.
    pub error: Option<Value>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

/// One journal row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepEventRecord {
    pub seq: i64,
    pub node: String,
    pub event: StepEvent,
    pub at: Millis,
}

/// An event of a job's stream, as stored and served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    /// Monotonic and gap-free per job, starting at 1.
    pub id: i64,
    pub at: Millis,
    pub kind: String,
    pub body: Value,
    /// The event's wire form, rendered once and shared by every subscriber
    /// of a live event (1,000 SSE clients must not serialize it 1,000 times).
    #[serde(skip)]
    pub rendered: Rendered,
}

/// A lazily rendered text form; equal to any other (it is derived data).
#[derive(Clone, Debug, Default)]
pub struct Rendered(std::sync::OnceLock<std::sync::Arc<str>>);

impl Rendered {
    /// The rendered form, computing it on first use.
    pub fn get_or_init(&self, f: impl FnOnce() -> String) -> std::sync::Arc<str> {
        self.0.get_or_init(|| f().into()).clone()
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// One escrowed blob: a secret (or one part of it) encrypted to one
/// custodian's age recipient alone, ASCII-armored. The daemon cannot
/// decrypt it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowItem {
    /// What it is: `openbao-share`, `openbao-recovery-key`,
    /// `static-seal-key`, `sealed-secrets-key`, `admin-kubeconfig`.
    pub kind: String,
    /// The part's index (0-based); for a whole copy, the custodian's.
    pub index: u32,
    /// The custodian's index in the request.
    pub custodian: u32,
    /// The custodian's label (or `custodian <i>`).
    pub label: String,
    pub recipient: String,
    /// `-----BEGIN AGE ENCRYPTED FILE-----` ...
    pub armored: String,
    /// Parts needed to recover the secret (1: this blob alone).
    pub threshold: u8,
    /// Parts made.
    pub parts: u8,
    /// SHA-256 (hex) of the recovered secret, or of its public half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub created_at: Millis,
}

/// An event to append (the store assigns id and time).
///
/// It is serialized when it is made, on the emitter's task, so the store's
/// single writer only binds text. An event made from a typed value
/// ([`NewJobEvent::of_step`]) never becomes a [`Value`] on the way in: the
/// writer parses its text back only if someone is subscribed to the job
/// when it commits (100k tofu lines are stored, not re-shaped three times).
#[derive(Clone, Debug, PartialEq)]
pub struct NewJobEvent {
    kind: String,
    /// The body as stored: JSON text.
    text: String,
    /// The body as the emitter built it, if it built one (kept for live
    /// subscribers: no parse back).
    value: Option<Value>,
}

/// A typed body with its phase and step tags, serialized in one pass.
#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(flatten)]
    body: &'a T,
    phase: &'a str,
    step: &'a str,
}

impl NewJobEvent {
    pub fn new(kind: impl Into<String>, body: Value) -> Self {
        NewJobEvent { kind: kind.into(), text: body.to_string(), value: Some(body) }
    }

    /// A step's event from a typed body, tagged with `phase` and `step`
    /// (the view's filters) in the same serialization. `body` must
    /// serialize as a map without fields of those names.
    pub fn of_step<T: Serialize>(
        kind: impl Into<String>,
        body: &T,
        phase: &str,
        step: &str,
    ) -> Result<Self, serde_json::Error> {
        let text = serde_json::to_string(&Tagged { body, phase, step })?;
        Ok(NewJobEvent { kind: kind.into(), text, value: None })
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The body as stored (JSON text).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The body as a value: the emitter's, else parsed from the text.
    pub fn body(&self) -> Value {
        match &self.value {
            Some(v) => v.clone(),
            // Text this type serialized itself: it parses.
            None => serde_json::from_str(&self.text).unwrap_or(Value::Null),
        }
    }
}

/// An audit trail entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub job_id: Option<JobId>,
    pub sovereign_id: Option<SovereignId>,
    pub detail: Value,
}

/// A console sign-in (`/ui`), as the store keeps it: digests only, never
/// the session secret or the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    /// SHA-256 (hex) of the session secret the browser holds.
    pub id_sha256: String,
    /// The person (or the shared token's role) the audit trail records.
    pub actor: String,
    /// `operator` (the only role a session is opened for today).
    pub role: String,
    /// SHA-256 (hex) of the token the session was opened with.
    pub token_sha256: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// An audit entry to append.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewAudit {
    pub actor: String,
    pub action: String,
    pub job_id: Option<JobId>,
    pub sovereign_id: Option<SovereignId>,
    pub detail: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_cannot_be_left() {
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                if from.is_final() && from != to {
                    assert!(!from.can_become(*to), "{from} -> {to}");
                }
            }
        }
        assert!(JobStatus::Paused.can_become(JobStatus::Running));
        assert!(!JobStatus::Pending.can_become(JobStatus::Succeeded));
    }

    #[test]
    fn enums_round_trip_through_strings() {
        for k in JobKind::ALL {
            assert_eq!(k.as_str().parse::<JobKind>().unwrap(), *k);
        }
        assert_eq!(serde_json::to_string(&JobKind::AddRegion).unwrap(), "\"add-region\"");
    }
}
