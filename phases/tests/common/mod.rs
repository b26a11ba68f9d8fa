pub mod kill9;
pub mod pdns;
pub mod sshd;
