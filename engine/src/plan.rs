//! Plans: a job is an ordered list of phases, each a DAG of steps.
//!
//! A plan is plain data (serializable, stored with the job) that names step
//! *actions* by string; the [`Registry`](crate::Registry) maps names to
//! code. A restarted daemon rebuilds a run from the stored plan and the
//! registry alone (steno's split of `Dag` and `ActionRegistry`).
//!
//! Node ids are `<phase>/<step>` and unique in a plan. Phases run in
//! order, except that a phase marked [`PhaseDef::overlaps`] starts together
//! with the phase before it (a *stage*): its steps may then depend on that
//! phase's steps, and each starts as soon as its own dependencies are
//! satisfied. This is how a node's bring-up starts while the rest of the
//! fleet is still being created.
//!
//! A *released* node ([`NodeDef::released_by`]) is a fact another step of
//! its phase learns while it runs — the apply that creates a region's
//! servers releases each server as the cloud reports it created. No action
//! runs for it: its producer journals it (with its output) through
//! [`StepCtx::release`](crate::StepCtx::release), and its dependents start
//! from there, while the producer still runs.

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
    /// A released node: the step (same phase) that journals it as it learns
    /// it. The engine never runs this node's action forward; its undo runs
    /// as any other's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
}

/// One phase: a DAG of steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseDef {
    pub id: String,
    pub nodes: Vec<NodeDef>,
    /// Starts together with the phase before it; its steps may depend on
    /// that phase's steps (and on the phases that one overlaps).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlaps: bool,
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
    #[error(
        "node `{node}` depends on `{dep}`, which is neither in phase `{phase}` nor in a phase it overlaps"
    )]
    UnknownDependency { phase: String, node: String, dep: String },
    #[error("node `{node}` is released by `{producer}`, which is not a running step of its phase")]
    BadProducer { node: String, producer: String },
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

    /// The nodes whose action runs (every node but the released ones), in
    /// [`Plan::nodes_in_order`]'s order.
    pub fn steps_that_run(&self) -> impl Iterator<Item = &NodeDef> {
        self.nodes_in_order().into_iter().filter(|n| n.released_by.is_none())
    }

    /// Checks unique ids, known dependencies, producers and acyclicity.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut seen = BTreeSet::new();
        // Ids of the current stage's earlier phases.
        let mut stage: BTreeSet<&str> = BTreeSet::new();
        for p in &self.phases {
            if !p.overlaps {
                stage.clear();
            }
            let ids: BTreeSet<&str> = p.nodes.iter().map(|n| n.id.as_str()).collect();
            for n in &p.nodes {
                if !seen.insert(n.id.clone()) {
                    return Err(PlanError::DuplicateNode(n.id.clone()));
                }
                for d in &n.depends_on {
                    if !ids.contains(d.as_str()) && !stage.contains(d.as_str()) {
                        return Err(PlanError::UnknownDependency {
                            phase: p.id.clone(),
                            node: n.id.clone(),
                            dep: d.clone(),
                        });
                    }
                }
                if let Some(producer) = &n.released_by {
                    let runs = p.nodes.iter().any(|m| &m.id == producer && m.released_by.is_none());
                    if !runs {
                        return Err(PlanError::BadProducer {
                            node: n.id.clone(),
                            producer: producer.clone(),
                        });
                    }
                }
            }
            p.topo_order()?;
            stage.extend(ids);
        }
        Ok(())
    }

    /// The phases grouped in stages: a phase and the phases that overlap it.
    pub fn stages(&self) -> Vec<Vec<&PhaseDef>> {
        let mut out: Vec<Vec<&PhaseDef>> = Vec::new();
        for p in &self.phases {
            match out.last_mut() {
                Some(stage) if p.overlaps => stage.push(p),
                _ => out.push(vec![p]),
            }
        }
        out
    }
}

impl PhaseDef {
    /// Kahn's algorithm, stable with respect to declaration order.
    /// Dependencies on other phases' nodes (an overlapping phase's) do not
    /// order this phase.
    pub fn topo_order(&self) -> Result<Vec<&NodeDef>, PlanError> {
        let own: BTreeSet<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        let mut indeg: HashMap<&str, usize> = self
            .nodes
            .iter()
            .map(|n| {
                (n.id.as_str(), n.depends_on.iter().filter(|d| own.contains(d.as_str())).count())
            })
            .collect();
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
        PhaseBuilder { phase: PhaseDef { id: id.to_owned(), nodes: Vec::new(), overlaps: false } }
    }

    /// A phase that starts together with the one before it.
    pub fn overlapping(id: &str) -> Self {
        let mut b = Self::new(id);
        b.phase.overlaps = true;
        b
    }

    /// The full id of a step of this phase; a name that already holds a
    /// `/` is another phase's full id and is kept.
    pub fn id(&self, step: &str) -> String {
        if step.contains('/') { step.to_owned() } else { format!("{}/{}", self.phase.id, step) }
    }

    /// Adds a node `name` that `producer` (a step of this phase) releases
    /// while it runs; `after` only orders it for display and unwinding.
    pub fn released<P: Serialize>(
        &mut self,
        name: &str,
        action: ActionId<P>,
        producer: &str,
        after: &[&str],
        params: P,
    ) -> String {
        let id = self.step(name, action, after, params);
        let producer = self.id(producer);
        self.phase.nodes.last_mut().expect("just added").released_by = Some(producer);
        id
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
            released_by: None,
        });
        id
    }

    pub fn build(self) -> PhaseDef {
        self.phase
    }
}

/// The phase of a node id (`<phase>/<step>`): its first segment.
pub fn phase_of(node: &str) -> &str {
    node.split('/').next().unwrap_or(node)
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
