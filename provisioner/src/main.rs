//! The `catalyst-zero` binary; everything lives in the library
//! ([`catalyst_zero::cli`]) so tests can drive the same code.

fn main() -> std::process::ExitCode {
    // One rustls crypto provider for the whole process, chosen before any
    // TLS client exists, so no dependency can make the choice ambiguous
    // (two compiled-in providers make rustls panic; see DEPENDENCIES.md).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    catalyst_zero::cli::main()
}
