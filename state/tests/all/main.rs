//! Integration tests of the durable store, one module per area.

mod age_cli;
mod store;
