//! The test kit's own tests: each real server it can start comes up as a
//! test needs it, and goes away with the test binary.

mod servers;
