//! From candidate verdicts and the clock to one decision with its reason.

use super::{Action, Issue, Policy, Rule, TrustedDid, parse_policy, scope_matches};
use crate::reference::ImageRef;
use crate::syntax::format_datetime_micros;
use crate::verify::{Reason, Verdict};

/// The rule that applies to an image, and the rules before it that did not match.
#[derive(Clone, Debug)]
pub struct RuleMatch<'p> {
    /// The applicable rule: a policy, the default, or none.
    pub rule: Option<&'p Rule>,
    /// True when `rule` is the default.
    pub is_default: bool,
    /// Rules checked before it, in file order, that did not match.
    pub skipped: Vec<&'p Rule>,
}

/// The outcome of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Admit the pull.
    Admit,
    /// Admit, but the rule is in audit mode and would have rejected.
    AuditAdmit,
    /// Block the pull.
    Reject,
}

/// A decision with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Admit, audit-admit or reject.
    pub outcome: Outcome,
    /// Stable reason code (for audit-admit: what would have rejected).
    pub reason: Reason,
    /// One sentence for people.
    pub message: String,
    /// Name of the rule applied (`default`, or none).
    pub rule: Option<String>,
    /// Distinct trusted signers counted.
    pub signers: Vec<String>,
}

/// Order in which failed candidate verdicts explain a rejection, most specific and actionable
/// first: evidence of tampering, then what the signed data says (mismatch, deletion), then
/// malformed or rolled-back material and identities that do not verify (a handle its DID
/// document does not claim), stale proofs, trouble reaching anything (which must never read as
/// "no record": the record may be where we could not look), and last what was merely not
/// found. (Offline, an image path's handle is not resolved at all, so it is never the reason.)
fn failure_rank(reason: Reason) -> u8 {
    match reason {
        Reason::SignatureInvalid | Reason::DidMismatch => 0,
        Reason::DigestMismatch | Reason::RepositoryMismatch | Reason::RecordInvalid | Reason::UntrustedSigner | Reason::SignerExpired => 1,
        Reason::RecordDeleted => 2,
        Reason::ProofMalformed | Reason::RevInFuture | Reason::DidDocumentInvalid | Reason::ProofRolledBack | Reason::IdentityUnresolved => 3,
        Reason::ProofTooOld => 4,
        Reason::NetworkError | Reason::RateLimited | Reason::DeadlineExceeded => 5,
        Reason::DidUnresolved => 6,
        Reason::RecordNotFound => 7,
        _ => 8,
    }
}

impl Policy {
    /// A policy with no rules and no trusted DIDs (for operations that resolve and fetch
    /// without deciding, such as bundles and cache refreshes).
    pub fn empty() -> Policy {
        Policy { version: "1.0".into(), trusted: Vec::new(), rules: Vec::new(), default: None, warnings: Vec::new() }
    }

    /// Parses and validates; see [`parse_policy`].
    pub fn parse(text: &str) -> Result<Policy, Vec<Issue>> {
        parse_policy(text)
    }

    /// The first rule (file order) whose scope matches, else the default.
    pub fn rule_for(&self, image: &ImageRef) -> RuleMatch<'_> {
        let name = image.scope_name();
        let mut skipped = Vec::new();
        for rule in &self.rules {
            if scope_matches(&rule.scope, &name) {
                return RuleMatch { rule: Some(rule), is_default: false, skipped };
            }
            skipped.push(rule);
        }
        RuleMatch { rule: self.default.as_ref(), is_default: self.default.is_some(), skipped }
    }

    /// The DIDs a rule accepts (its list, or every trusted DID), in policy order.
    pub fn trusted_for<'p>(&'p self, rule: &'p Rule) -> Vec<&'p TrustedDid> {
        self.trusted.iter().filter(|t| rule.require.trusted_dids.is_empty() || rule.require.trusted_dids.contains(&t.did)).collect()
    }

    /// Decides for an image, from the verdicts of its candidate signers and the clock.
    pub fn decide(&self, image: &ImageRef, verdicts: &[Verdict], now: i64) -> Decision {
        let matched = self.rule_for(image);
        let Some(rule) = matched.rule else {
            return Decision {
                outcome: Outcome::Reject,
                reason: Reason::NoMatchingRule,
                message: format!("no policy matches {} and the policy has no default rule", image.scope_name()),
                rule: None,
                signers: Vec::new(),
            };
        };
        decide_rule(self, rule, image, verdicts, now)
    }
}

