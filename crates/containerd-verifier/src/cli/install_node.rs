//! `install-node`: installs this binary as containerd's pull-time verifier under a root (the
//! node DaemonSet's init container, with the host's filesystem at `/host`): the binary into
//! the image-verifier bin_dir, config and policy into /etc/atproto-verifier, the containerd
//! drop-in, the cache directory. The config and policy are checked first (a broken policy
//! would refuse every pull on the node); each file is written whole, then renamed into place.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::Config;
use crate::engine::PolicyError;
use crate::engine::request::load_policy;

#[derive(Args, Debug)]
pub struct InstallNodeArgs {
    /// The node's filesystem root (the host path mounted in the Pod).
    #[arg(long)]
    root: PathBuf,
    /// Directory holding config.toml and trust-policy.yaml (the ConfigMap).
    #[arg(long)]
    config_dir: PathBuf,
    /// containerd drop-in to install as /etc/containerd/conf.d/atproto-verifier.toml.
    #[arg(long)]
    containerd_dropin: Option<PathBuf>,
}

/// Largest file installed besides the binary.
const MAX_FILE: usize = 1 << 20;

fn install(bytes: &[u8], to: &Path, mode: u32) -> Result<(), String> {
    let dir = to.parent().ok_or_else(|| format!("{}: no parent directory", to.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    temp.write_all(bytes).and_then(|()| temp.as_file().sync_all()).map_err(|e| format!("{}: {e}", to.display()))?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", to.display()))?;
    temp.persist(to).map_err(|e| format!("{}: {}", to.display(), e.error))?;
    Ok(())
}

fn read(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    crate::fsio::read_capped(path, max).map_err(|e| e.to_string())
}

fn run_install(args: &InstallNodeArgs) -> Result<(Vec<String>, crate::config::OnRevoke), String> {
    let config_path = args.config_dir.join("config.toml");
    let policy_path = args.config_dir.join("trust-policy.yaml");
    let config_bytes = read(&config_path, MAX_FILE)?;
    let text = String::from_utf8(config_bytes.clone()).map_err(|_| format!("{}: not UTF-8", config_path.display()))?;
    let config = Config::parse(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    config.check().map_err(|e| format!("{}: {e}", config_path.display()))?;
    match load_policy(&policy_path) {
        Ok(_) => {}
        Err(PolicyError::Unreadable(e)) => return Err(e),
        Err(PolicyError::Invalid(errors)) => return Err(format!("the trust policy does not load, nothing installed:\n{}", errors.join("\n"))),
    }
    let binary = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let binary_bytes = std::fs::read(&binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let root = &args.root;
    let mut done = Vec::new();
    let mut put = |bytes: &[u8], relative: &str, mode: u32| -> Result<(), String> {
        let to = root.join(relative);
        install(bytes, &to, mode)?;
        done.push(to.display().to_string());
        Ok(())
    };
    // Config and policy first: a new binary never starts with an old, incompatible policy.
    put(&config_bytes, "etc/atproto-verifier/config.toml", 0o644)?;
    put(&read(&policy_path, MAX_FILE)?, "etc/atproto-verifier/trust-policy.yaml", 0o644)?;
    put(&binary_bytes, "opt/containerd/image-verifier/bin/atproto-verifier", 0o755)?;
    if let Some(dropin) = &args.containerd_dropin {
        put(&read(dropin, MAX_FILE)?, "etc/containerd/conf.d/atproto-verifier.toml", 0o644)?;
    }
    let cache = root.join("var/lib/atproto-verifier");
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("{}: {e}", cache.display()))?;
    Ok((done, config.on_revoke))
}

pub fn run(args: InstallNodeArgs) -> u8 {
    match run_install(&args) {
        Ok((done, on_revoke)) => {
            for path in done {
                println!("installed {path}");
            }
            println!("restart containerd on this node to read the drop-in (once), then: atproto-verifier doctor");
            // containerd decides only at pulls: what a revocation does to images already here.
            match on_revoke {
                crate::config::OnRevoke::Report => println!(
                    "on_revoke = \"report\": a revoked image already in containerd's store is reported (log, metric, doctor, coverage node), not removed; to remove it, so the next start must pull and is blocked, set on_revoke = \"remove-image\" in config.toml (running containers are never killed)"
                ),
                crate::config::OnRevoke::RemoveImage => println!(
                    "on_revoke = \"remove-image\": revoked images leave containerd's store (containerd_socket) as soon as `atproto-verifier watch` learns of them: run it on this node (atproto-verifier-watch.service, or the DaemonSet's fleet container)"
                ),
            }
            crate::exit::ADMITTED
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::exit::UNDECIDED
        }
    }
}
