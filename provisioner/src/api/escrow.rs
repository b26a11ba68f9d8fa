//! `GET /v1/sovereigns/{id}/escrow`: what the custodians hold.
//!
//! Operator only, and audited before it answers: a read that cannot be
//! recorded is refused. The answer is ciphertext only (each blob
//! age-encrypted to one custodian); the daemon has no identity that opens
//! any of it. `catalyst-zero escrow` writes it to files, `catalyst-zero
//! unseal` uses it.

use axum::Json;
use axum::extract::{Path, State};
use cz_state::NewAudit;
use serde_json::json;

use super::sovereigns::{parse_id, sovereign};
use super::views::{ErrorBody, EscrowBlob, EscrowView};
use super::{ApiError, ApiState, Caller};

/// The Sovereign's escrow: every blob with its custodian.
#[utoipa::path(get, path = "/v1/sovereigns/{id}/escrow", tag = "sovereigns",
    params(("id" = String, Path, description = "Sovereign id")),
    responses((status = 200, body = EscrowView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn escrow(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EscrowView>, ApiError> {
    caller.require_operator("read the escrow")?;
    let s = sovereign(&st, parse_id(&id)?).await?;
    let items = st
        .store
        .escrow(&s.id.to_string(), None)
        .await
        .map_err(ApiError::store("read the escrow"))?;
    let mut kinds: Vec<&str> = items.iter().map(|i| i.kind.as_str()).collect();
    kinds.dedup();
    st.store
        .record_audit(NewAudit {
            actor: caller.actor().to_owned(),
            action: "escrow.read".into(),
            job_id: None,
            sovereign_id: Some(s.id),
            detail: json!({ "blobs": items.len(), "kinds": kinds }),
        })
        .await
        .map_err(ApiError::store("audit the escrow read"))?;
    tracing::info!(sovereign_id = %s.id, blobs = items.len(), "Escrow handed out.");
    Ok(Json(EscrowView {
        sovereign_id: s.id.to_string(),
        fqdn: s.fqdn.clone(),
        items: items.iter().map(EscrowBlob::from).collect(),
    }))
}
