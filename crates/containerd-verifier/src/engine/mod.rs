//! The decision engine: one public entry, [`decide`]. Given a [`Request`] (image reference,
//! digest, descriptor, policy, config, clock, deadline) and the [`Remote`] to reach the world
//! through (a `Fetch` for HTTP, a `Resolve` for DNS), it returns an [`Answer`]: the decision
//! with its reason, the verdicts (and facts) it rests on, the notes made on the way, and the
//! requests made. The containerd entry, `verify` and every other command are adapters around it
//! or, for batch jobs (`bundle create`, `cache refresh`, `resolve`), a [`Session`]: the same
//! material and steps without a whole decision. The engine returns decisions; what they mean
//! to a caller (exit codes, HTTP answers, watchdogs) belongs to the adapters.
//!
//! Flow: the request is checked (digest, descriptor, reference, policy) → the policy's rule for
//! the image → no signature required? admit without any lookup → candidate signers (identity in
//! the path, hints attached to the image, the rule's trusted DIDs; nobody else is fetched) → per
//! candidate: DID document, record location, proof (cache first, network when stale, stale cache
//! only when the network fails) → core verify → the policy's decision.

// A Verdict is the natural error of each step (it carries the reason and the facts); it is
// moved a handful of times per decision, so its size does not matter.
#![allow(clippy::result_large_err)]

mod candidate;
mod context;
mod decision;
pub mod failure;
mod hints;
mod identity;
mod proof;
mod report;
pub mod request;

use atproto_sig_core::Verdict;
use atproto_sig_core::policy::{Decision, Outcome, Policy};
use atproto_sig_core::reference::ImageRef;

pub use context::{STALE_NOTE, Session, SessionOptions};
pub use failure::{Failure, PolicyError, RequestError};
pub use proof::Origin;
pub use report::{Class, decision_record, is_undecided, outcome_label, sarif_log};

use crate::config::Config;
use crate::remote::{Deadline, InFlight, Remote};

/// One pull (or one `verify`) to decide.
pub struct Request<'a> {
    /// The image reference as given (containerd's `-name`, the operator's argument).
    pub reference: &'a str,
    /// The digest to decide (containerd's `-digest`); `None`: the reference's own digest, else
    /// its tag resolved through the registry.
    pub digest: Option<&'a str>,
    /// The descriptor containerd wrote on stdin, if any: it must name the same digest.
    pub descriptor: Option<&'a [u8]>,
    /// The trust policy, or why it could not be loaded (every pull is then refused).
    pub policy: Result<&'a Policy, &'a PolicyError>,
    pub config: &'a Config,
    /// This node's clock (microseconds since the epoch); the only clock a decision reads.
    pub now_micros: i64,
    /// When the answer is due (below containerd's `per_verifier_timeout`, the API server's or
    /// Gatekeeper's timeout).
    pub deadline: Deadline,
    /// Where the request in flight is marked, for whoever watches this decision's deadline.
    pub in_flight: &'a InFlight,
}

/// Requests a decision made: to PLC directories, PDSes and handle hosts; and to the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub identity: usize,
    pub registry: usize,
}

/// What a decision answers.
#[derive(Debug)]
pub struct Answer {
    /// The canonical image with the digest decided (none if the request was refused first).
    pub image: Option<ImageRef>,
    pub decision: Decision,
    /// Each candidate signer's verdict, with its facts (DID, commit, rev, record), in the
    /// order they were checked.
    pub verdicts: Vec<Verdict>,
    /// Set when the request itself could not be decided (bad argument, stdin, policy).
    pub refused: Option<Failure>,
    /// Diagnostic lines (stderr, containerd's debug log; `verify`'s notes).
    pub notes: Vec<String>,
    pub requests: Requests,
}

impl Answer {
    /// Admitted, rejected, or could not decide.
    pub fn class(&self) -> Class {
        Class::of(&self.decision)
    }

    /// What to do about a refused request, for people (empty when there is nothing to add).
    pub fn hint(&self) -> &'static str {
        self.refused.as_ref().map_or("", Failure::hint)
    }
}

/// Decides one request.
pub fn decide(request: &Request<'_>, remote: &Remote) -> Answer {
    let refuse = |failure: Failure, image: Option<ImageRef>, requests: Requests, notes: Vec<String>| Answer {
        image,
        decision: Decision { outcome: Outcome::Reject, reason: failure.reason(), message: failure.to_string(), rule: None, signers: Vec::new() },
        verdicts: Vec::new(),
        refused: Some(failure),
        notes,
        requests,
    };
    let empty = Policy::empty();
    let policy = request.policy.as_ref().map_or(&empty, |p| *p);
    let options = SessionOptions { registry: true, ..SessionOptions::default() };
    let session = Session::new(request.config, policy, remote, request.now_micros, request.deadline, request.in_flight, options);
    let (image, digest) = match checked_request(request, &session) {
        Ok(found) => found,
        Err((failure, image)) => return refuse(failure, image, Requests { identity: 0, ..session.requests() }, session.take_notes()),
    };
    if let Err(e) = request.policy {
        return refuse(Failure::Policy(e.clone()), Some(image), Requests { identity: 0, ..session.requests() }, session.take_notes());
    }
    let (decision, verdicts) = session.decide(&image, &digest);
    let requests = session.requests();
    Answer { image: Some(ImageRef { digest: Some(digest), ..image }), decision, verdicts, refused: None, notes: session.take_notes(), requests }
}

/// The image and the digest to decide, or why the request cannot be decided.
fn checked_request(request: &Request<'_>, session: &Session<'_>) -> Result<(ImageRef, String), (Failure, Option<ImageRef>)> {
    if let Some(digest) = request.digest {
        let digest = request::checked_digest(digest).map_err(|e| (e.into(), None))?;
        let stdin = request.descriptor.map(request::descriptor_digest).transpose().map_err(|e| (e.into(), None))?.flatten();
        if let Some(stdin) = stdin.filter(|d| d != digest) {
            return Err((Failure::DescriptorMismatch { stdin, digest: digest.to_owned() }, None));
        }
    }
    let image = ImageRef::parse(request.reference).map_err(|e| (RequestError::Reference(e.to_string()).into(), None))?;
    let digest = match request.digest.map(str::to_owned).or_else(|| image.digest.clone()) {
        Some(d) => request::checked_digest(&d).map_err(|e| (e.into(), Some(image.clone())))?.to_owned(),
        None => session
            .resolve_tag(&image)
            .map_err(|error| (RequestError::TagUnresolved { reference: request.reference.to_owned(), error }.into(), Some(image.clone())))?,
    };
    Ok((image, digest))
}
