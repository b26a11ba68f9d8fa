pub mod pdns;
pub mod sshd;
