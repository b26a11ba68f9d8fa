//! The labels every cloud object carries and the field manager of every
//! server-side apply: what the sweep, the fakes and the hand-off select by.

/// The Sovereign an object belongs to (its FQDN with dots as dashes).
pub const LABEL_SOVEREIGN: &str = "catalyst.openova.io/sovereign";
/// The job that created it.
pub const LABEL_JOB: &str = "catalyst.openova.io/job-id";
/// What it is for (`control-plane`, `worker`, `load-balancer`, ...).
pub const LABEL_ROLE: &str = "catalyst.openova.io/role";
/// The region (provider location) it is in.
pub const LABEL_REGION: &str = "catalyst.openova.io/region";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "catalyst-zero";

/// The label value naming a Sovereign: its FQDN with dots as dashes.
pub fn sovereign_slug(fqdn: &str) -> String {
    fqdn.replace('.', "-")
}
