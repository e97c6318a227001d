//! `doctor`: checks a node's setup without touching the network, because the failure modes of
//! containerd's verifier hook are silent: an empty or missing `bin_dir` admits every pull, a
//! non-executable file there blocks every pull, a `per_verifier_timeout` below our budget kills
//! us mid-decision, a disabled bindir plugin runs none, and CRI's local-pull fallback (eight
//! settings trigger it) skips verifiers altogether. `--live` asks containerd itself.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use crate::config::{Config, Span};
pub mod containerd_config;

use crate::cli::output::{Format, print_json};
use crate::exit;
use containerd_config::{BINDIR_PLUGIN, CRI_IMAGES_PLUGIN, DEFAULT_BIN_DIR};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// containerd's configuration.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Also pull IMAGE (one the trust policy must block) through containerd and report whether
    /// a verifier stopped it: the check that cannot be fooled by a config file.
    #[arg(long, value_name = "IMAGE")]
    live: Option<String>,
    /// containerd's socket, for --live.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// The ctr binary, for --live.
    #[arg(long, default_value = "ctr")]
    ctr: PathBuf,
    /// A hosts.toml directory for --live (ctr's --hosts-dir).
    #[arg(long)]
    hosts_dir: Option<PathBuf>,
    /// Gatekeeper's controller Deployment (JSON, `-` for stdin), e.g. from `kubectl get
    /// deploy -n gatekeeper-system gatekeeper-controller-manager -o json`: checks that its
    /// provider-response cache does not outlast the revocation `watch` pushes.
    #[arg(long, value_name = "FILE")]
    gatekeeper: Option<PathBuf>,
}

/// How fast `watch` revokes on a node; a cache in front of it that keeps answers longer is
/// the revocation delay that counts.
const REVOCATION_GOAL: std::time::Duration = std::time::Duration::from_secs(2);
/// Gatekeeper's default `--external-data-provider-response-cache-ttl`.
const GATEKEEPER_DEFAULT_TTL: &str = "3m";

/// The provider-response cache TTL a Gatekeeper Deployment runs with (its flag, else the default).
fn gatekeeper_cache_ttl(deployment: &serde_json::Value) -> Option<String> {
    let containers = deployment.pointer("/spec/template/spec/containers")?.as_array()?;
    let args = containers.iter().flat_map(|c| ["args", "command"].into_iter().filter_map(move |k| c.get(k)?.as_array())).flatten();
    let flag = "--external-data-provider-response-cache-ttl";
    let mut args = args.filter_map(serde_json::Value::as_str).peekable();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
            return Some(value.to_owned());
        }
        if arg == flag {
            return args.next().map(str::to_owned);
        }
    }
    Some(GATEKEEPER_DEFAULT_TTL.to_owned())
}

fn gatekeeper_finding(path: &Path) -> Finding {
    let check = "gatekeeper cache";
    let fail = |message: String| Finding { level: Level::Fail, check, message };
    let text = if path == Path::new("-") {
        let mut text = String::new();
        let read = std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 4 << 20), &mut text);
        if let Err(e) = read {
            return fail(format!("stdin: {e}"));
        }
        text
    } else {
        match crate::fsio::read_capped(path, 4 << 20) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        }
    };
    let parsed = serde_json::from_str::<serde_json::Value>(&text).ok();
    let Some(ttl) = parsed.as_ref().and_then(gatekeeper_cache_ttl) else {
        return fail(format!(
            "{}: not a Deployment with containers (kubectl get deploy -n gatekeeper-system gatekeeper-controller-manager -o json)",
            path.display()
        ));
    };
    match Span::parse(&ttl) {
        Some(span) if span.0 <= REVOCATION_GOAL => Finding {
            level: Level::Ok,
            check,
            message: format!("Gatekeeper keeps provider answers {ttl}: a revocation reaches it as fast as `watch` makes it"),
        },
        Some(_) => Finding {
            level: Level::Warn,
            check,
            message: format!(
                "Gatekeeper keeps provider answers for {ttl}: an image revoked by `watch` stays admitted by Gatekeeper that long — add --external-data-provider-response-cache-ttl=1s (0s turns it off) to its controller's args"
            ),
        },
        None => fail(format!("--external-data-provider-response-cache-ttl={ttl:?} is not a duration Gatekeeper accepts")),
    }
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

