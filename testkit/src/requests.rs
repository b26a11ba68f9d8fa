//! Request fixtures. The provision request body and its variants are
//! `cz_phases::testing`'s (every phase's tests use them); the e2e tests'
//! request carries a token they search for on disk.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Three custodians whose age identities a test holds (files for the
/// `age` CLI and `catalyst-zero unseal --identity`), to deal a request's
/// custody to and to unseal as the runbook asks.
pub struct Custodians {
    pub files: Vec<PathBuf>,
    pub recipients: Vec<String>,
}

impl Custodians {
    /// Three fresh identities, written to `dir/custodian<i>.txt`.
    pub fn generate(dir: &Path) -> Custodians {
        use age::secrecy::ExposeSecret as _;
        let mut files = Vec::new();
        let mut recipients = Vec::new();
        for i in 0..3 {
            let id = age::x25519::Identity::generate();
            let f = dir.join(format!("custodian{i}.txt"));
            std::fs::write(&f, id.to_string().expose_secret()).expect("write an identity");
            files.push(f);
            recipients.push(id.to_public().to_string());
        }
        Custodians { files, recipients }
    }

    /// Deals a request body's custody (its three custodians) to them.
    pub fn deal(&self, body: &mut Value) {
        for (i, r) in self.recipients.iter().enumerate() {
            body["custody"]["custodians"][i]["recipient"] = Value::from(r.as_str());
        }
    }

    /// Two of them (the sample's threshold) run `catalyst-zero unseal` for
    /// `sovereign` against the daemon at `server`, with `extra` arguments
    /// (`--sim-world DIR`); panics, with its output, if one fails.
    pub fn unseal(&self, sovereign: &str, server: &str, extra: &[&OsStr]) {
        for id in &self.files[..2] {
            let out = Command::new(crate::daemon::binary())
                .args(["unseal", sovereign, "--server", server, "--token", crate::daemon::TOKEN])
                .arg("--identity")
                .arg(id)
                .args(extra)
                .output()
                .expect("catalyst-zero unseal runs");
            assert!(
                out.status.success(),
                "unseal: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
