//! `SimRegistrars`: the customer's registrar of a `byo-api` domain, in the
//! sim world (system `registrar`, kind `domains`, keyed
//! `<registrar>:<domain>`), so a delegation survives a daemon restart.
//!
//! Tokens are checked for their registrar's format only (any well-formed
//! token is accepted); a domain not seen yet is delegated to the
//! registrar's parking nameservers (Cloudflare subdomains to nothing).
//! Failures are injected with [`super::FailRule`]s on `registrar.*` ops.
//! The real adapters' proof is `registrar::fake`, over HTTP.

use std::sync::Arc;

use async_trait::async_trait;
use cz_state::SecretString;
use serde_json::json;

use super::world::SimWorld;
use cz_adapters::AdapterResult;
use cz_adapters::registrar::Registrar;
use cz_adapters::registrar::{Credentials, RegistrarApi, Registrars, bare};
use cz_engine::StepError;

const SYS: &str = "registrar";
const KIND: &str = "domains";

/// The sim's registrars.
#[derive(Clone, Debug)]
pub struct SimRegistrars {
    world: Arc<SimWorld>,
}

impl SimRegistrars {
    pub fn new(world: Arc<SimWorld>) -> SimRegistrars {
        SimRegistrars { world }
    }
}

impl Registrars for SimRegistrars {
    fn connect(
        &self,
        registrar: Registrar,
        token: &SecretString,
    ) -> AdapterResult<Arc<dyn RegistrarApi>> {
        Credentials::parse(registrar, token.expose()).map_err(|m| StepError::InvalidInput {
            path: "domain.registrar_token".into(),
            message: m,
        })?;
        Ok(Arc::new(SimRegistrar { world: self.world.clone(), registrar }))
    }
}

struct SimRegistrar {
    world: Arc<SimWorld>,
    registrar: Registrar,
}

impl SimRegistrar {
    fn key(&self, domain: &str) -> String {
        format!("{}:{}", self.registrar.title().to_ascii_lowercase(), bare(domain))
    }
}

#[async_trait]
impl RegistrarApi for SimRegistrar {
    fn registrar(&self) -> Registrar {
        self.registrar
    }

    async fn validate_token(&self, _domain: &str) -> AdapterResult<()> {
        self.world.op("registrar.validate_token", 300).await
    }

    async fn get_nameservers(&self, domain: &str) -> AdapterResult<Vec<String>> {
        self.world.op("registrar.get_nameservers", 300).await?;
        if let Some(v) = self.world.get(SYS, KIND, &self.key(domain)).await? {
            return Ok(serde_json::from_value(v["nameservers"].clone()).unwrap_or_default());
        }
        Ok(match self.registrar {
            Registrar::Cloudflare => Vec::new(),
            r => {
                let host = r.title().to_ascii_lowercase();
                vec![format!("ns1.{host}-parking.example"), format!("ns2.{host}-parking.example")]
            }
        })
    }

    async fn set_nameservers(&self, domain: &str, nameservers: &[String]) -> AdapterResult<()> {
        self.world.op("registrar.set_nameservers", 600).await?;
        let ns: Vec<String> = nameservers.iter().map(|n| bare(n)).collect();
        self.world.put(SYS, KIND, &self.key(domain), &json!({ "nameservers": ns })).await
    }
}
