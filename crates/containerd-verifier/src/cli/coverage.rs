//! `coverage TARGET`: the adapter around [`crate::coverage`]: lists the target, decides every
//! image (bounded concurrency, a progress line on a terminal), writes the report.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use atproto_sig_core::policy::Policy;
use clap::{Args, ValueEnum};

use crate::cli::output::{Format, load_config, print_json, print_undecided};
use crate::clock::now_micros;
use crate::coverage::{self, Status, Target, report};
use crate::engine::request::load_policy;
use crate::engine::{PolicyError, Session, SessionOptions};
use crate::exit;
use crate::remote::{Deadline, InFlight};

/// Time allowed to list a target (every page of a catalog or a record list).
const LISTING_BUDGET: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CoverageFormat {
    #[default]
    Text,
    Json,
    /// SARIF 2.1.0: one result per image.
    Sarif,
    /// A Prometheus textfile (for node_exporter's textfile collector): counts by status.
    Prometheus,
}

#[derive(Args, Debug)]
pub struct CoverageArgs {
    /// A registry namespace ending in `/` (atcr.io/alice.example.com/), a DID or handle (its
    /// io.atcr.manifest records), `cluster` (the images of running Pods, with --pods), or
    /// `node` (the images in this node's containerd, decided from this node's knowledge, and
    /// the containers still running a revoked one).
    target: String,
    /// For `node`: containerd's socket (default: `containerd_socket` of config.toml).
    #[arg(long)]
    address: Option<PathBuf>,
    /// For `cluster`: the output of `kubectl get pods -A -o json`, a file or `-` for stdin.
    #[arg(long, conflicts_with = "kubeconfig")]
    pods: Option<PathBuf>,
    /// For `cluster`: list the Pods from the API server this kubeconfig names (else $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// With --kubeconfig: this context instead of its current-context.
    #[arg(long)]
    context: Option<String>,
    /// For an identity: the registry its images are pulled from (default: the first of
    /// `atproto_registries`).
    #[arg(long)]
    registry: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Decide under this trust policy instead of the one config.toml names.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Images decided at once (1 to 32).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    jobs: u16,
    #[arg(long, value_enum, default_value_t)]
    format: CoverageFormat,
    /// Write the report here (replaced atomically, as a textfile collector needs) instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

pub fn run(args: CoverageArgs) -> u8 {
    let format = if args.format == CoverageFormat::Json { Format::Json } else { Format::Text };
    let fail = |message: &str, hint: &str| {
        print_undecided(format, message, hint);
        exit::UNDECIDED
    };
    let mut config = match load_config(args.config.as_deref(), format) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(policy) = &args.policy {
        config.policy.clone_from(policy);
    }
    let policy = match load_policy(&config.policy) {
        Ok(p) => p,
        Err(PolicyError::Unreadable(e)) => return fail(&e, crate::engine::request::INSTALL_POLICY_HINT),
        Err(PolicyError::Invalid(errors)) => return fail(&errors.join("\n"), "run: atproto-verifier policy check"),
    };
    let now = now_micros(None).unwrap_or(0);
    let remote = crate::remote::system::system(&config);
    if args.target == "node" {
        if let Some(address) = &args.address {
            config.containerd_socket.clone_from(address);
        }
        return node(&args, &config, &policy, &remote, now);
    }
    let target = if args.target == "cluster" {
        match cluster_pods(&args, &config, &remote, now) {
            Ok(bytes) => Target::Cluster(bytes),
            Err(e) => return fail(&e, "kubectl get pods -A -o json | atproto-verifier coverage cluster --pods -   (or --kubeconfig FILE)"),
        }
    } else {
        match Target::parse(&args.target) {
            Ok(t) => t,
            Err(e) => return fail(&e, "atproto-verifier coverage atcr.io/alice.example.com/ | alice.example.com | cluster --pods -"),
        }
    };
    let registry_host = match args.registry.as_deref().map(atproto_sig_core::reference::canonical_host).transpose() {
        Ok(host) => host.or_else(|| config.atproto_registries.first().cloned()).unwrap_or_else(|| "atcr.io".into()),
        Err(e) => return fail(&format!("--registry: {e}"), ""),
    };
    let listing = {
        let empty = Policy::empty();
        let options = SessionOptions { registry: true, ..SessionOptions::default() };
        let session = Session::new(&config, &empty, &remote, now, Deadline::after(LISTING_BUDGET), &InFlight::default(), options);
        coverage::list(&target, &session, &registry_host)
    };
    let (items, cut) = match listing {
        Ok(found) => found,
        Err(e) => {
            return fail(
                &format!("cannot list {}: {e}", args.target),
                "check the target's spelling and that its registry or PDS answers (atproto-verifier doctor)",
            );
        }
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = |done: usize, total: usize| {
        if terminal {
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!("\r[{}{}] {done}/{total} images decided", "#".repeat(filled), " ".repeat(width - filled));
            if done == total {
                eprintln!();
            }
        }
    };
    let rows = coverage::decide_all(&items, usize::from(args.jobs), &config, &policy, &remote, now, &progress);
    emit(&args, &rows, cut, None)
}

/// Writes the report (with, for `node`, the containers still running a revoked image) and
/// answers the exit code.
fn emit(args: &CoverageArgs, rows: &[coverage::Row], cut: bool, running: Option<&[crate::node::RunningRevoked]>) -> u8 {
    let format = if args.format == CoverageFormat::Json { Format::Json } else { Format::Text };
    let with_running_text = |mut text: String| {
        for r in running.unwrap_or_default() {
            text.push_str(&format!("running   {}: {} ({}), whose record is deleted: drain it\n", r.describe(), r.container.image, r.digest));
        }
        text
    };
    let with_running_json = |mut value: serde_json::Value| {
        if let (Some(running), Some(object)) = (running, value.as_object_mut()) {
            let list: Vec<serde_json::Value> = running
                .iter()
                .map(|r| {
                    serde_json::json!({"namespace": r.container.namespace, "container": r.container.id, "image": r.container.image,
                    "digest": r.digest, "task": r.container.task, "pod": r.pod, "name": r.name})
                })
                .collect();
            object.insert("runningRevoked".into(), list.into());
        }
        value
    };
    let rendered = match args.format {
        CoverageFormat::Text => with_running_text(report::text(&args.target, rows, cut)),
        CoverageFormat::Json => with_running_json(report::json(&args.target, rows, cut)).to_string() + "\n",
        CoverageFormat::Sarif => report::sarif(rows).to_string() + "\n",
        CoverageFormat::Prometheus => {
            let mut text = report::prometheus(&args.target, rows, now_micros(None).unwrap_or(0) / 1_000_000);
            if let Some(running) = running {
                text.push_str("# HELP atproto_verifier_coverage_revoked_containers_running Containers still running an image whose record is deleted.\n");
                text.push_str("# TYPE atproto_verifier_coverage_revoked_containers_running gauge\n");
                text.push_str(&format!("atproto_verifier_coverage_revoked_containers_running {}\n", running.len()));
            }
            text
        }
    };
    match &args.output {
        Some(path) => {
            if let Err(e) = write_replacing(path, rendered.as_bytes()) {
                print_undecided(format, &format!("{}: {e}", path.display()), "");
                return exit::UNDECIDED;
            }
            if args.format != CoverageFormat::Text {
                // The summary for people still goes to stdout.
                print!("{}", report::text(&args.target, rows, cut).lines().last().map(|l| format!("{l}\n")).unwrap_or_default());
            }
        }
        None if args.format == CoverageFormat::Json => print_json(&with_running_json(report::json(&args.target, rows, cut))),
        None => print!("{rendered}"),
    }
    let any = |statuses: &[Status]| rows.iter().any(|r| statuses.contains(&r.status));
    if any(&[Status::Unsigned, Status::Revoked, Status::Untrusted, Status::Rejected]) || running.is_some_and(|r| !r.is_empty()) {
        exit::REJECTED
    } else if any(&[Status::Undecided]) {
        exit::UNDECIDED
    } else {
        exit::ADMITTED
    }
}

/// `coverage node`: containerd's images decided from this node's knowledge (no request), and
/// the containers still running a revoked one. Reads only: nothing is removed.
fn node(args: &CoverageArgs, config: &crate::config::Config, policy: &Policy, remote: &crate::remote::Remote, now: i64) -> u8 {
    let format = if args.format == CoverageFormat::Json { Format::Json } else { Format::Text };
    let hint = "check containerd runs and that containerd_socket (or --address) is its [grpc] address; reading it needs root";
    let survey = match crate::node::Containerd::connect(&config.containerd_socket, Duration::from_secs(5))
        .and_then(|containerd| crate::node::survey(config, policy, &containerd, remote, now))
    {
        Ok(s) => s,
        Err(e) => {
            print_undecided(format, &e.to_string(), hint);
            return exit::UNDECIDED;
        }
    };
    for problem in &survey.problems {
        crate::log::warn(problem);
    }
    let running = crate::node::running_revoked(&survey, &crate::node::state::NodeState::load(&config.cache_dir));
    let rows: Vec<coverage::Row> = survey
        .images
        .iter()
        .map(|r| coverage::Row {
            item: coverage::Item {
                image: format!("{}@{}", r.image.name, r.image.digest),
                found: vec![format!("containerd {}", r.image.namespace)],
                signed_by: None,
            },
            status: r.status,
            decided: r.image.digest.clone(),
            reason: r.reason,
            message: r.message.clone(),
            rule: None,
            signers: Vec::new(),
        })
        .collect();
    emit(args, &rows, false, Some(&running))
}

/// The Pod list of `coverage cluster`: --pods (a file or stdin), else the API server of
/// --kubeconfig (or $KUBECONFIG's first file).
fn cluster_pods(args: &CoverageArgs, config: &crate::config::Config, remote: &crate::remote::Remote, now: i64) -> Result<Vec<u8>, String> {
    if let Some(pods) = &args.pods {
        return read_pods(pods);
    }
    let kubeconfig =
        args.kubeconfig.clone().or_else(|| std::env::var_os("KUBECONFIG").and_then(|v| std::env::split_paths(&v).next()).filter(|p| !p.as_os_str().is_empty()));
    let Some(kubeconfig) = kubeconfig else {
        return Err("`coverage cluster` needs the Pods: --pods FILE (or - for stdin), or --kubeconfig FILE".into());
    };
    let api = coverage::kubeconfig::api_server(&kubeconfig, args.context.as_deref()).map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let empty = Policy::empty();
    let options = SessionOptions { online: true, ..SessionOptions::default() };
    let session = Session::new(config, &empty, remote, now, Deadline::after(LISTING_BUDGET), &InFlight::default(), options);
    let http = session.http.as_ref().ok_or("no network client")?;
    coverage::kubeconfig::list_pods(http, &api)
}

fn read_pods(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let max = coverage::pods::MAX_PODS_BYTES;
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().lock().take(max as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("stdin: {e}"))?;
        return Ok(bytes);
    }
    crate::fsio::read_capped(path, max).map_err(|e| e.to_string())
}

/// Writes `bytes` to a temp file beside `path`, then renames it over `path`.
fn write_replacing(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
