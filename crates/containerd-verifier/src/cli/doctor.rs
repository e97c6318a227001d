//! `doctor`: checks a node's setup without touching the network, because the failure modes of
//! containerd's verifier hook are silent: an empty or missing `bin_dir` admits every pull, a
//! non-executable file there blocks every pull, a `per_verifier_timeout` below our budget kills
//! us mid-decision, and CRI's local-pull fallback skips verifiers altogether.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use crate::config::{Config, Span};
use crate::exit;
use crate::output::{print_json, Format};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// containerd's configuration.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Finding {
    level: Level,
    check: &'static str,
    message: String,
}

const BINDIR_PLUGIN: &str = "io.containerd.image-verifier.v1.bindir";
const DEFAULT_BIN_DIR: &str = "/opt/containerd/image-verifiers";

fn table<'t>(root: &'t toml::Table, path: &[&str]) -> Option<&'t toml::Table> {
    let mut current = root;
    for key in path {
        current = current.get(*key)?.as_table()?;
    }
    Some(current)
}

/// Findings about containerd's side of the contract.
fn containerd_findings(path: &Path, budget: Span, out: &mut Vec<Finding>) {
    let mut add = |level, check, message: String| out.push(Finding { level, check, message });
    let text = match crate::input::read_capped(path, 1 << 20).ok().and_then(|b| String::from_utf8(b).ok()) {
        Some(t) => t,
        None => {
            add(Level::Warn, "containerd config", format!("{} is not readable: cannot check the verifier hook (pass --containerd-config)", path.display()));
            return;
        }
    };
    let root: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            add(Level::Fail, "containerd config", format!("{} does not parse: {e}", path.display()));
            return;
        }
    };
    let plugin = table(&root, &["plugins", BINDIR_PLUGIN]);
    if plugin.is_none() {
        add(Level::Warn, "bindir plugin", format!("no [plugins.\"{BINDIR_PLUGIN}\"] section: containerd uses bin_dir {DEFAULT_BIN_DIR} and a 10s timeout"));
    }
    let bin_dir = PathBuf::from(plugin.and_then(|p| p.get("bin_dir")).and_then(toml::Value::as_str).unwrap_or(DEFAULT_BIN_DIR));
    let timeout_text = plugin.and_then(|p| p.get("per_verifier_timeout")).and_then(toml::Value::as_str).unwrap_or("10s");
    match Span::parse(timeout_text) {
        Some(timeout) if timeout.0 <= budget.0 => add(Level::Fail, "timeout", format!("per_verifier_timeout {timeout_text} is not longer than our budget {budget}: containerd would kill the verifier before it can say why — lower `budget` in config.toml")),
        Some(_) => add(Level::Ok, "timeout", format!("per_verifier_timeout {timeout_text} > budget {budget}")),
        None => add(Level::Warn, "timeout", format!("per_verifier_timeout {timeout_text:?} could not be read; make sure it exceeds our budget {budget}")),
    }
    match std::fs::read_dir(&bin_dir) {
        Err(_) => add(Level::Fail, "bin_dir", format!("{} does not exist: containerd admits EVERY pull when bin_dir is missing — install the verifier there", bin_dir.display())),
        Ok(entries) => {
            let files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            if files.is_empty() {
                add(Level::Fail, "bin_dir", format!("{} is empty: containerd admits EVERY pull when bin_dir is empty — install the verifier there", bin_dir.display()));
            }
            for file in &files {
                let executable = std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !executable {
                    add(Level::Fail, "bin_dir", format!("{} is not an executable file: containerd fails EVERY pull on it — remove it or chmod +x", file.display()));
                }
            }
            let ours = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
            if files.iter().any(|f| f.canonicalize().ok() == ours || f.file_name().is_some_and(|n| n.to_string_lossy().contains("atproto-verifier"))) {
                add(Level::Ok, "bin_dir", format!("{} holds this verifier", bin_dir.display()));
            } else if !files.is_empty() {
                add(Level::Warn, "bin_dir", format!("{} holds verifiers, but not atproto-verifier", bin_dir.display()));
            }
        }
    }
    // CRI pulls go through the transfer service (and so through verifiers) unless this is set.
    let local_pull = ["io.containerd.cri.v1.images", "io.containerd.grpc.v1.cri"]
        .iter()
        .any(|name| table(&root, &["plugins", name]).and_then(|t| t.get("use_local_image_pull")).and_then(toml::Value::as_bool) == Some(true));
    if local_pull {
        add(Level::Fail, "CRI", "use_local_image_pull = true: Kubernetes pulls skip image verifiers entirely".into());
    } else {
        add(Level::Ok, "CRI", "CRI pulls use the transfer service (containerd 2.1+), so verifiers run".into());
    }
}

pub fn run(args: DoctorArgs) -> u8 {
    let mut findings = Vec::new();
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => {
            findings.push(Finding { level: Level::Ok, check: "config", message: format!("{} loads", crate::config::config_path(args.config.as_deref()).0.display()) });
            c
        }
        Err(e) => {
            findings.push(Finding { level: Level::Fail, check: "config", message: format!("{e} — every pull is blocked (config-invalid)") });
            Config::default()
        }
    };
    match super::policy::load_policy(&config.policy) {
        Ok(p) => findings.push(Finding { level: Level::Ok, check: "policy", message: format!("{}: {} policies, {} trusted DIDs, {}", config.policy.display(), p.rules.len(), p.trusted.len(), if p.default.is_some() { "with a default" } else { "no default (unmatched images are rejected)" }) }),
        Err(super::policy::PolicyLoadError::Unreadable(e)) => findings.push(Finding { level: Level::Fail, check: "policy", message: format!("{e} — every pull is blocked until a policy is installed") }),
        Err(super::policy::PolicyLoadError::Invalid(errors)) => findings.push(Finding { level: Level::Fail, check: "policy", message: format!("{} errors, first: {} — run `atproto-verifier policy check`", errors.len(), errors.first().cloned().unwrap_or_default()) }),
    }
    let probe = config.cache_dir.join(".doctor-probe");
    let writable = std::fs::create_dir_all(&config.cache_dir).and_then(|()| std::fs::write(&probe, b"ok")).is_ok();
    let _ = std::fs::remove_file(&probe);
    findings.push(if writable {
        Finding { level: Level::Ok, check: "cache", message: format!("{} is writable", config.cache_dir.display()) }
    } else {
        Finding { level: Level::Warn, check: "cache", message: format!("{} is not writable: every pull refetches everything", config.cache_dir.display()) }
    });
    if config.offline {
        findings.push(Finding { level: Level::Ok, check: "offline", message: format!("offline: proofs older than max_proof_age ({}) are refused; import bundles more often than that", config.max_proof_age) });
    }
    containerd_findings(&args.containerd_config, config.budget, &mut findings);
    let failed = findings.iter().any(|f| f.level == Level::Fail);
    let label = |l: Level| match l {
        Level::Ok => "ok",
        Level::Warn => "warn",
        Level::Fail => "FAIL",
    };
    match args.format {
        Format::Json => print_json(&json!({"ok": !failed, "findings": findings.iter().map(|f| json!({"level": label(f.level), "check": f.check, "message": f.message})).collect::<Vec<_>>()})),
        Format::Text => {
            for f in &findings {
                println!("{:<4} {:<17} {}", label(f.level), f.check, f.message);
            }
        }
    }
    if failed { exit::REJECTED } else { exit::ADMITTED }
}
