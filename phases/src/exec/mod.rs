//! Subprocess execution: the one command helper and the real tofu runner.

pub mod command;
pub mod tofu;

pub use command::{CommandError, CommandSpec, Output, run};
pub use tofu::TofuCli;
