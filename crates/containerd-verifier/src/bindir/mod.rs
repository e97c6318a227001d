//! The containerd image-verifier contract (`io.containerd.image-verifier.v1.bindir`):
//! containerd execs us with `-name <ref> -digest <digest> -stdin-media-type <type>` (single
//! dash, so parsed by hand; unknown flags such as `-operation` are tolerated), writes one
//! descriptor on stdin, reads our stdout (the reason shown to the user) and our exit code
//! (0 admits). The engine keeps the decision's deadline itself; the [`watchdog`] is the last
//! guard: should anything still overrun, it prints `deadline-exceeded` and exits before
//! containerd's timeout would kill us with an unhelpful error. Decisions are recorded by
//! [`audit`].

pub(crate) mod audit;
mod watchdog;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use atproto_sig_core::policy::Outcome;
use serde_json::{Value as Json, json};

use crate::config::{Config, ConfigError};
use crate::engine::{self, Failure, RequestError};
use crate::exit;
use crate::limits::NodeLimits;
use crate::remote::{Deadline, InFlight};

/// Longest stdout line (containerd reads up to 32 KiB; people read one line).
pub const MAX_REASON: usize = NodeLimits::DEFAULT.reason_line;

pub const DESCRIPTOR_MEDIA_TYPE: &str = "application/vnd.oci.descriptor.v1+json";
pub const INPUT_MEDIA_TYPE: &str = "application/vnd.containerd.image-verifier.input.v1+json";

/// True when argv looks like containerd's (`-name …`), not like an operator command.
pub fn is_bindir_invocation(args: &[OsString]) -> bool {
    args.get(1).and_then(|a| a.to_str()).is_some_and(|a| a.starts_with('-') && !a.starts_with("--") && a != "-h" && a != "-V")
}

/// containerd's arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    pub name: Option<String>,
    pub digest: Option<String>,
    pub stdin_media_type: Option<String>,
    pub operation: Option<String>,
    pub ignored: Vec<String>,
}

/// Parses `-flag value` / `--flag value` / `-flag=value`; unknown flags are kept aside.
pub fn parse_args(args: &[String]) -> Invocation {
    let mut out = Invocation::default();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        i += 1;
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            out.ignored.push(arg.clone());
            continue;
        };
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (flag, None),
        };
        let value = match inline {
            Some(v) => Some(v),
            None if args.get(i).is_some_and(|next| !next.starts_with('-')) => {
                i += 1;
                args.get(i - 1).cloned()
            }
            None => None,
        };
        match flag {
            "name" => out.name = value,
            "digest" => out.digest = value,
            "stdin-media-type" => out.stdin_media_type = value,
            "operation" => out.operation = value,
            other => out.ignored.push(other.to_owned()),
        }
    }
    out
}

