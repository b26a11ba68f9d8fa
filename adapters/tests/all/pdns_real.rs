//! The PowerDNS adapter against a real `pdns_server` (4.7, gsqlite3) on
//! loopback: zones and RRsets through the HTTP API, every change checked
//! by DNS queries to the same server, idempotent creates and deletes, and
//! errors classified (a wrong key, a record the server refuses, a server
//! that is down).

use std::net::SocketAddr;
use std::time::Duration;

use cz_adapters::dns::PowerDns;
use cz_adapters::{DnsApi, Rrset};
use cz_engine::{Cause, ErrorClass, StepError};
use cz_state::SecretString;
use cz_testkit::pdns::Pdns;

fn client(p: &Pdns, key: &str) -> PowerDns {
    let dns: SocketAddr = format!("127.0.0.1:{}", p.dns_port).parse().unwrap();
    PowerDns::new(
        &p.url(),
        "localhost",
        SecretString::new(key.to_owned()),
        dns,
        Duration::from_secs(5),
    )
    .unwrap()
}

/// The binary's one PowerDNS; each test works in zones of its own.
async fn running() -> &'static Pdns {
    assert!(Pdns::available(), "PowerDNS with the gsqlite3 backend is needed (see .ci/run)");
    Pdns::shared().await
}

fn ns() -> Vec<String> {
    vec!["ns1.openova.io.".into(), "ns2.openova.io.".into()]
}

fn a(name: &str, ip: &str) -> Rrset {
    Rrset { name: name.into(), rtype: "A".into(), ttl: 300, records: vec![ip.into()] }
}

#[tokio::test]
async fn zones_rrsets_and_dns_answers_against_a_real_powerdns() {
    let p = running().await;
    let d = client(p, &p.api_key);
    assert!(!d.zone_exists("acme.omani.works.").await.unwrap());
    d.create_zone("omani.works.", &ns(), "").await.unwrap();
    d.create_zone("acme.omani.works", &ns(), "").await.unwrap();
    // Again: already there is success (a retried step).
    d.create_zone("acme.omani.works.", &ns(), "").await.unwrap();
    assert!(d.zone_exists("acme.omani.works").await.unwrap());
    assert_eq!(d.query("acme.omani.works.", "NS").await.unwrap(), ns());

    // The delegation in the parent, and the records, by one PATCH each.
    let deleg =
        Rrset { name: "acme.omani.works.".into(), rtype: "NS".into(), ttl: 3600, records: ns() };
    d.replace_rrsets("omani.works.", &[deleg]).await.unwrap();
    let set: Vec<Rrset> = ["acme.omani.works.", "*.acme.omani.works.", "console.acme.omani.works."]
        .iter()
        .map(|n| a(n, "203.0.113.10"))
        .collect();
    d.replace_rrsets("acme.omani.works.", &set).await.unwrap();
    for name in ["acme.omani.works", "console.acme.omani.works.", "anything.acme.omani.works."] {
        assert_eq!(d.query(name, "A").await.unwrap(), ["203.0.113.10"], "{name}");
    }
    // REPLACE really replaces, and queries see it at once (no cache).
    d.replace_rrsets("acme.omani.works.", &[a("console.acme.omani.works.", "203.0.113.11")])
        .await
        .unwrap();
    assert_eq!(d.query("console.acme.omani.works.", "A").await.unwrap(), ["203.0.113.11"]);
    // A name that does not exist and a type it does not have: no answer.
    assert!(d.query("acme.omani.works.", "TXT").await.unwrap().is_empty());
    // A name the server does not serve at all: refused, as NotFound.
    let e = d.query("nothing.unserved.net.", "A").await.unwrap_err();
    assert!(matches!(e, StepError::Adapter { cause: Cause::NotFound, .. }), "{e}");

    // Deletes, twice each.
    let names = vec![("console.acme.omani.works.".to_owned(), "A".to_owned())];
    d.delete_rrsets("acme.omani.works.", &names).await.unwrap();
    d.delete_rrsets("acme.omani.works.", &names).await.unwrap();
    // The wildcard answers for console now.
    assert_eq!(d.query("console.acme.omani.works.", "A").await.unwrap(), ["203.0.113.10"]);
    d.delete_zone("acme.omani.works.").await.unwrap();
    d.delete_zone("acme.omani.works.").await.unwrap();
    assert!(!d.zone_exists("acme.omani.works.").await.unwrap());
    assert!(d.query("console.acme.omani.works.", "A").await.unwrap().is_empty());
    d.delete_rrsets("acme.omani.works.", &names).await.unwrap();
    d.delete_rrsets("omani.works.", &[("acme.omani.works.".into(), "NS".into())]).await.unwrap();
}

