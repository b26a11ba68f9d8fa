//! Catalyst-Zero's whole-stack tests live in `tests/all.rs` (one binary):
//! whole phases against real servers (`pdns_server`, `sshd`) and the wire
//! fakes of the Kubernetes and registrar APIs, and the `catalyst-zero`
//! binary end to end. This library is empty.
