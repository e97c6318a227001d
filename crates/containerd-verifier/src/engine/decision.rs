//! The decision for one image at one digest: the rule, the candidate signers, their verdicts,
//! the policy's decision, and what an admission rests on.

use atproto_sig_core::policy::{Decision, Outcome};
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::{Reason, Verdict};

use super::context::*;
use super::failure::*;
use super::identity::PathIdentity;

impl Context<'_> {
    /// The full decision for an image at `digest`.
    pub fn decide(&self, image: &ImageRef, digest: &str) -> Decision {
        // Messages name the digest being pulled, whatever the reference carried.
        let image = &ImageRef { digest: Some(digest.to_owned()), ..image.clone() };
        let matched = self.policy.rule_for(image);
        let Some(rule) = matched.rule else {
            return self.policy.decide(image, &[], self.now);
        };
        if !rule.require.signature {
            return self.policy.decide(image, &[], self.now);
        }
        let mut verdicts: Vec<Verdict> = Vec::new();
        let mut candidates: Vec<String> = Vec::new();
        let trusted = self.policy.trusted_for(rule);
        // Only signers the rule accepts now are ever fetched; the others are named in the
        // decision (signer-expired), never looked up.
        let acceptable: Vec<&str> = trusted.iter().filter(|t| t.is_valid_at(self.now)).map(|t| t.did.as_str()).collect();
        let mut repository = image.path.rsplit('/').next().map(str::to_owned);
        let mut untrusted_path: Option<(String, String)> = None;
        if let Some((identity, repo)) = self.path_identity(image, &acceptable) {
            repository = Some(repo);
            match identity {
                PathIdentity::Trusted(did) => candidates.push(did),
                PathIdentity::Untrusted(handle, did) => {
                    self.note(format!("the image path names {handle} ({did}), which policy {:?} does not trust: not looked up", rule.name));
                    untrusted_path = Some((handle, did));
                }
                PathIdentity::Offline(handle) => {
                    self.note(format!("the image path names {handle}, which cannot be resolved offline: deciding by the trusted DIDs"))
                }
                PathIdentity::Failed(v) => {
                    self.note(format!("identity in the image path: {}", v.message));
                    verdicts.push(*v);
                }
            }
        }
        // Hints from signature artifacts attached to the image (DID and record key only).
        let mut hints: Vec<(String, String)> = Vec::new();
        for (did, rkey) in self.referrer_hints(image, digest) {
            if acceptable.contains(&did.as_str()) && !candidates.contains(&did) {
                candidates.push(did.clone());
            }
            hints.push((did, rkey));
        }
        for did in &acceptable {
            if !candidates.iter().any(|c| c == did) {
                candidates.push((*did).to_owned());
            }
        }
        candidates.truncate(MAX_CANDIDATES);
        let mut valid = 0;
        for did in &candidates {
            if self.http.is_some_and(|h| h.deadline().expired()) {
                verdicts.push(Failure::OutOfTime.verdict(did));
                break;
            }
            let hint = hints.iter().find(|(d, _)| d == did).map(|(_, r)| r.as_str());
            let result = self.verify_candidate(did, digest, repository.as_deref(), hint);
            self.note(format!("candidate {did}: {} — {}", result.reason.code(), result.message));
            if result.is_verified() {
                valid += 1;
            }
            verdicts.push(result);
            if valid >= rule.require.min_signatures {
                break;
            }
        }
        let mut decision = self.policy.decide(image, &verdicts, self.now);
        if let Some((handle, did)) = untrusted_path.filter(|_| decision.reason == Reason::RecordNotFound) {
            decision.message.push_str(&format!(
                "; the image path names {handle} ({did}), which this policy does not trust, so its repository was not consulted — if it should sign these images, add it to trustedDIDs (`atproto-verifier resolve {handle}` prints the snippet)"
            ));
        }
        if decision.outcome != Outcome::Reject {
            // An admission says what it rests on: cached, stale or offline proofs, and their age.
            let mut provenance = self.provenance.take();
            provenance.dedup();
            decision.message.push_str(&provenance.concat());
            if self.used_stale.get() && !decision.message.contains("because the network failed") {
                decision.message.push_str(STALE_NOTE);
            }
        }
        decision
    }
}
