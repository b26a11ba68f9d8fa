//! The real adapters against real servers on loopback: PowerDNS
//! (`pdns_server`), OpenSSH (`sshd`) and the tofu-compatible CLI.

mod pdns_real;
mod ssh_real;
mod tofu_cli;
