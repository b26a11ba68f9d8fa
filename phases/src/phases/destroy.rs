//! The `destroy` job: tear a Sovereign (or a half-built run) down.
//!
//! Tofu destroy where a live (not handed-off) state exists, then a sweep by
//! label that also removes objects created later by in-cluster controllers
//! (load balancers, volumes, primary IPs), repeated until nothing labelled
//! remains; then the DNS records, zone and delegation (a `byo-api`
//! domain's registrar delegation put back as it was); then the Sovereign's
//! secrets. Every step is idempotent, so a destroy resumes after a crash and
//! works on partial state. Destroy steps have no undo: a destroy is not
//! rolled back.

use std::time::Duration;

use serde_json::{Value, json};

use super::infra::{HANDED_OFF, MANIFEST, with_events, workspace};
use super::{LABEL_SOVEREIGN, action, cloud_token, fqdn, no_undo, slug};
use crate::plan::{PhaseBuilder, Plan};
use crate::step::{Registry, StepCtx, StepResult};

pub fn register(r: &mut Registry) {
    r.register("destroy.tofu", action!(tofu_destroy, no_undo));
    r.register("destroy.sweep", action!(sweep, no_undo));
    r.register("destroy.dns", action!(dns, no_undo));
    r.register("destroy.secrets", action!(secrets, no_undo));
}

pub fn plan(locations: &[String]) -> Plan {
    let mut pre = PhaseBuilder::new("preflight");
    pre.step("token-scope", "preflight.token-scope", &[], Value::Null);
    let mut infra = PhaseBuilder::new("infra");
    let mut tofus = Vec::new();
    for l in locations {
        let n = format!("tofu-destroy-{l}");
        infra.step(&n, "destroy.tofu", &[], json!({ "location": l }));
        tofus.push(n);
    }
    let t: Vec<&str> = tofus.iter().map(String::as_str).collect();
    infra.step("sweep", "destroy.sweep", &t, Value::Null);
    let mut dns = PhaseBuilder::new("dns");
    dns.step("zone", "destroy.dns", &[], Value::Null);
    let mut st = PhaseBuilder::new("state");
    st.step("secrets", "destroy.secrets", &[], json!({ "locations": locations }));
    Plan { phases: vec![pre.build(), infra.build(), dns.build(), st.build()] }
}

async fn tofu_destroy(cx: &StepCtx) -> StepResult<Value> {
    let loc: String = cx.param("location")?;
    let ws = workspace(cx, &loc);
    if ws.dir.join(HANDED_OFF).exists() || !ws.dir.join(MANIFEST).exists() {
        // Crossplane owns the objects (or tofu never ran): the sweep removes them.
        return Ok(json!({ "skipped": true }));
    }
    let token = cloud_token(cx).await?;
    let tofu = cx.backend.tofu.clone();
    let n = with_events(cx, |sink| {
        let (ws, token) = (ws.clone(), token.clone());
        async move { tofu.destroy(&ws, &token, sink).await }
    })
    .await?;
    Ok(json!({ "skipped": false, "events": n }))
}

async fn sweep(cx: &StepCtx) -> StepResult<Value> {
    let token = cloud_token(cx).await?;
    let selector = format!("{LABEL_SOVEREIGN}={}", slug(&fqdn(cx)?));
    let deleted = std::sync::atomic::AtomicUsize::new(0);
    cx.wait_for(
        "every object labelled for this Sovereign to be gone",
        Duration::from_secs(1800),
        || async {
            let objs = cx.backend.cloud.list(&token, &selector).await?;
            if objs.is_empty() {
                return Ok(Some(()));
            }
            for o in &objs {
                cx.backend.cloud.delete(&token, o).await?;
                deleted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                cx.event(
                    "cloud",
                    json!({ "action": "delete", "kind": o.kind, "name": o.name, "id": o.id }),
                )
                .await?;
            }
            Ok(None)
        },
    )
    .await?;
    Ok(json!({ "deleted": deleted.into_inner() }))
}

async fn dns(cx: &StepCtx) -> StepResult<Value> {
    let fqdn = fqdn(cx)?;
    let zone = format!("{fqdn}.");
    // byo-api: the registrar first, while the zone still says what the
    // domain pointed at before.
    let registrar = super::dns::restore_registrar(cx).await?;
    if let Some(pool) = cx.request.pointer("/sovereign/pool_domain").and_then(Value::as_str) {
        cx.backend.dns.delete_rrsets(&format!("{pool}."), &super::dns::cut_of(&zone)).await?;
    }
    cx.backend.dns.delete_zone(&zone).await?;
    Ok(json!({ "zone": zone, "registrar": registrar }))
}

async fn secrets(cx: &StepCtx) -> StepResult<Value> {
    let locations: Vec<String> = cx.param("locations")?;
    let mut names = vec![
        "cloud_token".to_owned(),
        "registrar_token".to_owned(),
        "sealed-secrets-key".to_owned(),
        "openbao-root-token".to_owned(),
        super::infra::PROVISIONER_KEY.to_owned(),
    ];
    for l in &locations {
        names.push(format!("k3s-token-{l}"));
        names.push(format!("kubeconfig-{l}"));
    }
    for i in 0..10 {
        names.push(format!("openbao-share-{i}"));
    }
    // Escrow blobs (encrypted to the operators) and archived states stay.
    for n in &names {
        cx.delete_secret(n).await?;
    }
    Ok(json!({ "removed": names.len() }))
}
