//! The decision for one image at one digest: the rule, the candidate signers, their verdicts,
//! the policy's decision, and what an admission rests on.

use atproto_sig_core::policy::{Decision, Outcome, Rule};
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::{Reason, Verdict};

use super::context::{STALE_NOTE, Session};
use super::failure::Failure;
use super::identity::PathIdentity;

/// Who is checked for one image, in order, and what the image path said.
#[derive(Default)]
struct Candidates {
    /// DIDs the rule accepts now: the path's identity, then hinted ones, then the rest.
    dids: Vec<String>,
    /// (DID, record key) named by signature artifacts attached to the image.
    hints: Vec<(String, String)>,
    /// The repository the record must name.
    repository: Option<String>,
    /// (handle or DID, DID) named by the path but not trusted by the rule: said, never fetched.
    untrusted_path: Option<(String, String)>,
    /// Verdicts reached before any proof (the path's identity failed).
    verdicts: Vec<Verdict>,
}

impl Session<'_> {
    /// The full decision for an image at `digest`, with the verdicts (and their facts) it
    /// rests on.
    pub fn decide(&self, image: &ImageRef, digest: &str) -> (Decision, Vec<Verdict>) {
        // Messages name the digest being pulled, whatever the reference carried.
        let image = &ImageRef { digest: Some(digest.to_owned()), ..image.clone() };
        let Some(rule) = self.policy.rule_for(image).rule.filter(|r| r.require.signature) else {
            // No rule, or one that requires no signature: the policy decides without a lookup.
            return (self.policy.decide(image, &[], self.now), Vec::new());
        };
        let candidates = self.candidates(image, digest, rule);
        let verdicts = self.verdicts(&candidates, digest, rule.require.min_signatures);
        let mut decision = self.policy.decide(image, &verdicts, self.now);
        self.explain(&mut decision, candidates.untrusted_path);
        (decision, verdicts)
    }

    /// The candidate signers for `image` under `rule`. Only signers the rule accepts now are
    /// ever fetched; the others are named in the decision (signer-expired), never looked up.
    fn candidates(&self, image: &ImageRef, digest: &str, rule: &Rule) -> Candidates {
        let trusted = self.policy.trusted_for(rule);
        let acceptable: Vec<&str> = trusted.iter().filter(|t| t.is_valid_at(self.now)).map(|t| t.did.as_str()).collect();
        let mut found = Candidates { repository: image.path.rsplit('/').next().map(str::to_owned), ..Candidates::default() };
        if let Some((identity, repo)) = self.path_identity(image, &acceptable) {
            found.repository = Some(repo);
            match identity {
                PathIdentity::Trusted(did) => found.dids.push(did),
                PathIdentity::Untrusted(handle, did) => {
                    self.note(format!("the image path names {handle} ({did}), which policy {:?} does not trust: not looked up", rule.name));
                    found.untrusted_path = Some((handle, did));
                }
                PathIdentity::Offline(handle) => {
                    self.note(format!("the image path names {handle}, which cannot be resolved offline: deciding by the trusted DIDs"))
                }
                PathIdentity::Failed(v) => {
                    self.note(format!("identity in the image path: {}", v.message));
                    found.verdicts.push(*v);
                }
            }
        }
        // Hints from signature artifacts attached to the image (DID and record key only),
        // asked of the registry while the first candidate's DID document is fetched.
        let first = found.dids.first().cloned().or_else(|| acceptable.first().map(|d| (*d).to_owned()));
        let hints = if self.registry.is_some() { self.with_document_prefetch(first.as_deref(), || self.referrer_hints(image, digest)) } else { Vec::new() };
        for (did, rkey) in hints {
            if acceptable.contains(&did.as_str()) && !found.dids.contains(&did) {
                found.dids.push(did.clone());
            }
            found.hints.push((did, rkey));
        }
        for did in &acceptable {
            if !found.dids.iter().any(|c| c == did) {
                found.dids.push((*did).to_owned());
            }
        }
        found.dids.truncate(self.limits.candidates);
        found
    }

    /// Verdicts on the candidates, in order, until `min_signatures` verified or time runs out.
    fn verdicts(&self, candidates: &Candidates, digest: &str, min_signatures: usize) -> Vec<Verdict> {
        let mut verdicts = candidates.verdicts.clone();
        let mut valid = 0;
        for did in &candidates.dids {
            if self.deadline.expired() {
                verdicts.push(Failure::OutOfTime.verdict(did));
                break;
            }
            let hint = candidates.hints.iter().find(|(d, _)| d == did).map(|(_, r)| r.as_str());
            let result = self.verify_candidate(did, digest, candidates.repository.as_deref(), hint);
            self.note(format!("candidate {did}: {} — {}", result.reason.code(), result.message));
            if result.is_verified() {
                valid += 1;
            }
            verdicts.push(result);
            if valid >= min_signatures {
                break;
            }
        }
        verdicts
    }

    /// What a decision adds for people: the untrusted identity a missing record may be
    /// explained by, and what an admission rests on (cached, stale or offline proofs, their age).
    fn explain(&self, decision: &mut Decision, untrusted_path: Option<(String, String)>) {
        if let Some((handle, did)) = untrusted_path.filter(|_| decision.reason == Reason::RecordNotFound) {
            decision.message.push_str(&format!(
                "; the image path names {handle} ({did}), which this policy does not trust, so its repository was not consulted — if it should sign these images, add it to trustedDIDs (`atproto-verifier resolve {handle}` prints the snippet)"
            ));
        }
        if decision.outcome != Outcome::Reject {
            let mut provenance = self.provenance.take();
            provenance.dedup();
            decision.message.push_str(&provenance.concat());
            if self.used_stale.get() && !decision.message.contains("because the network failed") {
                decision.message.push_str(STALE_NOTE);
            }
        }
    }
}
