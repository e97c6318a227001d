//! The last guard of containerd's contract: the engine keeps its own deadline, but should a
//! decision still overrun (a stuck disk, a starved CPU), containerd would kill us at
//! `per_verifier_timeout` with an unhelpful error. So a thread waits for the budget plus a
//! margin, then answers `deadline-exceeded` with what the decision was waiting for (read from
//! its [`InFlight`] handle), records it, and exits the process.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Answer, Invocation, audit};
use crate::config::Config;
use crate::exit;
use crate::remote::InFlight;

/// Past the budget, how long the engine may still take before the watchdog answers.
const MARGIN: Duration = Duration::from_millis(300);

/// The answer when no decision came within `budget`: it blames the network only when a request
/// was in flight; otherwise the time went to work on this node.
pub(super) fn no_answer_message(name: &str, budget: Duration, waiting_for: Option<&str>) -> String {
    match waiting_for {
        Some(origin) => format!(
            "no decision for {name} within the {budget:?} budget: still waiting for {origin} — check that it is reachable, or raise `budget` in config.toml"
        ),
        None => format!(
            "no decision for {name} within the {budget:?} budget, with no request in flight: the time went to work on this node (CPU or disk) — check its load, or raise `budget` in config.toml"
        ),
    }
}

/// Starts the watchdog for one containerd invocation.
pub(super) fn start(config: &Config, invocation: &Invocation, answer: Arc<Answer>, in_flight: InFlight) {
    let budget = config.budget.0;
    let name = invocation.name.clone().unwrap_or_default();
    let digest = invocation.digest.clone().unwrap_or_default();
    let audit_config = config.clone();
    std::thread::spawn(move || {
        std::thread::sleep(budget + MARGIN);
        let message = no_answer_message(&name, budget, in_flight.origin().as_deref());
        let code = atproto_sig_core::Reason::DeadlineExceeded.code();
        if answer.give(code, &message) {
            audit::record(
                &audit_config,
                json!({"time": audit::now_string(), "name": name, "digest": digest, "outcome": "undecided", "reason": code, "message": message}),
            );
            std::process::exit(i32::from(exit::UNDECIDED));
        }
    });
}
