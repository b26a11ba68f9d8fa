//! What we encrypt decrypts with the real `age` CLI (installed by
//! `.ci/run`). A missing CLI fails the test: it must not pass silently.

use std::process::Command;

use cz_state::secrets::encrypt_to_recipients;
use cz_state::{Sealer, SecretString};

fn age_available() {
    let ok =
        Command::new("age").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "the `age` CLI is not installed (apt-get install age; .ci/run does it)");
}

fn decrypt(identity: &std::path::Path, blob: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("blob.age");
    std::fs::write(&f, blob).unwrap();
    let out = Command::new("age").arg("-d").arg("-i").arg(identity).arg(&f).output().unwrap();
    assert!(out.status.success(), "age -d failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn escrow_to_operator_recipients_decrypts_with_the_age_cli() {
    age_available();
    let dir = tempfile::tempdir().unwrap();
    let mut recipients = Vec::new();
    let mut keys = Vec::new();
    for i in 0..2 {
        let key = dir.path().join(format!("op{i}.txt"));
        let out = Command::new("age-keygen").arg("-o").arg(&key).output().unwrap();
        assert!(out.status.success());
        let text = std::fs::read_to_string(&key).unwrap();
        let public =
            text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned();
        recipients.push(public);
        keys.push(key);
    }
    let share = b"openbao unseal share 3 of 5";
    let blob = encrypt_to_recipients(&recipients, share).unwrap();
    // Any one operator can decrypt.
    for k in &keys {
        assert_eq!(decrypt(k, &blob), share);
    }
}

#[test]
fn the_daemon_identity_file_is_an_age_identity() {
    age_available();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.age.txt");
    let sealer = Sealer::load_or_create(&path).unwrap();
    let secret = SecretString::new("hcloud-token-value");
    let blob = sealer.seal(secret.expose().as_bytes()).unwrap();
    assert_eq!(decrypt(&path, &blob), b"hcloud-token-value");
}

/// A custodian's blob is armored text for one recipient: the real CLI opens
/// it with that custodian's identity and refuses another's, and the
/// daemon's own reader (what the unseal tool runs locally) agrees.
#[test]
fn an_armored_blob_opens_for_its_one_recipient() {
    use cz_state::secrets::{decrypt_with_identity, encrypt_armored_to};
    age_available();
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        let key = dir.path().join(format!("c{i}.txt"));
        assert!(Command::new("age-keygen").arg("-o").arg(&key).output().unwrap().status.success());
        ids.push(key);
    }
    let public = |k: &std::path::Path| {
        let text = std::fs::read_to_string(k).unwrap();
        text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned()
    };
    let armored = encrypt_armored_to(&public(&ids[0]), b"part 1 of 3").unwrap();
    assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"), "{armored}");
    assert_eq!(decrypt(&ids[0], armored.as_bytes()), b"part 1 of 3");
    let f = dir.path().join("other.age");
    std::fs::write(&f, &armored).unwrap();
    let other = Command::new("age").arg("-d").arg("-i").arg(&ids[1]).arg(&f).output().unwrap();
    assert!(!other.status.success(), "another custodian opened it");
    let text = |k: &std::path::Path| std::fs::read_to_string(k).unwrap();
    assert_eq!(decrypt_with_identity(&text(&ids[0]), armored.as_bytes()).unwrap(), b"part 1 of 3");
    assert!(decrypt_with_identity(&text(&ids[1]), armored.as_bytes()).is_err());
}