#[tokio::test]
async fn owner_metadata_and_listing() {
    let p = running().await;
    let d = client(p, &p.api_key);
    assert_eq!(d.zone_account("owned.example.").await.unwrap(), None);
    d.create_zone("owned.example.", &ns(), "catalyst-zero:s-1").await.unwrap();
    assert_eq!(
        d.zone_account("owned.example").await.unwrap().as_deref(),
        Some("catalyst-zero:s-1")
    );
    assert!(d.zone_meta("owned.example.", "X-CATALYST-LEASE").await.unwrap().is_empty());
    let v = vec![r#"{"job":"j","expires":1}"#.to_owned()];
    d.set_zone_meta("owned.example.", "X-CATALYST-LEASE", &v).await.unwrap();
    d.set_zone_meta("owned.example.", "X-CATALYST-LEASE", &v).await.unwrap();
    assert_eq!(d.zone_meta("owned.example.", "X-CATALYST-LEASE").await.unwrap(), v);
    d.set_zone_meta("owned.example.", "X-CATALYST-LEASE", &[]).await.unwrap();
    assert!(d.zone_meta("owned.example.", "X-CATALYST-LEASE").await.unwrap().is_empty());
    // PowerDNS only takes custom kinds with the X- prefix.
    let e = d.set_zone_meta("owned.example.", "LEASE", &v).await.unwrap_err();
    assert!(matches!(e, StepError::Adapter { cause: Cause::Invalid, .. }), "{e}");
    // Metadata of a zone that does not exist: not found.
    let e = d.zone_meta("absent.example.", "X-CATALYST-LEASE").await.unwrap_err();
    assert!(matches!(e, StepError::Adapter { cause: Cause::NotFound, .. }), "{e}");
    let zones = d.list_zones().await.unwrap();
    assert!(zones.iter().any(|z| z == "owned.example."), "{zones:?}");
}

#[tokio::test]
async fn a_wrong_key_needs_an_operator_and_a_refused_record_is_terminal() {
    let p = running().await;
    let e =
        client(p, "not-the-key").create_zone("refused.omani.works.", &ns(), "").await.unwrap_err();
    match &e {
        StepError::Adapter { cause: Cause::Unauthorized, message, .. } => {
            assert!(message.contains("401"), "{message}");
            assert!(!message.contains(&p.api_key), "the key leaked: {message}");
        }
        other => panic!("expected unauthorized, got {other}"),
    }
    assert_eq!(e.class(), ErrorClass::NeedsOperator);

    let d = client(p, &p.api_key);
    d.create_zone("refused.omani.works.", &ns(), "").await.unwrap();
    let e = d
        .replace_rrsets("refused.omani.works.", &[a("api.refused.omani.works.", "not-an-address")])
        .await
        .unwrap_err();
    match &e {
        StepError::Adapter { cause: Cause::Invalid, message, .. } => {
            assert!(message.contains("422") && message.contains("not-an-address"), "{message}")
        }
        other => panic!("expected invalid, got {other}"),
    }
    assert_eq!(e.class(), ErrorClass::Terminal);
    // A name outside the zone is refused too, and nothing was written.
    let e =
        d.replace_rrsets("refused.omani.works.", &[a("elsewhere.example.", "203.0.113.1")]).await;
    assert!(matches!(e, Err(StepError::Adapter { cause: Cause::Invalid, .. })), "{e:?}");
    assert!(d.query("api.refused.omani.works.", "A").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_server_that_is_down_is_transient() {
    let p = Pdns::prepare(); // never started
    let d = client(&p, &p.api_key);
    let e = d.zone_exists("acme.omani.works.").await.unwrap_err();
    assert!(matches!(e, StepError::Adapter { cause: Cause::Network, .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Transient);
    let e = d.query("acme.omani.works.", "A").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
}

/// `dig` against the server, full answers (`+dnssec` shows signatures).
fn dig_full(p: &Pdns, args: &[&str]) -> String {
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &p.dns_port.to_string(), "+norecurse"])
        .args(args)
        .output()
        .expect("dig (dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_zone_is_signed_on_request_with_the_same_keys_twice() {
    let p = running().await;
    let d = client(p, &p.api_key);
    d.create_zone("signed.example.", &ns(), "").await.unwrap();
    d.replace_rrsets("signed.example.", &[a("www.signed.example.", "192.0.2.7")]).await.unwrap();
    let ds = d.secure_zone("signed.example.").await.unwrap();
    assert!(!ds.is_empty());
    for r in &ds {
        let f: Vec<&str> = r.split_whitespace().collect();
        // <key tag> <algorithm 13: ECDSA P-256> <digest 2: SHA-256> <64 hex digits>
        assert_eq!((f.len(), f[1], f[2], f[3].len()), (4, "13", "2", 64), "{r}");
    }
    // Twice: the same keys, so the DS the parent holds stays right.
    assert_eq!(d.secure_zone("signed.example").await.unwrap(), ds);
    // Over DNS: the key, the parent's DS as the API gave it, and signed
    // answers.
    let keys = d.query("signed.example.", "DNSKEY").await.unwrap();
    assert!(keys.iter().any(|k| k.starts_with("257 3 13 ")), "a KSK: {keys:?}");
    d.create_zone("example.", &ns(), "").await.unwrap();
    let cut = |t: &str, records: Vec<String>| Rrset {
        name: "signed.example.".into(),
        rtype: t.into(),
        ttl: 3600,
        records,
    };
    d.replace_rrsets("example.", &[cut("NS", ns()), cut("DS", ds.clone())]).await.unwrap();
    assert_eq!(d.query("signed.example.", "DS").await.unwrap(), ds);
    let full = dig_full(p, &["+dnssec", "www.signed.example", "A"]);
    assert!(full.contains("RRSIG") && full.contains("192.0.2.7"), "{full}");
    // A zone that does not exist.
    let e = d.secure_zone("missing.example.").await.unwrap_err();
    assert!(matches!(e, StepError::Adapter { cause: Cause::NotFound, .. }), "{e}");
}