/// Findings about containerd's side of the contract, from its effective configuration (the
/// main file and every import, as containerd reads them).
fn containerd_findings(path: &Path, budget: Span, out: &mut Vec<Finding>) {
    let mut add = |level, check, message: String| out.push(Finding { level, check, message });
    if !path.exists() {
        add(
            Level::Warn,
            "containerd config",
            format!(
                "{} does not exist: containerd runs on its defaults (bin_dir {DEFAULT_BIN_DIR}) — pass --containerd-config if it lives elsewhere",
                path.display()
            ),
        );
    }
    let effective = if path.exists() {
        match containerd_config::load(path) {
            Ok(e) => e,
            Err(e) => {
                add(Level::Fail, "containerd config", e.to_string());
                return;
            }
        }
    } else {
        containerd_config::Effective::default()
    };
    if effective.files.len() > 1 {
        add(Level::Ok, "containerd config", format!("read {} and {} imported files", path.display(), effective.files.len() - 1));
    }
    if let Some(file) = effective.is_disabled(BINDIR_PLUGIN) {
        add(
            Level::Fail,
            "bindir plugin",
            format!(
                "{BINDIR_PLUGIN} is in disabled_plugins ({}): containerd 2.4 runs NO image verifier and admits every pull (2.2 fails every transfer-service pull instead) — remove it from disabled_plugins",
                containerd_config::locate(file, BINDIR_PLUGIN)
            ),
        );
        return;
    }
    let plugin = effective.plugin(BINDIR_PLUGIN);
    if plugin.is_none() {
        add(Level::Warn, "bindir plugin", format!("no [plugins.\"{BINDIR_PLUGIN}\"] section: containerd uses bin_dir {DEFAULT_BIN_DIR} and a 10s timeout"));
    }
    let timeout_text = plugin.and_then(|p| p.table.get("per_verifier_timeout")).and_then(toml::Value::as_str).unwrap_or("10s");
    out.push(timeout_finding(timeout_text, budget));
    bin_dir_findings(&effective.bin_dir(), out);
    cri_findings(&effective, out);
}

/// containerd's `per_verifier_timeout` against our budget: we must answer first.
fn timeout_finding(timeout_text: &str, budget: Span) -> Finding {
    let finding = |level, message: String| Finding { level, check: "timeout", message };
    match Span::parse(timeout_text) {
        Some(timeout) if timeout.0 <= budget.0 => finding(
            Level::Fail,
            format!(
                "per_verifier_timeout {timeout_text} is not longer than our budget {budget}: containerd would kill the verifier before it can say why — lower `budget` in config.toml"
            ),
        ),
        Some(_) => finding(Level::Ok, format!("per_verifier_timeout {timeout_text} > budget {budget}")),
        None => finding(Level::Warn, format!("per_verifier_timeout {timeout_text:?} could not be read; make sure it exceeds our budget {budget}")),
    }
}

