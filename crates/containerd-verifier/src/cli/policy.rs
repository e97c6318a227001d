//! `policy check` and `policy explain`: see what a trust policy says before it decides pulls.

use std::path::{Path, PathBuf};

use atproto_sig_core::policy::{MAX_POLICY_BYTES, Policy, Rule};
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::syntax::format_datetime_micros;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::output::{Format, print_json, print_undecided};
use crate::clock::now_micros;
use crate::config::Config;
use crate::engine::PolicyError;
use crate::engine::request::{INSTALL_POLICY_HINT, load_policy};
use crate::exit;
use crate::fsio::read_capped;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a trust policy: exit 0 with a summary, or 1 with every error (file:line:column).
    Check(CheckArgs),
    /// Show which rule applies to an image, why, and which signers it would accept now.
    Explain(ExplainArgs),
    /// Decide a file of cases offline against a policy: exit 0 when every case decides as
    /// expected, 1 with a diff of each case that changed, 2 when the file cannot be read.
    Test(TestArgs),
}

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Case file (YAML): images, their recorded proof material, the outcome and reason expected.
    file: PathBuf,
    /// Decide the cases against this policy instead of the one the file names (review a change).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// config.toml to decide with, instead of the one the file names (else every default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// `json`: one object with every case, its expected and actual decision.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Policy file (default: `policy` from config.toml).
    file: Option<PathBuf>,
    /// config.toml to read the default policy path from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `json`: one object with every error and warning (file, line, column, message, hint).
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Image reference, e.g. atcr.io/alice.bsky.social/myapp:v1.
    image: String,
    /// Policy file (default: `policy` from config.toml).
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Explain as of this time (RFC 3339) instead of now.
    #[arg(long)]
    now: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(command: PolicyCommand) -> u8 {
    match command {
        PolicyCommand::Check(args) => check(&args),
        PolicyCommand::Explain(args) => explain(&args),
        PolicyCommand::Test(args) => super::policy_test::run(&args.file, args.policy.as_deref(), args.config.as_deref(), args.format),
    }
}

