//! The daemon's reconcilers: long-lived convergence loops that take no
//! input on activation, are idempotent, and run on a timer (and at start).

pub mod dns_leases;