/// The bin_dir containerd runs: missing or empty admits every pull, a non-executable file
/// fails every pull, and it should hold this verifier.
fn bin_dir_findings(bin_dir: &Path, out: &mut Vec<Finding>) {
    let mut add = |level, message: String| out.push(Finding { level, check: "bin_dir", message });
    match std::fs::read_dir(bin_dir) {
        Err(_) => {
            add(Level::Fail, format!("{} does not exist: containerd admits EVERY pull when bin_dir is missing — install the verifier there", bin_dir.display()))
        }
        Ok(entries) => {
            let files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            if files.is_empty() {
                add(Level::Fail, format!("{} is empty: containerd admits EVERY pull when bin_dir is empty — install the verifier there", bin_dir.display()));
            }
            for file in &files {
                let executable = std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !executable {
                    add(Level::Fail, format!("{} is not an executable file: containerd fails EVERY pull on it — remove it or chmod +x", file.display()));
                }
            }
            let ours = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
            if files.iter().any(|f| f.canonicalize().ok() == ours || f.file_name().is_some_and(|n| n.to_string_lossy().contains("atproto-verifier"))) {
                add(Level::Ok, format!("{} holds this verifier", bin_dir.display()));
            } else if !files.is_empty() {
                add(Level::Fail, format!("{} holds verifiers, but not atproto-verifier: install it there", bin_dir.display()));
            }
        }
    }
}

/// Kubernetes pulls: the CRI plugin must pull through the transfer service, or no verifier runs.
fn cri_findings(effective: &containerd_config::Effective, out: &mut Vec<Finding>) {
    let mut add = |level, message: String| out.push(Finding { level, check: "CRI", message });
    let cri_disabled = [CRI_IMAGES_PLUGIN, "io.containerd.grpc.v1.cri"].iter().find_map(|p| effective.is_disabled(p).map(|f| (*p, f)));
    if let Some((name, file)) = cri_disabled {
        add(Level::Ok, format!("the CRI plugin is disabled ({name} in {}): no Kubernetes pulls to check", file.display()));
        return;
    }
    let triggers = effective.local_pull_triggers();
    if triggers.is_empty() {
        add(Level::Ok, "CRI pulls use the transfer service (containerd 2.1+), so verifiers run".into());
    }
    for t in triggers {
        add(
            Level::Fail,
            format!(
                "{}: {} makes containerd fall back to the local image pull, which runs NO image verifier (Kubernetes pulls are admitted unchecked) — {}",
                t.at, t.setting, t.fix
            ),
        );
    }
}

/// The version of the first `nerdctl` on PATH, if any.
fn nerdctl_version() -> Option<String> {
    let out = std::process::Command::new("nerdctl").arg("--version").stdin(std::process::Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().find(|w| w.trim_start_matches('v').starts_with(|c: char| c.is_ascii_digit())).map(|v| v.trim_start_matches('v').to_owned())
}

/// nerdctl before 2.3 pulls client-side (no transfer service), so no image verifier runs.
fn nerdctl_findings(out: &mut Vec<Finding>) {
    let Some(version) = nerdctl_version() else { return };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 3) {
        out.push(Finding { level: Level::Warn, check: "nerdctl", message: format!("nerdctl {version} is on PATH: releases before 2.3 pull client-side, without the transfer service, so NO image verifier runs for `nerdctl pull` — upgrade to nerdctl 2.3 or later") });
    } else {
        out.push(Finding { level: Level::Ok, check: "nerdctl", message: format!("nerdctl {version} pulls through the transfer service, so verifiers run") });
    }
}

