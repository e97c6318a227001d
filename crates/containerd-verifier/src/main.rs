//! `atproto-verifier`: verifies that container images are signed through ATProto repositories.
//! The operator and CI command line lives in [`cli`]; every check is done by `atproto-sig-core`.
#![forbid(unsafe_code)]

use clap::Parser;
use containerd_verifier::{bindir, cli, ratify};

fn main() -> std::process::ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // containerd's single-dash argv (`-name … -digest …`) goes to the bindir entry point.
    if bindir::is_bindir_invocation(&raw) {
        let args: Vec<String> = raw.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        return std::process::ExitCode::from(bindir::run(&args));
    }
    // Ratify v1 runs its external verifier plugins with no arguments and RATIFY_VERIFIER_*.
    if ratify::is_ratify_invocation(&raw) {
        return std::process::ExitCode::from(ratify::run());
    }
    let args = cli::Cli::parse();
    std::process::ExitCode::from(cli::run(args))
}
