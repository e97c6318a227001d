//! How a decision is reported: its class (admitted, rejected, undecided), labels, and the JSON
//! record (audit log lines, `verify --format json`, a server's log). Exit codes and HTTP
//! answers are the adapters' own.

use atproto_sig_core::Reason;
use atproto_sig_core::policy::{Decision, Outcome};

use super::Requests;

/// What a decision amounts to for a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Admitted (also by an audit-only rule).
    Admitted,
    /// Rejected by the proof or the policy.
    Rejected,
    /// Could not decide: network, deadline, configuration, or an unusable request.
    Undecided,
}

impl Class {
    /// The class of `decision`.
    pub fn of(decision: &Decision) -> Class {
        match decision.outcome {
            Outcome::Admit | Outcome::AuditAdmit => Class::Admitted,
            Outcome::Reject if is_undecided(decision.reason) => Class::Undecided,
            Outcome::Reject => Class::Rejected,
        }
    }

    /// A short word for logs and metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Class::Admitted => "admitted",
            Class::Rejected => "rejected",
            Class::Undecided => "undecided",
        }
    }
}

/// The JSON record of a decision: one audit-log line, and `verify --format json`.
pub fn decision_record(
    name: &str,
    digest: &str,
    decision: &Decision,
    requests: Requests,
    elapsed: std::time::Duration,
) -> serde_json::Map<String, serde_json::Value> {
    let value = serde_json::json!({
        "name": name,
        "digest": digest,
        "admitted": decision.outcome != Outcome::Reject,
        "outcome": outcome_label(decision.outcome),
        "reason": decision.reason.code(),
        "message": decision.message,
        "rule": decision.rule,
        "signers": decision.signers,
        "requests": requests.identity,
        "registryRequests": requests.registry,
        "durationMs": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// True for reasons that mean "could not decide" rather than "rejected".
pub fn is_undecided(reason: Reason) -> bool {
    matches!(reason, Reason::NetworkError | Reason::RateLimited | Reason::DeadlineExceeded | Reason::ConfigInvalid | Reason::InvalidRequest)
}

/// A short label for an outcome.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Admit => "admitted",
        Outcome::AuditAdmit => "admitted (audit)",
        Outcome::Reject => "rejected",
    }
}

/// A SARIF 2.1.0 log of one run: a rule per reason code in `reasons`, and `results` (one per
/// image, made by the caller). `verify --format sarif` and `coverage --format sarif` share it.
pub fn sarif_log(reasons: &[&str], results: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "atproto-verifier",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://atproto.com/specs/repository",
                "rules": reasons.iter().map(|r| serde_json::json!({"id": r, "shortDescription": {"text": r}})).collect::<Vec<_>>(),
            }},
            "results": results,
        }],
    })
}
