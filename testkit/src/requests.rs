//! Request fixtures. The provision request body and its variants are
//! `cz_phases::testing`'s (every phase's tests use them); the e2e tests'
//! request carries a token they search for on disk.

use serde_json::Value;

pub use cz_phases::testing::{
    add_region_body, age_recipient, byo_api_request, region_body, sample_body, sample_request,
};

/// A distinctive (sim-valid) cloud token, searched for on disk by tests.
pub const CLOUD_TOKEN: &str = "E2EtokenE2EtokenE2EtokenE2EtokenE2EtokenE2EtokenE2EtokenE2Etoken";

/// A valid provision request body (sim backend) carrying [`CLOUD_TOKEN`].
pub fn request(sub: &str, control_planes: u32, workers: u32) -> Value {
    sample_body(sub, control_planes, workers, CLOUD_TOKEN, &age_recipient())
}
