//! Integration tests of the `catalyst-zero` crate, one module per area.

mod contract;
mod deploy;