/// One printable line of at most `MAX_REASON` bytes.
pub fn reason_line(code: &str, message: &str) -> String {
    let mut line: String = format!("{code}: {message}").chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.len() > MAX_REASON {
        let mut cut = MAX_REASON - 3;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

/// Prints the decision line once, even if the watchdog and the main path race.
struct Answer {
    given: AtomicBool,
}

impl Answer {
    fn give(&self, code: &str, message: &str) -> bool {
        if self.given.swap(true, Ordering::SeqCst) {
            return false;
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", reason_line(code, message));
        let _ = stdout.flush();
        true
    }
}

/// Why the containerd entry could not even ask the engine: config.toml is unusable (every
/// pull is refused until it is fixed), or containerd's arguments or stdin are.
#[derive(Debug, thiserror::Error)]
enum EntryFailure {
    #[error("{0} — fix it and run `atproto-verifier policy check`")]
    Config(ConfigError),
    #[error("{0}")]
    Request(RequestError),
}

impl EntryFailure {
    fn reason(&self) -> atproto_sig_core::Reason {
        match self {
            EntryFailure::Config(_) => atproto_sig_core::Reason::ConfigInvalid,
            EntryFailure::Request(e) => Failure::Request(e.clone()).reason(),
        }
    }
}

/// Runs the containerd entry point; returns the exit code.
pub fn run(raw: &[String]) -> u8 {
    let started = Instant::now();
    let invocation = parse_args(raw.get(1..).unwrap_or_default());
    let answer = Arc::new(Answer { given: AtomicBool::new(false) });
    let undecided = |failure: EntryFailure| {
        answer.give(failure.reason().code(), &failure.to_string());
        exit::UNDECIDED
    };
    let config = match Config::load(None) {
        Ok(c) => c,
        Err(e) => return undecided(EntryFailure::Config(e)),
    };
    let in_flight = InFlight::default();
    watchdog::start(&config, &invocation, Arc::clone(&answer), in_flight.clone());
    let (Some(name), Some(digest)) = (invocation.name.clone(), invocation.digest.clone()) else {
        return undecided(EntryFailure::Request(RequestError::MissingArguments));
    };
    match invocation.stdin_media_type.as_deref() {
        None | Some(DESCRIPTOR_MEDIA_TYPE) | Some(INPUT_MEDIA_TYPE) => {}
        Some(other) => crate::log::warn(&format!("unknown -stdin-media-type {other:?}: reading it as a descriptor")),
    }
    let limits = NodeLimits::DEFAULT;
    let mut payload = Vec::new();
    if std::io::stdin().lock().take(limits.descriptor as u64 + 1).read_to_end(&mut payload).is_err() {
        return undecided(EntryFailure::Request(RequestError::Stdin));
    }
    // Drain anything beyond the cap so containerd's writer never sees a broken pipe.
    let _ = std::io::copy(&mut std::io::stdin().lock().take(limits.stdin_drain as u64), &mut std::io::sink());
    let policy = engine::request::load_policy(&config.policy);
    let request = engine::Request {
        reference: &name,
        digest: Some(&digest),
        descriptor: Some(&payload),
        policy: policy.as_ref(),
        config: &config,
        now_micros: crate::clock::now_micros(None).unwrap_or(0),
        deadline: Deadline::after(config.budget.0.saturating_sub(started.elapsed())),
        in_flight: &in_flight,
    };
    let result = engine::decide(&request, &crate::remote::system::system(&config));
    for note in &result.notes {
        crate::log::info(note);
    }
    let decision = &result.decision;
    let code = exit::code(result.class());
    let shown_code = if decision.outcome == Outcome::AuditAdmit { "audit" } else { decision.reason.code() };
    let shown = if decision.outcome == Outcome::AuditAdmit { decision.message.trim_start_matches("audit: ").to_owned() } else { decision.message.clone() };
    if !answer.give(shown_code, &shown) {
        // The watchdog already answered and is exiting.
        return exit::UNDECIDED;
    }
    let mut record = engine::decision_record(&name, &digest, decision, result.requests, started.elapsed());
    record.insert("exit".into(), json!(code));
    record.insert("time".into(), json!(audit::now_string()));
    record.insert("operation".into(), json!(invocation.operation));
    audit::record(&config, Json::Object(record));
    // A pull decided revoked: the same digest already in the store goes too (on_revoke),
    // within what is left of the budget (at most 1 s), after the answer is given.
    if decision.reason == atproto_sig_core::Reason::RecordDeleted
        && decision.outcome == Outcome::Reject
        && config.on_revoke == crate::config::OnRevoke::RemoveImage
        && config.containerd_socket.exists()
    {
        let left = config.budget.0.saturating_sub(started.elapsed()).min(std::time::Duration::from_secs(1));
        if !left.is_zero()
            && let Err(e) = crate::node::remove_target(&config, &digest, left)
        {
            crate::log::warn(&format!("node: {e}"));
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_containerd_argv_and_tolerates_unknown_flags() {
        let inv = parse_args(&strings(&["-name", "127.0.0.1:5000/myapp:v1", "-digest", "sha256:0855", "-stdin-media-type", DESCRIPTOR_MEDIA_TYPE]));
        assert_eq!(inv.name.as_deref(), Some("127.0.0.1:5000/myapp:v1"));
        assert_eq!(inv.digest.as_deref(), Some("sha256:0855"));
        let inv = parse_args(&strings(&["-operation", "pull", "-future-flag", "x", "-name=a", "--digest", "d", "-bare"]));
        assert_eq!((inv.name.as_deref(), inv.digest.as_deref(), inv.operation.as_deref()), (Some("a"), Some("d"), Some("pull")));
        assert_eq!(inv.ignored, vec!["future-flag".to_owned(), "bare".to_owned()]);
        assert!(is_bindir_invocation(&["x".into(), "-name".into()]));
        assert!(!is_bindir_invocation(&["x".into(), "--help".into()]));
        assert!(!is_bindir_invocation(&["x".into(), "verify".into()]));
    }

    #[test]
    fn reason_lines_are_short_and_single() {
        let line = reason_line("verified", &"é\n".repeat(1000));
        assert!(line.len() <= MAX_REASON && !line.contains('\n'));
    }
}
