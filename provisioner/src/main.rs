//! The `catalyst-zero` binary; everything lives in the library
//! ([`catalyst_zero::cli`]) so tests can drive the same code.

fn main() -> std::process::ExitCode {
    catalyst_zero::cli::main()
}
