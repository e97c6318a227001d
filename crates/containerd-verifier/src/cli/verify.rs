//! `verify IMAGE_REF`: the same decision containerd gets, for CI and operators.

use std::path::PathBuf;
use std::time::Instant;

use atproto_sig_core::policy::{Decision, Outcome, Policy};
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::verify::is_valid_digest;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::cache::Cache;
use crate::config::Config;
use crate::exit;
use crate::net::{Deadline, Http};
use crate::output::{Format, print_config_invalid, print_json, print_undecided};
use crate::pipeline::{Context, outcome_label};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum VerifyFormat {
    #[default]
    Text,
    Json,
    /// SARIF 2.1.0, for code-scanning dashboards.
    Sarif,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Image reference; with a tag, the digest is resolved through the registry first.
    image: String,
    /// Verify this digest instead of resolving the tag.
    #[arg(long)]
    digest: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Use this trust policy instead of the one config.toml names (CI checks a policy in review).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Make no network call (cache, bundles and attached proofs only).
    #[arg(long)]
    offline: bool,
    #[arg(long, value_enum, default_value_t)]
    format: VerifyFormat,
}

/// Runs the pipeline with a fresh client (unless offline) and the configured cache.
/// Requests a decision made: to PLC directories, PDSes and handle hosts; and to the registry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requests {
    pub identity: usize,
    pub registry: usize,
}

/// Returns the decision, diagnostic notes and the requests made.
pub fn decide(config: &Config, policy: &Policy, image: &ImageRef, digest: &str, started: Instant) -> (Decision, Vec<String>, Requests) {
    let deadline = Deadline::after(config.budget.0.saturating_sub(started.elapsed()));
    // Offline: no client for PLC, PDS or handles is built, so none of them can be asked. The
    // registry client exists either way (for attached proofs).
    let http = (!config.offline).then(|| Http::new(config.connect_timeout.0, config.request_timeout.0, deadline));
    let registry = Http::new(config.connect_timeout.0, config.request_timeout.0, deadline);
    let cache = Cache::new(&config.cache_dir);
    let dns = |name: &str| crate::dns::lookup_txt(name, config.connect_timeout.0.min(deadline.remaining()));
    let context = Context::new(config, policy, &cache, http.as_ref(), Some(&registry), &dns, crate::input::now_micros(None).unwrap_or(0));
    let decision = context.decide(image, digest);
    let requests = Requests { identity: http.as_ref().map_or(0, Http::request_count), registry: registry.request_count() };
    (decision, context.notes.into_inner(), requests)
}

pub fn run(args: VerifyArgs) -> u8 {
    let started = Instant::now();
    let text_format = if args.format == VerifyFormat::Json { Format::Json } else { Format::Text };
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            print_config_invalid(text_format, &e.to_string());
            return exit::UNDECIDED;
        }
    };
    config.offline |= args.offline;
    if let Some(policy) = &args.policy {
        config.policy.clone_from(policy);
    }
    let image = match ImageRef::parse(&args.image) {
        Ok(image) => image,
        Err(e) => {
            print_undecided(text_format, &e.to_string(), "");
            return exit::UNDECIDED;
        }
    };
    let digest = match args.digest.clone().or_else(|| image.digest.clone()) {
        Some(d) if is_valid_digest(&d) => d,
        Some(d) => {
            print_undecided(text_format, &format!("{d:?} is not a sha256 digest"), "");
            return exit::UNDECIDED;
        }
        None => match crate::registry::resolve_tag(&config, &image, Deadline::after(config.budget.0)) {
            Ok(d) => d,
            Err(e) => {
                print_undecided(text_format, &format!("cannot resolve {} to a digest: {e}", args.image), "pass the digest: IMAGE@sha256:… or --digest");
                return exit::UNDECIDED;
            }
        },
    };
    let policy = match super::policy::load_policy(&config.policy) {
        Ok(p) => p,
        Err(super::policy::PolicyLoadError::Unreadable(e)) => {
            print_undecided(text_format, &e, super::policy::INSTALL_POLICY_HINT);
            return exit::UNDECIDED;
        }
        Err(super::policy::PolicyLoadError::Invalid(errors)) => {
            print_undecided(text_format, &errors.join("\n"), "run: atproto-verifier policy check");
            return exit::UNDECIDED;
        }
    };
    let (decision, notes, requests) = decide(&config, &policy, &image, &digest, started);
    let code = crate::pipeline::exit_code(&decision);
    let mut record = crate::pipeline::decision_record(&args.image, &digest, &decision, (requests.identity, requests.registry), started.elapsed());
    record.insert("image".into(), json!(args.image));
    let result = serde_json::Value::Object(record);
    match args.format {
        VerifyFormat::Json => print_json(&result),
        VerifyFormat::Sarif => print_json(&sarif(&ImageRef { digest: Some(digest.clone()), ..image.clone() }.to_string(), &decision)),
        VerifyFormat::Text => {
            println!("{}: {} ({})", outcome_label(decision.outcome), decision.message, decision.reason.code());
            println!("  image:  {}@{digest}", image.scope_name());
            println!("  rule:   {}", decision.rule.as_deref().unwrap_or("none"));
            for note in &notes {
                println!("  note:   {note}");
            }
        }
    }
    code
}

/// SARIF 2.1.0 for one decision; the artifact is the canonical image reference with its digest.
fn sarif(artifact: &str, decision: &Decision) -> serde_json::Value {
    let level = match decision.outcome {
        Outcome::Admit => "none",
        Outcome::AuditAdmit => "warning",
        Outcome::Reject => "error",
    };
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "atproto-verifier",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://atproto.com/specs/repository",
                "rules": [{"id": decision.reason.code(), "shortDescription": {"text": decision.reason.code()}}],
            }},
            "results": [{
                "ruleId": decision.reason.code(),
                "level": level,
                "kind": if decision.outcome == Outcome::Admit { "pass" } else { "fail" },
                "message": {"text": decision.message},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact}}}],
                "properties": {"rule": decision.rule, "signers": decision.signers},
            }],
        }],
    })
}