/// The policy path: the explicit one, else config.toml's.
fn policy_path(explicit: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, String> {
    match explicit {
        Some(path) => Ok(path.to_owned()),
        None => Config::load(config).map(|c| c.policy).map_err(|e| format!("config.toml: {e}")),
    }
}

fn check(args: &CheckArgs) -> u8 {
    let path = match policy_path(args.file.as_deref(), args.config.as_deref()) {
        Ok(path) => path,
        Err(e) => {
            print_undecided(args.format, &e, "fix config.toml, or name the policy file: atproto-verifier policy check FILE");
            return exit::UNDECIDED;
        }
    };
    let name = path.display().to_string();
    let text =
        match read_capped(&path, MAX_POLICY_BYTES).map_err(|e| e.to_string()).and_then(|b| String::from_utf8(b).map_err(|_| format!("{name}: not UTF-8 text")))
        {
            Ok(text) => text,
            Err(e) => {
                print_undecided(args.format, &e, INSTALL_POLICY_HINT);
                return exit::UNDECIDED;
            }
        };
    let issue_json =
        |i: &atproto_sig_core::policy::Issue| json!({"file": name, "line": i.at.line, "column": i.at.column, "message": i.message, "hint": i.hint});
    match Policy::parse(&text) {
        Ok(policy) => {
            let default = match &policy.default {
                Some(rule) => format!("default: {} ({})", rule.action.as_str(), requirement_summary(&policy, rule)),
                None => "no default: unmatched images are rejected".into(),
            };
            match args.format {
                Format::Json => print_json(&json!({
                    "file": name, "ok": true, "policies": policy.rules.len(), "trustedDids": policy.trusted.len(), "default": default,
                    "errors": [], "warnings": policy.warnings.iter().map(issue_json).collect::<Vec<_>>(),
                })),
                Format::Text => {
                    let warnings = if policy.warnings.is_empty() { String::new() } else { format!(", {} warning(s)", policy.warnings.len()) };
                    println!("{name}: ok — {} policies, {} trusted DIDs, {default}{warnings}", policy.rules.len(), policy.trusted.len());
                    for warning in &policy.warnings {
                        eprintln!("{}", warning.render(&name, "warning"));
                    }
                }
            }
            exit::ADMITTED
        }
        Err(errors) => {
            match args.format {
                Format::Json => print_json(&json!({"file": name, "ok": false, "errors": errors.iter().map(issue_json).collect::<Vec<_>>(), "warnings": []})),
                Format::Text => {
                    for error in &errors {
                        println!("{}", error.render(&name, "error"));
                    }
                    println!("{name}: {} error(s); no pull can be decided with this policy until they are fixed", errors.len());
                }
            }
            exit::REJECTED
        }
    }
}

fn requirement_summary(policy: &Policy, rule: &Rule) -> String {
    if !rule.require.signature {
        return "no signature required".into();
    }
    let set = policy.trusted_for(rule).len();
    format!("at least {} of {set} trusted signer(s)", rule.require.min_signatures)
}

/// The clock (`--now` or this node's), the image and the policy to explain with.
fn explain_inputs(args: &ExplainArgs) -> Result<(i64, ImageRef, Policy), u8> {
    let fail = |message: &str, hint: &str| {
        print_undecided(args.format, message, hint);
        Err(exit::UNDECIDED)
    };
    let now = match now_micros(args.now.as_deref()) {
        Ok(now) => now,
        Err(e) => return fail(&e.to_string(), ""),
    };
    let image = match ImageRef::parse(&args.image) {
        Ok(image) => image,
        Err(e) => return fail(&e.to_string(), "give a reference such as atcr.io/alice.bsky.social/myapp:v1"),
    };
    let path = match policy_path(args.policy.as_deref(), args.config.as_deref()) {
        Ok(path) => path,
        Err(e) => return fail(&e, "pass --policy FILE"),
    };
    let policy = match load_policy(&path) {
        Ok(policy) => policy,
        Err(PolicyError::Unreadable(e)) => return fail(&e, INSTALL_POLICY_HINT),
        Err(PolicyError::Invalid(errors)) => return fail(&errors.join("\n"), "run: atproto-verifier policy check"),
    };
    Ok((now, image, policy))
}

/// No rule applies: the pull is rejected (no-matching-rule).
fn print_unmatched(args: &ExplainArgs, image: &ImageRef, skipped_rules: &[&Rule], skipped: Vec<serde_json::Value>) {
    match args.format {
        Format::Json => print_json(&json!({"image": image.scope_name(), "rule": null, "skipped": skipped, "outcome": "reject", "reason": "no-matching-rule"})),
        Format::Text => {
            println!("image:   {} (matched as {})", args.image, image.scope_name());
            for r in skipped_rules {
                println!("skipped: {} (line {}): scope {:?} does not match", r.name, r.at.line, r.scope);
            }
            println!("applies: nothing — no policy matches and the file has no `default`, so the pull is rejected (no-matching-rule)");
        }
    }
}

fn explain(args: &ExplainArgs) -> u8 {
    let (now, image, policy) = match explain_inputs(args) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let matched = policy.rule_for(&image);
    let skipped: Vec<_> = matched.skipped.iter().map(|r| json!({"name": r.name, "scope": r.scope, "line": r.at.line})).collect();
    let Some(rule) = matched.rule else {
        print_unmatched(args, &image, &matched.skipped, skipped);
        return exit::ADMITTED;
    };
    let trusted = policy.trusted_for(rule);
    let (accepted, outside): (Vec<&atproto_sig_core::policy::TrustedDid>, Vec<_>) = trusted.into_iter().partition(|t| t.is_valid_at(now));
    match args.format {
        Format::Json => print_json(&json!({
            "image": image.scope_name(),
            "rule": {"name": rule.name, "scope": rule.scope, "line": rule.at.line, "default": matched.is_default, "action": rule.action.as_str()},
            "skipped": skipped,
            "requires": {"signature": rule.require.signature, "minSignatures": rule.require.min_signatures},
            "acceptedNow": accepted.iter().map(|t| json!({"did": t.did, "name": t.name, "window": t.window()})).collect::<Vec<_>>(),
            "outsideWindow": outside.iter().map(|t| json!({"did": t.did, "name": t.name, "window": t.window()})).collect::<Vec<_>>(),
            "now": format_datetime_micros(now),
        })),
        Format::Text => {
            println!("image:    {} (matched as {})", args.image, image.scope_name());
            for r in &matched.skipped {
                println!("skipped:  {} (line {}): scope {:?} does not match", r.name, r.at.line, r.scope);
            }
            if matched.is_default {
                println!("applies:  the default rule (line {}): no policy scope matches", rule.at.line);
            } else {
                println!("applies:  {} (line {}): scope {:?} is the first match in file order", rule.name, rule.at.line, rule.scope);
            }
            println!("requires: {}; action {}", requirement_summary(&policy, rule), rule.action.as_str());
            if rule.require.signature {
                println!("accepts now ({}):", format_datetime_micros(now));
                if accepted.is_empty() {
                    println!("  nobody — every trusted DID is outside its validity window, so this image cannot be admitted");
                }
                for t in &accepted {
                    println!("  {}{} — {}", t.did, t.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(), t.window());
                }
                if !outside.is_empty() {
                    println!("outside their window now:");
                    for t in &outside {
                        println!("  {}{} — {}", t.did, t.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(), t.window());
                    }
                }
            }
        }
    }
    exit::ADMITTED
}
