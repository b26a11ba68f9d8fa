//! Plans: a job is an ordered list of phases, each a DAG of steps.
//!
//! A plan is plain data (serializable, stored with the job) that names step
//! *actions* by string; the [`Registry`](crate::Registry) maps names to
//! code. A restarted daemon rebuilds a run from the stored plan and the
//! registry alone (steno's split of `Dag` and `ActionRegistry`).
//!
//! Node ids are `<phase>/<step>` and unique in a plan. Dependencies are
//! within a phase; phases run strictly in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::action::ActionId;

/// One step of a phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDef {
    /// `<phase>/<step>`.
    pub id: String,
    /// The registered action that implements do + undo.
    pub action: String,
    /// Node ids (same phase) that must be satisfied before this one runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Constant parameters decided when the plan was built (e.g. a node
    /// index, a region); they make per-item steps idempotent.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

/// One phase: a DAG of steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseDef {
    pub id: String,
    pub nodes: Vec<NodeDef>,
}

/// A whole job plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub phases: Vec<PhaseDef>,
}

/// A plan that does not form a valid DAG.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("node id `{0}` is used twice")]
    DuplicateNode(String),
    #[error("node `{node}` depends on `{dep}`, which is not in phase `{phase}`")]
    UnknownDependency { phase: String, node: String, dep: String },
    #[error("phase `{0}` has a dependency cycle")]
    Cycle(String),
    #[error("node `{node}` names action `{action}`, which is not registered")]
    UnknownAction { node: String, action: String },
    #[error("the params of node `{node}` do not fit action `{action}`: {message}")]
    BadParams { node: String, action: String, message: String },
}

impl Plan {
    pub fn phase(&self, id: &str) -> Option<&PhaseDef> {
        self.phases.iter().find(|p| p.id == id)
    }

    pub fn node(&self, id: &str) -> Option<(&PhaseDef, &NodeDef)> {
        self.phases.iter().find_map(|p| p.nodes.iter().find(|n| n.id == id).map(|n| (p, n)))
    }

    /// Every node, phase by phase, each phase in a topological order.
    pub fn nodes_in_order(&self) -> Vec<&NodeDef> {
        self.phases.iter().flat_map(|p| p.topo_order().unwrap_or_default()).collect()
    }

    /// Checks unique ids, known dependencies and acyclicity.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut seen = BTreeSet::new();
        for p in &self.phases {
            let ids: BTreeSet<&str> = p.nodes.iter().map(|n| n.id.as_str()).collect();
            for n in &p.nodes {
                if !seen.insert(n.id.clone()) {
                    return Err(PlanError::DuplicateNode(n.id.clone()));
                }
                for d in &n.depends_on {
                    if !ids.contains(d.as_str()) {
                        return Err(PlanError::UnknownDependency {
                            phase: p.id.clone(),
                            node: n.id.clone(),
                            dep: d.clone(),
                        });
                    }
                }
            }
            p.topo_order()?;
        }
        Ok(())
    }
}

impl PhaseDef {
    /// Kahn's algorithm, stable with respect to declaration order.
    pub fn topo_order(&self) -> Result<Vec<&NodeDef>, PlanError> {
        let mut indeg: HashMap<&str, usize> =
            self.nodes.iter().map(|n| (n.id.as_str(), n.depends_on.len())).collect();
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut done = BTreeSet::new();
        while out.len() < self.nodes.len() {
            let next = self
                .nodes
                .iter()
                .find(|n| !done.contains(n.id.as_str()) && indeg[n.id.as_str()] == 0)
                .ok_or_else(|| PlanError::Cycle(self.id.clone()))?;
            done.insert(next.id.as_str());
            out.push(next);
            for n in &self.nodes {
                if n.depends_on.iter().any(|d| d == &next.id) {
                    *indeg.get_mut(n.id.as_str()).expect("known node") -= 1;
                }
            }
        }
        Ok(out)
    }

    /// Nodes that depend on `id` (directly).
    pub fn dependents<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a NodeDef> + 'a {
        self.nodes.iter().filter(move |n| n.depends_on.iter().any(|d| d == id))
    }
}

/// Builds a phase: `step` appends a node after everything named, `parallel`
/// appends several independent nodes.
pub struct PhaseBuilder {
    phase: PhaseDef,
}

impl PhaseBuilder {
    pub fn new(id: &str) -> Self {
        PhaseBuilder { phase: PhaseDef { id: id.to_owned(), nodes: Vec::new() } }
    }

    /// The full id of a step of this phase.
    pub fn id(&self, step: &str) -> String {
        format!("{}/{}", self.phase.id, step)
    }

    /// Adds a step `name` running `action` with `params` (the type its
    /// action reads), after the steps in `after` (short names within this
    /// phase). Returns its full id.
    pub fn step<P: Serialize>(
        &mut self,
        name: &str,
        action: ActionId<P>,
        after: &[&str],
        params: P,
    ) -> String {
        let id = self.id(name);
        let params = serde_json::to_value(params).expect("step params serialize to JSON");
        self.phase.nodes.push(NodeDef {
            id: id.clone(),
            action: action.name.to_owned(),
            depends_on: after.iter().map(|a| self.id(a)).collect(),
            params,
        });
        id
    }

    pub fn build(self) -> PhaseDef {
        self.phase
    }
}

/// Summary of how many nodes of each phase are in each state.
pub fn phase_progress(
    plan: &Plan,
    states: &BTreeMap<String, cz_state::NodeState>,
) -> Vec<(String, usize, usize)> {
    plan.phases
        .iter()
        .map(|p| {
            let done = p
                .nodes
                .iter()
                .filter(|n| states.get(&n.id).is_some_and(|s| s.is_satisfied()))
                .count();
            (p.id.clone(), done, p.nodes.len())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builder_topo_and_cycles() {
        const A: ActionId<()> = ActionId::new("a");
        const B: ActionId<serde_json::Value> = ActionId::new("b");
        let mut b = PhaseBuilder::new("cluster");
        b.step("first", A, &[], ());
        b.step("join-1", B, &["first"], json!({"i": 1}));
        b.step("join-2", B, &["first"], json!({"i": 2}));
        b.step("verify", A, &["join-1", "join-2"], ());
        let plan = Plan { phases: vec![b.build()] };
        plan.validate().unwrap();
        let order: Vec<_> = plan.nodes_in_order().iter().map(|n| n.id.clone()).collect();
        assert_eq!(order, ["cluster/first", "cluster/join-1", "cluster/join-2", "cluster/verify"]);

        let mut bad = plan.clone();
        bad.phases[0].nodes[0].depends_on.push("cluster/verify".into());
        assert_eq!(bad.validate(), Err(PlanError::Cycle("cluster".into())));
        let mut bad = plan.clone();
        bad.phases[0].nodes[0].depends_on.push("infra/x".into());
        assert!(matches!(bad.validate(), Err(PlanError::UnknownDependency { .. })));
    }
}
