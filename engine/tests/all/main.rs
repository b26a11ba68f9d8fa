//! The engine's own tests, on toy steps: no simulated cloud, no adapter.
//! `toy` is the step environment (a world of named things) and its plan;
//! each other module covers one part of the engine.

mod faults;
mod generic;
mod pipeline;
mod plans;
mod resume;
mod retry;
mod toy;
mod unwind;
mod verbs;
