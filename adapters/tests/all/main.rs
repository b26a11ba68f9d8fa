//! The real adapters against real servers on loopback: PowerDNS
//! (`pdns_server`), OpenSSH (`sshd`) and the tofu-compatible CLI; and the
//! sealed-secrets format against its upstream test vectors.

mod openbao;
mod pdns_real;
mod sealed_secrets;
mod ssh_real;
mod tofu_cli;
