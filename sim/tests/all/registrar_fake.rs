//! The five registrar adapters against `FakeRegistrars`, over HTTP: the
//! same contract for each (validate, read, delegate, idempotent, errors
//! classified, no credential in any message), then what is particular to
//! each one.

use std::sync::Arc;
use std::time::Duration;

use cz_adapters::registrar::{
    Endpoints, HttpRegistrars, Registrar, RegistrarApi, Registrars, sorted,
};
use cz_engine::{Cause, StepError, System};
use cz_sim::wire::registrars::{FakeRegistrars, Fault};
use cz_state::SecretString;

const OURS: [&str; 3] = ["ns1.openova.io", "ns2.openova.io", "ns3.openova.io"];

/// A registrar with its customer's token and a domain in that account.
struct Case {
    r: Registrar,
    token: &'static str,
    /// A token of the same shape that the registrar does not know.
    wrong: &'static str,
    /// Another customer's token at the same registrar.
    other: &'static str,
    domain: &'static str,
    /// Where the domain points before (for Cloudflare, a subdomain has none).
    before: &'static [&'static str],
}

const CASES: [Case; 5] = [
    Case {
        r: Registrar::Cloudflare,
        token: "cf-tok-SECRET1",
        wrong: "cf-tok-SECRETX",
        other: "cf-other",
        domain: "k8s.acme.com",
        before: &[],
    },
    Case {
        r: Registrar::Namecheap,
        token: "acme:nc-SECRET2:203.0.113.7",
        wrong: "acme:nc-SECRETX:203.0.113.7",
        other: "other:nc-other:198.51.100.1",
        domain: "acme.io",
        before: &["dns1.registrar-servers.com", "dns2.registrar-servers.com"],
    },
    Case {
        r: Registrar::Godaddy,
        token: "gdkey:gd-SECRET3",
        wrong: "gdkey:gd-SECRETX",
        other: "other:gd-other",
        domain: "acme.net",
        before: &["ns55.domaincontrol.com", "ns56.domaincontrol.com"],
    },
    Case {
        r: Registrar::Ovh,
        token: "ovhapp:ovh-SECRET4:ovh-consumer-SECRET5",
        wrong: "ovhapp:ovh-SECRET4:ovh-consumer-SECRETX",
        other: "otherapp:s:c",
        domain: "acme.fr",
        before: &["dns110.ovh.net", "ns110.ovh.net"],
    },
    Case {
        r: Registrar::Dynadot,
        token: "dyn-SECRET6",
        wrong: "dyn-SECRETX",
        other: "dyn-other",
        domain: "acme.org",
        before: &["ns1.dyna-ns.net", "ns2.dyna-ns.net"],
    },
];

fn ours() -> Vec<String> {
    OURS.iter().map(|s| s.to_string()).collect()
}

