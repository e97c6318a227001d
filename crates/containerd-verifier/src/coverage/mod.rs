//! `coverage TARGET`: which images of a registry namespace, an ATProto identity or a cluster are
//! signed under the policy. Each image is decided by the engine exactly as a pull would be
//! (`engine::decide`), a bounded number at a time; a failure is a row of the report, never the
//! end of it. Listing is unsigned (a registry's catalog, a PDS's listRecords, the API server's
//! Pods): it only says what to decide.

pub mod kubeconfig;
mod list;
pub mod pods;
pub mod report;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use atproto_sig_core::Reason;
use atproto_sig_core::policy::{Outcome, Policy};

pub use list::{Target, list};

use crate::config::Config;
use crate::engine::{self, Class, Request};
use crate::remote::{Deadline, InFlight, Remote};

/// Most images in one report (a listing beyond it is cut, and the report says so).
pub const MAX_IMAGES: usize = 10_000;
/// Most decisions at once.
pub const MAX_JOBS: usize = 32;

/// One image to decide, and where the listing found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The reference to decide (with its digest when the listing knew it).
    pub image: String,
    /// Where it was found: `pod ns/name`, a record's at:// URI, a tag.
    pub found: Vec<String>,
    /// The DID whose record names this image, when the listing is an identity's records: a
    /// rejection for want of a trusted record then means an untrusted signer, not no signature.
    pub signed_by: Option<String>,
}

/// What coverage calls an image's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Admitted: signed by a trusted signer, or no signature required.
    Admitted,
    /// Admitted by an audit-only rule that would reject it.
    Audited,
    /// No record names it.
    Unsigned,
    /// Its record was deleted.
    Revoked,
    /// Signed, but not by a signer the policy trusts now (or too few of them).
    Untrusted,
    /// Rejected for another reason (a bad proof, a digest mismatch…).
    Rejected,
    /// Could not be decided (network, deadline, configuration).
    Undecided,
}

impl Status {
    pub const ALL: [Status; 7] = [Status::Admitted, Status::Audited, Status::Unsigned, Status::Revoked, Status::Untrusted, Status::Rejected, Status::Undecided];

    pub fn word(self) -> &'static str {
        match self {
            Status::Admitted => "admitted",
            Status::Audited => "audited",
            Status::Unsigned => "unsigned",
            Status::Revoked => "revoked",
            Status::Untrusted => "untrusted",
            Status::Rejected => "rejected",
            Status::Undecided => "undecided",
        }
    }

    /// The state of a decision with `reason`, for an image `signed_by` someone (if known).
    pub(crate) fn of(outcome: Outcome, class: Class, reason: Reason, signed_by: Option<&str>) -> Status {
        if class == Class::Undecided {
            return Status::Undecided;
        }
        if outcome == Outcome::Admit {
            return Status::Admitted;
        }
        let status = match reason {
            Reason::RecordNotFound | Reason::NoMatchingRule if signed_by.is_some() => Status::Untrusted,
            Reason::RecordNotFound | Reason::NoMatchingRule | Reason::DidUnresolved | Reason::IdentityUnresolved => Status::Unsigned,
            Reason::RecordDeleted => Status::Revoked,
            Reason::UntrustedSigner | Reason::SignerExpired | Reason::TooFewSignatures => Status::Untrusted,
            _ => Status::Rejected,
        };
        if outcome == Outcome::AuditAdmit { Status::Audited } else { status }
    }
}

/// One image's row of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub item: Item,
    pub status: Status,
    /// The canonical image with the digest decided (empty when the reference was refused).
    pub decided: String,
    pub reason: &'static str,
    pub message: String,
    pub rule: Option<String>,
    pub signers: Vec<String>,
}

/// Decides every item, `jobs` at a time, calling `progress(done, total)` after each.
pub fn decide_all(
    items: &[Item],
    jobs: usize,
    config: &Config,
    policy: &Policy,
    remote: &Remote,
    now: i64,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<Row> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let rows: Mutex<Vec<Option<Row>>> = Mutex::new(vec![None; items.len()]);
    let workers = jobs.clamp(1, MAX_JOBS).min(items.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let row = decide_one(item, config, policy, remote, now);
                    if let Some(slot) = rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(index) {
                        *slot = Some(row);
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, items.len());
                }
            });
        }
    });
    rows.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).into_iter().flatten().collect()
}

fn decide_one(item: &Item, config: &Config, policy: &Policy, remote: &Remote, now: i64) -> Row {
    let request = Request {
        reference: &item.image,
        digest: None,
        descriptor: None,
        policy: Ok(policy),
        config,
        now_micros: now,
        deadline: Deadline::after(config.budget.0),
        in_flight: &InFlight::default(),
    };
    let answer = engine::decide(&request, remote);
    let decision = &answer.decision;
    Row {
        item: item.clone(),
        status: Status::of(decision.outcome, answer.class(), decision.reason, item.signed_by.as_deref()),
        decided: answer.image.as_ref().map(ToString::to_string).unwrap_or_default(),
        reason: decision.reason.code(),
        message: decision.message.clone(),
        rule: decision.rule.clone(),
        signers: decision.signers.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_name_what_an_operator_acts_on() {
        let of = |outcome, class, reason, by: Option<&str>| Status::of(outcome, class, reason, by);
        assert_eq!(of(Outcome::Admit, Class::Admitted, Reason::Verified, None), Status::Admitted);
        assert_eq!(of(Outcome::Admit, Class::Admitted, Reason::NotRequired, None), Status::Admitted);
        assert_eq!(of(Outcome::AuditAdmit, Class::Admitted, Reason::RecordDeleted, None), Status::Audited);
        assert_eq!(of(Outcome::Reject, Class::Rejected, Reason::RecordNotFound, None), Status::Unsigned);
        assert_eq!(of(Outcome::Reject, Class::Rejected, Reason::RecordNotFound, Some("did:plc:x")), Status::Untrusted);
        assert_eq!(of(Outcome::Reject, Class::Rejected, Reason::RecordDeleted, Some("did:plc:x")), Status::Revoked);
        assert_eq!(of(Outcome::Reject, Class::Rejected, Reason::SignerExpired, None), Status::Untrusted);
        assert_eq!(of(Outcome::Reject, Class::Rejected, Reason::SignatureInvalid, None), Status::Rejected);
        assert_eq!(of(Outcome::Reject, Class::Undecided, Reason::NetworkError, None), Status::Undecided);
    }
}
