//! Catalyst-Zero's one test harness (a dev-dependency only, never
//! published). What the crates' integration tests share:
//!
//! - [`rig`]: a store and the engine in a directory, over the `sim` backend
//!   or any backend a test assembles, and the generic phase tests;
//! - [`requests`]: request fixtures;
//! - real servers on loopback, each started by the test that needs it, or
//!   once per test binary through its `shared()`: [`pdns::Pdns`]
//!   (`pdns_server` with SQLite), [`sshd::Sshd`] (OpenSSH), [`bao::Bao`]
//!   (OpenBao, `bao server`), [`postgres::Postgres`] (`initdb` + `pg_ctl`);
//! - [`daemon`]: the `catalyst-zero` binary as a child process, and its
//!   HTTP API;
//! - [`kill9`]: SIGKILL of the process driving a job, inside every step;
//! - [`browser`]: a headless Chromium over WebDriver (`chromedriver`), for
//!   the console.
//!
//! A server a test cannot have here (no binary on the machine) is reported
//! by its `available()`; tests that need one say so in their output when
//! they skip, never silently. Shared servers are tied to the test binary
//! ([`process::spawn_tied`]): they stop when it exits, however it exits.

pub mod bao;
pub mod browser;
pub mod daemon;
pub mod kill9;
pub mod pdns;
pub mod postgres;
pub mod process;
pub mod requests;
pub mod rig;
pub mod sshd;

/// A free TCP port on the loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs), once. Two
/// providers compiled in (kube defaults to ring) would otherwise make the
/// first TLS client panic; every test that builds one calls this first.
pub fn crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Prints a banner saying why a test does nothing here (a server or CLI
/// it needs is missing) and returns true; CI's log shows every skip.
pub fn skip(test: &str, why: &str) -> bool {
    eprintln!("SKIPPED {test}: {why}");
    true
}
