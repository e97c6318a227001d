//! The operator and CI command line.

mod attach;
mod bundle;
mod cache;
mod did;
mod doctor;
pub mod policy;
mod proof;
mod resolve;
pub mod verify;

use clap::{Parser, Subcommand};

/// Verify container images signed through ATProto repositories (io.atcr.manifest records).
#[derive(Parser, Debug)]
#[command(name = "atproto-verifier", version, about, long_about = None)]
pub struct Cli {
    /// Diagnostics on stderr at this level and above (else $ATPROTO_VERIFIER_LOG, else info).
    #[arg(long, global = true, value_enum)]
    log_level: Option<crate::log::Level>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check or inspect a record proof (a com.atproto.sync.getRecord CAR) from files.
    #[command(subcommand)]
    Proof(proof::ProofCommand),
    /// Work with DID documents and did:plc audit logs from files.
    #[command(subcommand)]
    Did(did::DidCommand),
    /// Store an image's proof in its registry (OCI artifact) for offline nodes behind mirrors.
    Attach(attach::AttachArgs),
    /// Inspect, refresh or prune the on-disk cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Carry verification material to air-gapped nodes.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Decide for an image exactly as the containerd verifier would (tag resolved to a digest first).
    Verify(verify::VerifyArgs),
    /// Resolve a handle or DID: the DID, its key, PDS and handle, ready for a trust policy.
    Resolve(resolve::ResolveArgs),
    /// Check this node's setup: config, policy, cache, and containerd's verifier hook.
    Doctor(doctor::DoctorArgs),
    /// Check a trust policy, or explain what it decides for an image.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Runs a parsed command and returns the exit code.
pub fn run(cli: Cli) -> u8 {
    if let Some(level) = cli.log_level {
        crate::log::set_level(level);
    }
    match cli.command {
        Command::Proof(command) => proof::run(command),
        Command::Did(command) => did::run(command),
        Command::Policy(command) => policy::run(command),
        Command::Verify(args) => verify::run(args),
        Command::Bundle(command) => bundle::run(command),
        Command::Cache(command) => cache::run(command),
        Command::Attach(args) => attach::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Resolve(args) => resolve::run(args),
    }
}
