//! `verify IMAGE_REF`: the same decision containerd gets, for CI and operators.

use std::path::PathBuf;
use std::time::Instant;

use atproto_sig_core::policy::{Decision, Outcome};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::cli::output::{Format, load_config, print_json, print_undecided};
use crate::clock::now_micros;
use crate::engine::request::load_policy;
use crate::engine::{self, Failure, PolicyError, Request, outcome_label};
use crate::exit;
use crate::limits::printable;
use crate::remote::{Deadline, InFlight};

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

pub fn run(args: VerifyArgs) -> u8 {
    let started = Instant::now();
    let text_format = if args.format == VerifyFormat::Json { Format::Json } else { Format::Text };
    let mut config = match load_config(args.config.as_deref(), text_format) {
        Ok(c) => c,
        Err(code) => return code,
    };
    config.offline |= args.offline;
    if let Some(policy) = &args.policy {
        config.policy.clone_from(policy);
    }
    let policy = load_policy(&config.policy);
    let request = Request {
        reference: &args.image,
        digest: args.digest.as_deref(),
        descriptor: None,
        policy: policy.as_ref(),
        config: &config,
        now_micros: now_micros(None).unwrap_or(0),
        deadline: Deadline::after(config.budget.0),
        in_flight: &InFlight::default(),
    };
    let answer = engine::decide(&request, &crate::remote::system::system(&config));
    if let Some(failure) = &answer.refused {
        let message = match failure {
            Failure::Policy(PolicyError::Unreadable(e)) => e.clone(),
            Failure::Policy(PolicyError::Invalid(errors)) => errors.join("\n"),
            other => other.to_string(),
        };
        print_undecided(text_format, &message, answer.hint());
        return exit::UNDECIDED;
    }
    let code = exit::code(answer.class());
    let Some(image) = answer.image else { return exit::UNDECIDED };
    let decision = &answer.decision;
    let digest = image.digest.clone().unwrap_or_default();
    let mut record = engine::decision_record(&args.image, &digest, decision, answer.requests, started.elapsed());
    record.insert("exit".into(), json!(code));
    record.insert("image".into(), json!(args.image));
    let result = serde_json::Value::Object(record);
    match args.format {
        VerifyFormat::Json => print_json(&result),
        VerifyFormat::Sarif => print_json(&sarif(&image.to_string(), decision)),
        VerifyFormat::Text => {
            // Messages and notes carry remote words (a PDS's error, a handle, a record field):
            // printed with control characters escaped, so no server can forge a line of this log.
            println!("{}: {} ({})", outcome_label(decision.outcome), printable(&decision.message), decision.reason.code());
            println!("  image:  {}@{digest}", image.scope_name());
            println!("  rule:   {}", printable(decision.rule.as_deref().unwrap_or("none")));
            for note in &answer.notes {
                println!("  note:   {}", printable(note));
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
    let result = json!({
        "ruleId": decision.reason.code(),
        "level": level,
        "kind": if decision.outcome == Outcome::Admit { "pass" } else { "fail" },
        "message": {"text": decision.message},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact}}}],
        "properties": {"rule": decision.rule, "signers": decision.signers},
    });
    engine::sarif_log(&[decision.reason.code()], vec![result])
}
