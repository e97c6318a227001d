//! How a decision is reported: exit code, labels, the JSON record (audit log, `verify --format json`).

use atproto_sig_core::Reason;
use atproto_sig_core::policy::{Decision, Outcome};

/// The JSON record of a decision: one audit-log line, and `verify --format json`.
pub fn decision_record(
    name: &str,
    digest: &str,
    decision: &Decision,
    requests: (usize, usize),
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
        "requests": requests.0,
        "registryRequests": requests.1,
        "durationMs": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "exit": exit_code(decision),
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The exit code of a decision: 0 admitted (also in audit mode), 1 rejected, 2 undecided.
pub fn exit_code(decision: &Decision) -> u8 {
    match decision.outcome {
        Outcome::Admit | Outcome::AuditAdmit => crate::exit::ADMITTED,
        Outcome::Reject if is_undecided(decision.reason) => crate::exit::UNDECIDED,
        Outcome::Reject => crate::exit::REJECTED,
    }
}

/// True for reasons that mean "could not decide" (exit 2) rather than "rejected" (exit 1).
pub fn is_undecided(reason: Reason) -> bool {
    matches!(reason, Reason::NetworkError | Reason::DeadlineExceeded | Reason::ConfigInvalid | Reason::InvalidRequest)
}

/// A short label for an outcome.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Admit => "admitted",
        Outcome::AuditAdmit => "admitted (audit)",
        Outcome::Reject => "rejected",
    }
}