/// The decision under one rule. One function on purpose (~65 lines): the cases are tried in
/// order of precedence (enough signers; expired; too few; untrusted; nobody valid; the most
/// specific failure; no record), and that order is the policy's meaning.
fn decide_rule(policy: &Policy, rule: &Rule, image: &ImageRef, verdicts: &[Verdict], now: i64) -> Decision {
    let decision = |outcome, reason, message: String, signers| Decision { outcome, reason, message, rule: Some(rule.name.clone()), signers };
    if !rule.require.signature {
        return decision(Outcome::Admit, Reason::NotRequired, format!("policy {:?} requires no signature for {}", rule.name, image.scope_name()), Vec::new());
    }
    let trusted = policy.trusted_for(rule);
    let verified: Vec<&Verdict> = verdicts.iter().filter(|v| v.is_verified()).collect();
    let mut signers: Vec<String> = Vec::new();
    // Signatures are counted by distinct key: two DIDs sharing one signing key are one signer.
    let mut keys: Vec<Option<&crate::crypto::PublicKey>> = Vec::new();
    for verdict in &verified {
        let did = &verdict.facts.did;
        let key = verdict.facts.signing_key.as_ref();
        if trusted.iter().any(|t| &t.did == did && t.is_valid_at(now)) && !signers.contains(did) && (key.is_none() || !keys.contains(&key)) {
            signers.push(did.clone());
            keys.push(key);
        }
    }
    if signers.len() >= rule.require.min_signatures {
        let message = format!("{} signed by {} (policy {:?})", image.digest.as_deref().unwrap_or("image"), signers.join(", "), rule.name);
        return decision(Outcome::Admit, Reason::Verified, message, signers);
    }

    let expired = verified.iter().find_map(|v| trusted.iter().find(|t| t.did == v.facts.did && !t.is_valid_at(now)));
    let untrusted = verified.iter().find(|v| !trusted.iter().any(|t| t.did == v.facts.did));
    let (reason, message) = if let Some(t) = expired {
        (
            Reason::SignerExpired,
            format!("signed by {}, who is trusted by policy {:?} only {} (now {})", t.label(), rule.name, t.window(), format_datetime_micros(now)),
        )
    } else if !signers.is_empty() {
        (
            Reason::TooFewSignatures,
            format!("{} of {} required trusted signatures ({}) for policy {:?}", signers.len(), rule.require.min_signatures, signers.join(", "), rule.name),
        )
    } else if let Some(v) = untrusted {
        (Reason::UntrustedSigner, format!("signed by {}, which policy {:?} does not trust", v.facts.did, rule.name))
    } else if !trusted.is_empty() && trusted.iter().all(|t| !t.is_valid_at(now)) {
        // Nobody the rule trusts may sign now: callers do not even look their repositories up.
        let windows: Vec<String> = trusted.iter().map(|t| format!("{} {}", t.label(), t.window())).collect();
        (
            Reason::SignerExpired,
            format!(
                "policy {:?} trusts only {} for this image, and none is within its validity window now ({})",
                rule.name,
                windows.join(", "),
                format_datetime_micros(now)
            ),
        )
    } else if let Some(v) = verdicts.iter().filter(|v| !v.is_verified()).min_by_key(|v| failure_rank(v.reason)) {
        (v.reason, v.message.clone())
    } else {
        let dids: Vec<&str> = trusted.iter().map(|t| t.did.as_str()).collect();
        (
            Reason::RecordNotFound,
            format!(
                "no signature for {} by any DID policy {:?} trusts ({}) — was the image pushed through an ATProto registry?",
                image.digest.as_deref().unwrap_or("this image"),
                rule.name,
                dids.join(", ")
            ),
        )
    };
    match rule.action {
        Action::Audit => decision(Outcome::AuditAdmit, reason, format!("audit: would reject ({}): {message}", reason.code()), signers),
        Action::Enforce => decision(Outcome::Reject, reason, message, signers),
    }
}
