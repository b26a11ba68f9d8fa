//! Talking to other programs and hosts: the one command helper, the real
//! tofu runner and the real SSH client.

pub mod command;
pub mod kubeconfig;
pub mod ssh;
pub mod tofu;

pub use command::{CommandError, CommandSpec, Output, run};
pub use ssh::SshClient;
pub use tofu::TofuCli;
