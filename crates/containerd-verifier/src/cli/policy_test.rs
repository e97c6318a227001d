//! `policy test FILE`: the adapter around [`crate::policy_cases`]: reads the case file, the
//! policy and the config, runs every case, prints each result (a diff for each case that
//! changed) and returns the exit code.

use std::path::{Path, PathBuf};

use atproto_sig_core::syntax::format_datetime_micros;
use serde_json::json;

use crate::cli::output::{Format, print_json, print_undecided};
use crate::clock::now_micros;
use crate::config::Config;
use crate::engine::PolicyError;
use crate::engine::request::load_policy;
use crate::exit;
use crate::fsio::read_capped;
use crate::limits::printable;
use crate::policy_cases::{self, CaseResult, MAX_CASE_FILE_BYTES};

pub fn run(file: &Path, policy_flag: Option<&Path>, config_flag: Option<&Path>, format: Format) -> u8 {
    let name = file.display().to_string();
    let fail = |message: &str, hint: &str| {
        print_undecided(format, message, hint);
        exit::UNDECIDED
    };
    let text = match read_capped(file, MAX_CASE_FILE_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|b| String::from_utf8(b).map_err(|_| format!("{name}: not UTF-8 text")))
    {
        Ok(text) => text,
        Err(e) => return fail(&e, "give the case file: atproto-verifier policy test FILE (see packaging/policies/tests/ for examples)"),
    };
    let dir = file.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
    let cases = match policy_cases::parse(&text, &name, &dir) {
        Ok(cases) => cases,
        Err(e) => return fail(&e.to_string(), "fix the case file: each problem above has its line and column"),
    };
    let Some(policy_path) = policy_flag.map(Path::to_owned).or_else(|| cases.policy.clone()) else {
        return fail(&format!("{name} names no `policy:` and no --policy was given"), "add `policy: FILE` to the case file, or pass --policy FILE");
    };
    let policy = match load_policy(&policy_path) {
        Ok(policy) => policy,
        Err(PolicyError::Unreadable(e)) => return fail(&e, "check the policy path (relative paths in the case file are relative to it)"),
        Err(PolicyError::Invalid(errors)) => return fail(&errors.join("\n"), "run: atproto-verifier policy check FILE"),
    };
    let config = match config_flag.or(cases.config.as_deref()) {
        Some(path) => match Config::load(Some(path)) {
            Ok(config) => config,
            Err(e) => return fail(&e.to_string(), "fix config.toml (every setting is documented in packaging/config.toml)"),
        },
        None => Config::default(),
    };
    let now = now_micros(None).unwrap_or(0);
    let results = policy_cases::run(&cases, &policy, &config, now);
    let passed = results.iter().filter(|r| r.passed()).count();
    let policy_name = policy_path.display().to_string();
    match format {
        Format::Json => print_json(&json!({
            "file": name,
            "policy": policy_name,
            "passed": passed,
            "failed": results.len() - passed,
            "cases": cases.cases.iter().zip(&results).map(|(case, result)| case_json(case, result)).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let clock = cases.now.map(|n| format!(" (now {})", format_datetime_micros(n))).unwrap_or_default();
            println!("{name}: {} case(s) against {policy_name}{clock}", results.len());
            for (case, result) in cases.cases.iter().zip(&results) {
                print_case(case, result);
            }
            let failed = results.len() - passed;
            if failed == 0 {
                println!("{} case(s): all passed", results.len());
            } else {
                println!(
                    "{} case(s): {passed} passed, {failed} failed — the policy now decides these images differently: if that is intended, update the cases' `expect`",
                    results.len()
                );
            }
        }
    }
    if passed == results.len() { exit::ADMITTED } else { exit::REJECTED }
}

fn summary(outcome: &str, reason: &str, rule: Option<&str>) -> String {
    format!("{outcome} ({reason}, rule {})", rule.unwrap_or("none"))
}

fn print_case(case: &policy_cases::Case, result: &CaseResult) {
    let name = printable(&case.name);
    match result {
        CaseResult::Passed(actual) => println!("ok    {name}: {}", summary(actual.outcome.word(), &actual.reason, actual.rule.as_deref())),
        CaseResult::Failed { actual, differences } => {
            println!("FAIL  {name} (line {})", case.line);
            for (field, expected, got) in differences {
                println!("  - {field}: {}", printable(expected));
                println!("  + {field}: {}", printable(got));
            }
            println!("    now:   {}", summary(actual.outcome.word(), &actual.reason, actual.rule.as_deref()));
            println!("    why:   {}", printable(&actual.message));
        }
        CaseResult::Error(e) => {
            println!("ERROR {name} (line {}): {}", case.line, printable(e));
        }
    }
}

fn case_json(case: &policy_cases::Case, result: &CaseResult) -> serde_json::Value {
    let expected = json!({
        "outcome": case.expect.outcome.word(), "reason": case.expect.reason, "rule": case.expect.rule, "signers": case.expect.signers,
    });
    let actual =
        |a: &policy_cases::Actual| json!({"outcome": a.outcome.word(), "reason": a.reason, "rule": a.rule, "signers": a.signers, "message": a.message});
    let (status, actual, differences, error) = match result {
        CaseResult::Passed(a) => ("passed", actual(a), Vec::new(), None),
        CaseResult::Failed { actual: a, differences } => {
            ("failed", actual(a), differences.iter().map(|(f, e, g)| json!({"field": f, "expected": e, "actual": g})).collect(), None)
        }
        CaseResult::Error(e) => ("error", serde_json::Value::Null, Vec::new(), Some(e.clone())),
    };
    json!({
        "name": case.name, "line": case.line, "image": case.image, "digest": case.digest, "status": status,
        "expected": expected, "actual": actual, "differences": differences, "error": error,
    })
}