async fn setup() -> (FakeRegistrars, HttpRegistrars) {
    let fake = FakeRegistrars::start().await;
    for c in &CASES {
        if c.r == Registrar::Cloudflare {
            fake.domain(
                c.r,
                c.token,
                "acme.com",
                &["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
            );
        } else {
            fake.domain(c.r, c.token, c.domain, c.before);
        }
        // A domain of someone else's account at the same registrar.
        fake.domain(c.r, c.other, "theirs.com", &["ns1.theirs.com", "ns2.theirs.com"]);
    }
    let regs = HttpRegistrars::new(fake.endpoints(), Duration::from_secs(5));
    (fake, regs)
}

fn connect(regs: &HttpRegistrars, r: Registrar, token: &str) -> Arc<dyn RegistrarApi> {
    regs.connect(r, &SecretString::new(token)).expect("a well-formed token")
}

fn cause(e: &StepError) -> Cause {
    match e {
        StepError::Adapter { system: System::Registrar, cause, .. } => *cause,
        other => panic!("not a registrar error: {other:?}"),
    }
}

/// No part of any credential in `e`'s text.
fn no_secret(e: &StepError) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn every_registrar_validates_reads_and_delegates_idempotently() {
    let (fake, regs) = setup().await;
    for c in &CASES {
        let api = connect(&regs, c.r, c.token);
        assert_eq!(api.registrar(), c.r);
        api.validate_token(c.domain).await.unwrap_or_else(|e| panic!("{:?}: {e}", c.r));
        assert_eq!(
            sorted(&api.get_nameservers(c.domain).await.unwrap()),
            sorted(&c.before.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            "{:?}",
            c.r
        );

        api.set_nameservers(c.domain, &ours()).await.unwrap_or_else(|e| panic!("{:?}: {e}", c.r));
        assert_eq!(sorted(&api.get_nameservers(c.domain).await.unwrap()), ours(), "{:?}", c.r);
        assert_eq!(sorted(&fake.nameservers(c.r, c.domain)), ours(), "{:?}: the fake's view", c.r);
        let writes = fake.writes(c.r).len();

        // Twice: the same delegation. Cloudflare and OVH compare first and write nothing.
        api.set_nameservers(c.domain, &ours()).await.unwrap();
        assert_eq!(sorted(&fake.nameservers(c.r, c.domain)), ours(), "{:?}", c.r);
        if matches!(c.r, Registrar::Cloudflare | Registrar::Ovh) {
            assert_eq!(fake.writes(c.r).len(), writes, "{:?}: {:?}", c.r, fake.writes(c.r));
        }

        // And back (the undo's restore).
        let before: Vec<String> = c.before.iter().map(|s| s.to_string()).collect();
        api.set_nameservers(c.domain, &before).await.unwrap_or_else(|e| panic!("{:?}: {e}", c.r));
        assert_eq!(sorted(&fake.nameservers(c.r, c.domain)), sorted(&before), "{:?}", c.r);
    }
}

#[tokio::test]
async fn errors_are_classified_and_never_show_a_credential() {
    let (fake, regs) = setup().await;
    for c in &CASES {
        // An unknown token.
        let e = connect(&regs, c.r, c.wrong).validate_token(c.domain).await.unwrap_err();
        assert_eq!(cause(&e), Cause::Unauthorized, "{:?}: {e}", c.r);
        no_secret(&e);
        assert!(e.to_string().contains(c.r.title()), "{e}");
        let e = connect(&regs, c.r, c.wrong).set_nameservers(c.domain, &ours()).await.unwrap_err();
        assert_eq!(cause(&e), Cause::Unauthorized, "{:?}: {e}", c.r);

        let api = connect(&regs, c.r, c.token);
        // Someone else's domain, and one nobody has.
        for d in ["theirs.com", "nobody.example"] {
            let d = if c.r == Registrar::Cloudflare { format!("k8s.{d}") } else { d.to_owned() };
            let e = api.validate_token(&d).await.unwrap_err();
            assert_eq!(cause(&e), Cause::NotFound, "{:?} {d}: {e}", c.r);
            no_secret(&e);
            let e = api.set_nameservers(&d, &ours()).await.unwrap_err();
            assert_eq!(cause(&e), Cause::NotFound, "{:?} {d}: {e}", c.r);
        }
        // A nameserver the registrar refuses.
        let bad = vec!["not a host".to_owned(), "ns2.openova.io".to_owned()];
        let e = api.set_nameservers(c.domain, &bad).await.unwrap_err();
        assert_eq!(cause(&e), Cause::Invalid, "{:?}: {e}", c.r);
        no_secret(&e);
        assert_eq!(
            sorted(&fake.nameservers(c.r, c.domain)),
            sorted(&c.before.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            "{:?}: nothing changed",
            c.r
        );

        // Rate limits and outages, each in the registrar's own shape.
        fake.fail_next(c.r, Fault::RateLimited, 1);
        let e = api.get_nameservers(c.domain).await.unwrap_err();
        assert_eq!(cause(&e), Cause::RateLimited, "{:?}: {e}", c.r);
        fake.fail_next(c.r, Fault::Unavailable, 1);
        let e = api.get_nameservers(c.domain).await.unwrap_err();
        assert_eq!(cause(&e), Cause::Unavailable, "{:?}: {e}", c.r);
        assert!(api.get_nameservers(c.domain).await.is_ok(), "{:?}: healed", c.r);
    }
}

#[tokio::test]
async fn no_answer_is_a_network_error_without_the_url() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let regs = HttpRegistrars::new(Endpoints::under(&base), Duration::from_secs(2));
    for c in &CASES {
        let e = connect(&regs, c.r, c.token).get_nameservers(c.domain).await.unwrap_err();
        assert_eq!(cause(&e), Cause::Network, "{:?}: {e}", c.r);
        no_secret(&e);
        assert!(!e.to_string().contains(&base), "{e}");
    }
}

#[tokio::test]
async fn malformed_tokens_are_refused_before_any_call() {
    let (fake, regs) = setup().await;
    for (r, t) in [
        (Registrar::Namecheap, "acme:SECRET"),
        (Registrar::Godaddy, "SECRET"),
        (Registrar::Ovh, "a:SECRET"),
        (Registrar::Dynadot, "a:SECRET"),
    ] {
        let Err(e) = regs.connect(r, &SecretString::new(t)) else { panic!("{r:?} accepted {t}") };
        assert!(
            matches!(&e, StepError::InvalidInput { path, .. } if path == "domain.registrar_token"),
            "{e:?}"
        );
        no_secret(&e);
        assert!(fake.calls(r).is_empty());
    }
}

#[tokio::test]
async fn cloudflare_delegates_subdomains_only_and_an_empty_set_removes_the_records() {
    let (fake, regs) = setup().await;
    let api = connect(&regs, Registrar::Cloudflare, CASES[0].token);
    // The apex answers with Cloudflare's own nameservers and cannot move.
    assert_eq!(
        api.get_nameservers("acme.com").await.unwrap(),
        ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"]
    );
    for e in [
        api.validate_token("acme.com").await.unwrap_err(),
        api.set_nameservers("acme.com", &ours()).await.unwrap_err(),
    ] {
        assert_eq!(cause(&e), Cause::Invalid, "{e}");
        assert!(e.to_string().contains("subdomain") && e.to_string().contains("byo-manual"), "{e}");
    }
    // A deeper name finds the same zone.
    api.set_nameservers("eu.k8s.acme.com", &ours()).await.unwrap();
    assert_eq!(sorted(&fake.nameservers(Registrar::Cloudflare, "eu.k8s.acme.com")), ours());
    // Changing the set touches only the difference.
    let before = fake.writes(Registrar::Cloudflare).len();
    api.set_nameservers("eu.k8s.acme.com", &ours()[..2]).await.unwrap();
    assert_eq!(fake.writes(Registrar::Cloudflare).len(), before + 1, "one DELETE");
    api.set_nameservers("eu.k8s.acme.com", &[]).await.unwrap();
    assert!(fake.nameservers(Registrar::Cloudflare, "eu.k8s.acme.com").is_empty());
}

#[tokio::test]
async fn registrar_specific_refusals() {
    let (fake, regs) = setup().await;
    // Registrars refuse an empty delegation.
    for c in &CASES[1..] {
        let e = connect(&regs, c.r, c.token).set_nameservers(c.domain, &[]).await.unwrap_err();
        assert_eq!(cause(&e), Cause::Invalid, "{:?}: {e}", c.r);
    }

    // GoDaddy refuses its API to some accounts: a clear unauthorized, with its words.
    fake.deny_api_access(Registrar::Godaddy, CASES[2].token);
    let e = connect(&regs, Registrar::Godaddy, CASES[2].token)
        .validate_token("acme.net")
        .await
        .unwrap_err();
    assert_eq!(cause(&e), Cause::Unauthorized);
    assert!(e.to_string().contains("ACCESS_DENIED"), "{e}");

    // Namecheap: the right key from an IP that is not whitelisted.
    let e = connect(&regs, Registrar::Namecheap, "acme:nc-SECRET2:192.0.2.9")
        .validate_token("acme.io")
        .await
        .unwrap_err();
    assert_eq!(cause(&e), Cause::Unauthorized);
    assert!(e.to_string().contains("1011150") && e.to_string().contains("192.0.2.9"), "{e}");
    no_secret(&e);

    // OVH: the right keys with a wrong application secret: the signature fails.
    let e = connect(&regs, Registrar::Ovh, "ovhapp:wrong-SECRET:ovh-consumer-SECRET5")
        .validate_token("acme.fr")
        .await
        .unwrap_err();
    assert_eq!(cause(&e), Cause::Unauthorized);
    assert!(e.to_string().contains("INVALID_SIGNATURE"), "{e}");
    no_secret(&e);
}

/// DS records of a signed subdomain: Cloudflare publishes them beside the
/// NS records (fields in `data`), twice is once, empty removes ours; the
/// registrar adapters say they cannot.
#[tokio::test]
async fn cloudflare_publishes_ds_records_and_registrars_say_they_cannot() {
    let (fake, regs) = setup().await;
    let api = connect(&regs, Registrar::Cloudflare, CASES[0].token);
    let ds = vec![format!("4242 13 2 {}", "ab".repeat(32))];
    assert!(api.set_ds("k8s.acme.com", &ds).await.unwrap());
    let shown = fake.cloudflare_records("k8s.acme.com", "DS");
    assert_eq!(shown, [format!("4242 13 2 {}", "AB".repeat(32))]);
    let writes = fake.writes(Registrar::Cloudflare).len();
    assert!(api.set_ds("k8s.acme.com", &ds).await.unwrap());
    assert_eq!(fake.writes(Registrar::Cloudflare).len(), writes, "twice is once");
    // dig-style groups of the digest are the same record.
    let grouped = vec![format!("4242 13 2 {} {}", "AB".repeat(16), "AB".repeat(16))];
    assert!(api.set_ds("k8s.acme.com", &grouped).await.unwrap());
    assert_eq!(fake.writes(Registrar::Cloudflare).len(), writes);
    assert!(api.set_ds("k8s.acme.com", &[]).await.unwrap());
    assert!(fake.cloudflare_records("k8s.acme.com", "DS").is_empty());
    let e = api.set_ds("k8s.acme.com", &["not a ds".into()]).await.unwrap_err();
    assert_eq!(cause(&e), Cause::Invalid);
    for c in &CASES[1..] {
        let api = connect(&regs, c.r, c.token);
        assert!(!api.set_ds(c.domain, &ds).await.unwrap(), "{:?}", c.r);
    }
}
