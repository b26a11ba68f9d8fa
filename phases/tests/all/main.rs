//! Integration tests of the phases: what they render (checked against the
//! upstream schemas and golden files) and pre-flight against the hcloud
//! wire fake, one module per area.

mod cluster_golden;
mod crossplane_contract;
mod handoff_contract;
mod hetzner_preflight;
mod hetzner_templates;
mod input_hygiene;
mod kit_contract;
