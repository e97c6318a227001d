//! Trust policies in the format of ATCR's `trust-policy.yaml` examples (YAML or JSON), plus a
//! `default` rule for images no rule matches.
//!
//! ```yaml
//! version: 1.0
//! trustedDIDs:
//!   did:plc:…: { name: "Alice", validFrom: "2024-01-01T00:00:00Z", expiresAt: null }
//! policies:
//!   - name: production-images
//!     scope: "atcr.io/*/prod-*"
//!     require: { signature: true, trustedDIDs: [did:plc:…], minSignatures: 1 }
//!     action: enforce          # enforce | audit
//! default: { action: enforce, require: { signature: false } }
//! ```
//!
//! Parsing collects every problem with its line and column; unknown keys are errors because a
//! typo must never silently weaken a policy. Matching: the first rule in file order whose scope
//! glob matches `host/path` (`*` within one path segment, `**` across segments). The decision
//! counts distinct verified signers that the rule trusts now.

//!
//! Layout: this module holds the model (what a policy is); [`parse`] reads and validates a
//! file; [`scope`] matches scope globs; [`decide`] turns verdicts into a decision.

mod decide;
mod parse;
mod scope;

use std::fmt;

use crate::syntax::format_datetime_micros;
use crate::yaml::Position;

pub use decide::{Decision, Outcome, RuleMatch};
pub use parse::{MAX_RULES, MAX_TRUSTED_DIDS, parse_policy};
pub use scope::scope_matches;

/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// A DID the policy trusts, with its validity window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedDid {
    /// The DID.
    pub did: String,
    /// Who it is, for messages.
    pub name: Option<String>,
    /// Trusted from (inclusive), microseconds since the epoch.
    pub valid_from: Option<i64>,
    /// Trusted until (exclusive), microseconds since the epoch.
    pub expires_at: Option<i64>,
}

impl TrustedDid {
    /// True when `now` is inside `[validFrom, expiresAt)`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.valid_from.is_none_or(|from| from <= now) && self.expires_at.is_none_or(|until| now < until)
    }

    /// The window as text, for messages.
    pub fn window(&self) -> String {
        let from = self.valid_from.map_or("always".to_owned(), format_datetime_micros);
        let until = self.expires_at.map_or("no expiry".to_owned(), format_datetime_micros);
        format!("from {from} until {until}")
    }

    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{} ({name})", self.did),
            None => self.did.clone(),
        }
    }
}

/// What happens when a rule's requirement is not met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Block the pull.
    Enforce,
    /// Admit it, but record and say "would reject".
    Audit,
}

impl Action {
    /// As written in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Enforce => "enforce",
            Action::Audit => "audit",
        }
    }
}

/// What a rule requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Whether a signature is needed at all.
    pub signature: bool,
    /// DIDs accepted for this rule; empty means every DID in `trustedDIDs`.
    pub trusted_dids: Vec<String>,
    /// Distinct trusted signers needed (default 1).
    pub min_signatures: usize,
}

/// One rule (`policies[]` entry, or the `default`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Rule name (`default` for the default rule).
    pub name: String,
    /// Scope glob over canonical `host/path` (`**` for the default rule); see [`crate::reference::canonical_scope`].
    pub scope: String,
    /// Requirement.
    pub require: Requirement,
    /// Enforce or audit.
    pub action: Action,
    /// Whether an admission server may rewrite an admitted tag to the digest it verified
    /// (`pinDigest`, default true; off for images managed by GitOps tools that fight rewrites).
    pub pin_digest: bool,
    /// Where the rule starts in the file.
    pub at: Position,
}

/// A parsed, validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `version` as written.
    pub version: String,
    /// Trusted DIDs in file order.
    pub trusted: Vec<TrustedDid>,
    /// Rules in file order.
    pub rules: Vec<Rule>,
    /// The rule for images no rule matches; without one, they are rejected (`no-matching-rule`).
    pub default: Option<Rule>,
    /// Things that are legal but probably not what the author meant.
    pub warnings: Vec<Issue>,
}

/// A problem found in a policy file, with its position and a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// Where.
    pub at: Position,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl Issue {
    fn new(at: Position, message: impl Into<String>, hint: impl Into<String>) -> Issue {
        Issue { at, message: message.into(), hint: hint.into() }
    }

    /// `file:line:column: message` followed by an indented hint line.
    pub fn render(&self, file: &str, severity: &str) -> String {
        let mut out = format!("{file}:{}:{}: {severity}: {}", self.at.line, self.at.column, self.message);
        if !self.hint.is_empty() {
            out.push_str(&format!("\n  hint: {}", self.hint));
        }
        out
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}