/// The real check: asks containerd to pull an image the policy must block, and reports
/// whether a verifier stopped it.
fn live_finding(args: &DoctorArgs, image: &str, out: &mut Vec<Finding>) {
    let mut command = std::process::Command::new(&args.ctr);
    command.arg("--address").arg(&args.address).args(["image", "pull"]);
    if let Some(hosts) = &args.hosts_dir {
        command.arg("--hosts-dir").arg(hosts);
    }
    let result = command.arg(image).stdin(std::process::Stdio::null()).output();
    let Ok(output) = result else {
        out.push(Finding { level: Level::Fail, check: "live", message: format!("cannot run {}: install containerd's ctr or pass --ctr", args.ctr.display()) });
        return;
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let finding = if output.status.success() {
        // Undo what the check did.
        let _ = std::process::Command::new(&args.ctr).arg("--address").arg(&args.address).args(["image", "rm", image]).output();
        Finding {
            level: Level::Fail,
            check: "live",
            message: format!("containerd pulled {image} and no verifier blocked it: image verification is NOT in effect"),
        }
    } else if text.contains("image verifier") && text.contains("blocked") {
        Finding { level: Level::Ok, check: "live", message: format!("a verifier ran and blocked {image}, as the policy requires") }
    } else {
        let last = crate::limits::short(text.lines().last().unwrap_or_default(), 300);
        Finding {
            level: Level::Warn,
            check: "live",
            message: format!("the pull of {image} failed before any verifier decided (is the image reachable?): {last}"),
        }
    };
    out.push(finding);
}

/// What is already in containerd's store, decided from this node's knowledge (no request):
/// a container still running a revoked image fails the check (drain it); a revoked image
/// left in the store warns (`on_revoke = "report"`).
fn store_findings(config: &Config, socket: &Path, out: &mut Vec<Finding>) {
    if !socket.exists() {
        out.push(Finding {
            level: Level::Ok,
            check: "store",
            message: format!("no containerd socket at {}: the images already on this node were not checked (containerd_socket, --address)", socket.display()),
        });
        return;
    }
    let policy = match crate::engine::request::load_policy(&config.policy) {
        Ok(p) => p,
        Err(_) => return, // the policy finding says why
    };
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let remote = crate::remote::system::system(config);
    let survey = match crate::node::Containerd::connect(socket, std::time::Duration::from_secs(5))
        .and_then(|containerd| crate::node::survey(config, &policy, &containerd, &remote, now))
    {
        Ok(s) => s,
        Err(e) => {
            out.push(Finding { level: Level::Warn, check: "store", message: format!("containerd's store not checked: {e}") });
            return;
        }
    };
    let running = crate::node::running_revoked(&survey, &crate::node::state::NodeState::load(&config.cache_dir));
    for r in &running {
        out.push(Finding {
            level: Level::Fail,
            check: "store",
            message: format!(
                "{} still runs {} ({}), whose record is deleted: drain it (the verifier never kills it)",
                r.describe(),
                r.container.image,
                r.digest
            ),
        });
    }
    let revoked: Vec<&crate::node::ImageRow> = survey.images.iter().filter(|r| r.revoked.is_some()).collect();
    if !revoked.is_empty() {
        let names: Vec<String> = revoked.iter().take(5).map(|r| format!("{} in {}", r.image.name, r.image.namespace)).collect();
        out.push(Finding {
            level: Level::Warn,
            check: "store",
            message: format!(
                "{} revoked image(s) still in containerd's store ({}{}): a container can start from them without a pull; on_revoke = \"remove-image\" removes them",
                revoked.len(),
                names.join(", "),
                if revoked.len() > 5 { ", …" } else { "" }
            ),
        });
    }
    if running.is_empty() && revoked.is_empty() {
        out.push(Finding {
            level: Level::Ok,
            check: "store",
            message: format!("containerd holds {} image(s): none revoked, no container runs a revoked image", survey.images.len()),
        });
    }
}

/// Whether decisions can be appended to the audit log (opened for append, nothing written).
fn audit_log_finding(path: &Path) -> Finding {
    if let Err(why) = crate::fsio::check_private(path) {
        return Finding {
            level: Level::Fail,
            check: "audit log",
            message: format!("{why} — decisions are not recorded there until it is this user's own: chmod 600"),
        };
    }
    let writable = if path.exists() {
        std::fs::OpenOptions::new().append(true).open(path).is_ok()
    } else {
        path.parent().filter(|d| d.is_dir()).is_some_and(|d| {
            let probe = d.join(format!(".doctor-probe-{}", std::process::id()));
            let ok = std::fs::write(&probe, b"").is_ok();
            let _ = std::fs::remove_file(&probe);
            ok
        })
    };
    if writable {
        Finding { level: Level::Ok, check: "audit log", message: format!("{} can be written", path.display()) }
    } else {
        Finding {
            level: Level::Warn,
            check: "audit log",
            message: format!(
                "{} cannot be written (is its directory there, and writable by containerd's user?): decisions are not recorded — pulls are not blocked, and each decision says so on stderr",
                path.display()
            ),
        }
    }
}

/// Whether the cache directory can be written, without creating it (doctor changes nothing).
fn cache_finding(dir: &Path) -> Finding {
    if let Some(why) = crate::material::store::Cache::new(dir).refusal() {
        return Finding {
            level: Level::Fail,
            check: "cache",
            message: format!(
                "{why} — the cache is not used at all (planted entries would be trusted): make it this user's own and private, e.g. chown -R $(id -u) {0} && chmod -R go-w {0}",
                dir.display()
            ),
        };
    }
    let writable = |d: &Path| {
        let probe = d.join(format!(".doctor-probe-{}", std::process::id()));
        let ok = std::fs::write(&probe, b"ok").is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    };
    if dir.is_dir() {
        return if writable(dir) {
            Finding { level: Level::Ok, check: "cache", message: format!("{} is writable", dir.display()) }
        } else {
            Finding { level: Level::Warn, check: "cache", message: format!("{} is not writable: every pull refetches everything", dir.display()) }
        };
    }
    match dir.ancestors().skip(1).find(|a| a.is_dir()) {
        Some(parent) if writable(parent) => Finding {
            level: Level::Ok,
            check: "cache",
            message: format!("{} does not exist yet; it will be created on first use (in {})", dir.display(), parent.display()),
        },
        Some(parent) => Finding {
            level: Level::Warn,
            check: "cache",
            message: format!("{} does not exist and {} is not writable: every pull refetches everything", dir.display(), parent.display()),
        },
        None => Finding { level: Level::Warn, check: "cache", message: format!("{} cannot be created", dir.display()) },
    }
}

/// The trust policy: loads and validates, or every pull is blocked.
fn policy_finding(config: &Config) -> Finding {
    match crate::engine::request::load_policy(&config.policy) {
        Ok(p) => Finding {
            level: Level::Ok,
            check: "policy",
            message: format!(
                "{}: {} policies, {} trusted DIDs, {}",
                config.policy.display(),
                p.rules.len(),
                p.trusted.len(),
                if p.default.is_some() { "with a default" } else { "no default (unmatched images are rejected)" }
            ),
        },
        Err(crate::engine::PolicyError::Unreadable(e)) => {
            Finding { level: Level::Fail, check: "policy", message: format!("{e} — every pull is blocked until a policy is installed") }
        }
        Err(crate::engine::PolicyError::Invalid(errors)) => Finding {
            level: Level::Fail,
            check: "policy",
            message: format!("{} errors, first: {} — run `atproto-verifier policy check`", errors.len(), errors.first().cloned().unwrap_or_default()),
        },
    }
}

/// The CA certificates https trusts.
fn trust_roots_finding(config: &Config) -> Finding {
    let trust = crate::remote::ureq::TrustRoots::new(config.ca_bundle.clone());
    let loaded = trust.get();
    let (roots, source) = (&*loaded.certificates, &loaded.source);
    if roots.is_empty() {
        Finding {
            level: Level::Warn,
            check: "trust roots",
            message: "no CA certificates in the system store or ca_bundle: https uses the compiled-in Mozilla roots (install ca-certificates)".into(),
        }
    } else {
        Finding { level: Level::Ok, check: "trust roots", message: format!("https trusts {source}") }
    }
}

/// One line per finding (text), or one JSON document.
fn print_findings(format: Format, findings: &[Finding]) {
    let label = |l: Level| match l {
        Level::Ok => "ok",
        Level::Warn => "warn",
        Level::Fail => "FAIL",
    };
    match format {
        Format::Json => print_json(
            &json!({"ok": !findings.iter().any(|f| f.level == Level::Fail), "findings": findings.iter().map(|f| json!({"level": label(f.level), "check": f.check, "message": f.message})).collect::<Vec<_>>()}),
        ),
        Format::Text => {
            for f in findings {
                println!("{:<4} {:<17} {}", label(f.level), f.check, f.message);
            }
        }
    }
}

pub fn run(args: DoctorArgs) -> u8 {
    let mut findings = Vec::new();
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => {
            let path = crate::config::config_path(args.config.as_deref()).0;
            let message =
                if path.exists() { format!("{} loads", path.display()) } else { format!("no config file at {}: built-in defaults apply", path.display()) };
            findings.push(Finding { level: Level::Ok, check: "config", message });
            c
        }
        Err(e) => {
            findings.push(Finding { level: Level::Fail, check: "config", message: format!("{e} — every pull is blocked (config-invalid)") });
            Config::default()
        }
    };
    findings.push(policy_finding(&config));
    findings.push(cache_finding(&config.cache_dir));
    if let Some(dir) = &config.bundle_dir
        && let Err(why) = crate::fsio::check_private_target(dir)
    {
        findings.push(Finding {
            level: Level::Fail,
            check: "bundle_dir",
            message: format!("{why} — its bundles are not imported until only this node's user (or root) can write it"),
        });
    }
    if let Some(path) = &config.audit_log {
        findings.push(audit_log_finding(path));
    }
    if config.offline {
        findings.push(Finding {
            level: Level::Ok,
            check: "offline",
            message: format!("offline: proofs older than max_proof_age ({}) are refused; import bundles more often than that", config.max_proof_age),
        });
    }
    findings.push(trust_roots_finding(&config));
    containerd_findings(&args.containerd_config, config.budget, &mut findings);
    nerdctl_findings(&mut findings);
    let socket = if args.address.exists() { args.address.clone() } else { config.containerd_socket.clone() };
    store_findings(&config, &socket, &mut findings);
    if let Some(image) = &args.live {
        live_finding(&args, image, &mut findings);
    }
    if let Some(path) = &args.gatekeeper {
        findings.push(gatekeeper_finding(path));
    }
    print_findings(args.format, &findings);
    if findings.iter().any(|f| f.level == Level::Fail) { exit::REJECTED } else { exit::ADMITTED }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gatekeeper_cache_ttl_from_its_deployment() {
        let deployment = |args: serde_json::Value| serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "manager", "args": args}]}}}});
        assert_eq!(gatekeeper_cache_ttl(&deployment(serde_json::json!(["--port=8443"]))).as_deref(), Some("3m"), "the default");
        assert_eq!(gatekeeper_cache_ttl(&deployment(serde_json::json!(["--external-data-provider-response-cache-ttl=1s"]))).as_deref(), Some("1s"));
        assert_eq!(gatekeeper_cache_ttl(&deployment(serde_json::json!(["--external-data-provider-response-cache-ttl", "0s"]))).as_deref(), Some("0s"));
        assert_eq!(gatekeeper_cache_ttl(&serde_json::json!({"kind": "ConfigMap"})), None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gk.json");
        std::fs::write(&file, deployment(serde_json::json!(["--operation=webhook"])).to_string()).unwrap();
        let finding = gatekeeper_finding(&file);
        assert!(finding.level == Level::Warn && finding.message.contains("for 3m") && finding.message.contains("cache-ttl=1s"), "{}", finding.message);
        std::fs::write(&file, deployment(serde_json::json!(["--external-data-provider-response-cache-ttl=1s"])).to_string()).unwrap();
        assert!(gatekeeper_finding(&file).level == Level::Ok);
        std::fs::write(&file, "not json").unwrap();
        assert!(gatekeeper_finding(&file).level == Level::Fail);
    }
}
