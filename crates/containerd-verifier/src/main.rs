//! `atproto-verifier`: verifies that container images are signed through ATProto repositories.
//! The operator and CI command line lives in [`cli`]; every check is done by `atproto-sig-core`.
#![forbid(unsafe_code)]

mod cli;
mod config;
mod exit;
mod input;
mod output;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    std::process::ExitCode::from(cli::run(args))
}
