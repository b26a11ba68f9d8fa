pub mod kill9;
#[path = "../../../tests/src/pdns.rs"]
pub mod pdns;
pub mod sshd;
