//! What a Catalyst-Zero provision is: the request, the release manifest,
//! the job kinds, and one module per phase.
//!
//! A `provision` job runs these phases in order (the API's phase ids); each
//! module's doc lists its steps, and each is a DAG of idempotent do/undo
//! steps over the adapters of [`Backend`]:
//!
//! | # | phase | module |
//! |---|---|---|
//! | 0 | `preflight` | [`preflight`] |
//! | 1 | `dns-reserve` | [`dns::reserve`] |
//! | 2 | `infra` | [`infra`] |
//! | 3 | `cluster` | [`cluster`] |
//! | 4 | `custody` | [`custody`] |
//! | 5 | `bootstrap-kit` | [`bootstrap_kit`] |
//! | 6 | `secrets-handoff` | [`handoff::secrets`] |
//! | 7 | `dns-commit` | [`dns::commit`] |
//! | 8 | `infra-handoff` | [`handoff::infra`] |
//!
//! `add-region` reuses `preflight`, `infra`, `cluster`, a regional
//! `bootstrap-kit`, `dns-commit` and `infra-handoff` for the new regions
//! only; `destroy` is its own plan ([`destroy`]). [`jobs`] turns a request
//! into a job's plan and submission, for the API and the tests alike.
//!
//! Per-item work (one server, one component, one OpenBao replica) is one
//! node per item, with the item fixed in the node's params when the plan is
//! built, so re-runs act on the same item. Steps share data only through
//! their persisted, typed outputs, looked up by node id.

pub mod bootstrap_kit;
pub mod cluster;
pub mod custody;
pub mod destroy;
pub mod dns;
pub mod handoff;
pub mod infra;
pub mod jobs;
pub mod preflight;
pub mod release;
pub mod request;

mod common;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use cz_adapters::Backend;

/// The step context of every phase: the engine's, over the adapters.
pub type StepCtx = cz_engine::StepCtx<Backend>;
/// The action registry of every phase.
pub type Registry = cz_engine::Registry<Backend>;

/// The phases of a `provision` job, in order.
pub const PROVISION_PHASES: &[&str] = &[
    preflight::PHASE,
    dns::reserve::PHASE,
    infra::PHASE,
    cluster::PHASE,
    custody::PHASE,
    bootstrap_kit::PHASE,
    handoff::secrets::PHASE,
    dns::commit::PHASE,
    handoff::infra::PHASE,
];

/// Every action of every phase, with the aliases that let plans stored
/// under older action names resume.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    preflight::register(&mut r);
    dns::reserve::register(&mut r);
    infra::register(&mut r);
    cluster::register(&mut r);
    custody::register(&mut r);
    bootstrap_kit::register(&mut r);
    handoff::secrets::register(&mut r);
    handoff::join::register(&mut r);
    dns::commit::register(&mut r);
    handoff::infra::register(&mut r);
    destroy::register(&mut r);
    for (old, new) in ALIASES {
        r.alias(old, new);
    }
    r
}

/// Action names before they carried their phase id → today's. A job stored
/// by an older daemon names these in its plan.
pub const ALIASES: &[(&str, &str)] = &[
    ("dns.zone", "dns-reserve.zone"),
    ("dns.delegation", "dns-reserve.delegation"),
    ("dns.verify-delegation", "dns-reserve.verify-delegation"),
    ("dns.records", "dns-commit.records"),
    ("dns.verify-records", "dns-commit.verify-records"),
    ("dns.propagation", "dns-commit.propagation"),
    ("kit.flux", "bootstrap-kit.flux"),
    ("kit.sources", "bootstrap-kit.sources"),
    ("kit.component", "bootstrap-kit.component"),
    ("kit.handover", "bootstrap-kit.handover"),
    ("kit.prune", "bootstrap-kit.prune"),
    ("kit.verify", "bootstrap-kit.verify"),
    ("bao.init", "secrets-handoff.init"),
    ("bao.unseal", "secrets-handoff.unseal"),
    ("bao.configure", "secrets-handoff.configure"),
    ("bao.eso-store", "secrets-handoff.eso-store"),
    ("bao.roundtrip", "secrets-handoff.roundtrip"),
    // The root token was escrowed by this step before it was revoked.
    ("bao.root-token", "secrets-handoff.revoke-root"),
    ("secrets-handoff.root-token", "secrets-handoff.revoke-root"),
    ("bao.retire-sealed-secrets", "secrets-handoff.retire-sealed-secrets"),
    ("handoff.credential", "infra-handoff.credential"),
    ("handoff.adopt", "infra-handoff.adopt"),
    ("handoff.verify", "infra-handoff.verify"),
    ("handoff.widen", "infra-handoff.widen"),
    ("handoff.archive", "infra-handoff.archive"),
];

#[cfg(test)]
mod tests {
    use cz_engine::JobOptions;
    use cz_state::JobStatus;

    use super::*;
    use crate::testing::{SimRigExt, sample_request, sim_rig};

    /// A job stored by an older daemon names its actions without their
    /// phase id; it still runs, through the alias table.
    #[tokio::test]
    async fn a_plan_stored_under_the_old_action_names_still_runs() {
        let req = sample_request("legacy", 1, 0);
        let mut plan = jobs::provision_plan(&req);
        let mut renamed = 0;
        for node in plan.phases.iter_mut().flat_map(|p| p.nodes.iter_mut()) {
            if let Some((old, _)) = ALIASES.iter().find(|(_, new)| *new == node.action) {
                node.action = old.to_string();
                renamed += 1;
            }
        }
        assert!(renamed > 20, "the plan used the renamed actions ({renamed})");
        registry().check_plan(&plan).expect("old names resolve through the aliases");
        let rig = sim_rig().await;
        let (_, job) = rig.submit_plan(&req, &plan, JobOptions::default()).await;
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    }

    /// Every alias names a registered action, and no current action is
    /// shadowed by one.
    #[test]
    fn the_alias_table_is_sound() {
        let r = registry();
        for (old, new) in ALIASES {
            assert!(r.names().contains(new), "{old} → {new}: not an action");
            assert!(!r.names().contains(old), "{old} is still an action");
        }
    }
}
