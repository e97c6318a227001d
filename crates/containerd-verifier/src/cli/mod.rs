//! The operator and CI command line.

pub(crate) mod attach;
mod bundle;
mod cache;
mod coverage;
mod did;
mod doctor;
mod install_node;
pub(crate) mod output;
pub mod policy;
mod policy_test;
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
    /// Answer Kubernetes admission (validating and mutating webhooks, Gatekeeper's external data) over HTTPS.
    Serve(crate::serve::ServeArgs),
    /// Follow the watched repositories' event streams and revoke cached proofs as soon as a signed commit deletes their record.
    Watch(crate::watch::WatchArgs),
    /// Install this binary as containerd's verifier under a root (the node DaemonSet's init container).
    InstallNode(install_node::InstallNodeArgs),
    /// Report which images of a registry namespace, an identity or a cluster are signed under the policy.
    Coverage(coverage::CoverageArgs),
    /// Check a trust policy, or explain what it decides for an image.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Write the man pages and shell completions into a directory (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory (created).
        dir: std::path::PathBuf,
    },
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
        Command::Coverage(args) => coverage::run(args),
        Command::Bundle(command) => bundle::run(command),
        Command::Cache(command) => cache::run(command),
        Command::Attach(args) => attach::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Resolve(args) => resolve::run(args),
        Command::Serve(args) => crate::serve::run(args),
        Command::InstallNode(args) => install_node::run(args),
        Command::Watch(args) => crate::watch::run(args),
        Command::GenerateAssets { dir } => match generate_assets(&dir) {
            Ok(()) => crate::exit::ADMITTED,
            Err(e) => {
                eprintln!("error: {e}");
                crate::exit::UNDECIDED
            }
        },
    }
}

/// Man pages (one per command, `atproto-verifier.1` and `atproto-verifier-<cmd>.1`) and
/// completions for bash, zsh and fish, generated from the same clap definitions as the CLI.
fn generate_assets(dir: &std::path::Path) -> Result<(), String> {
    use clap::CommandFactory;
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man).map_err(io)?;
    std::fs::create_dir_all(&completions).map_err(io)?;
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), &man).map_err(io)?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut command.clone(), "atproto-verifier", &completions).map_err(io)?;
    }
    Ok(())
}
