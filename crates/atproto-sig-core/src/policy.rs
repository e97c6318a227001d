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

use std::fmt;

use crate::reference::ImageRef;
use crate::syntax::{format_datetime_micros, is_valid_did, parse_datetime_micros};
use crate::verify::{Reason, Verdict};
use crate::yaml::{self, Kind, Node, Position};

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

/// Edit distance, for "did you mean" hints on unknown keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(!ca.eq_ignore_ascii_case(cb));
            let deletion = row.get(j + 1).copied().unwrap_or(usize::MAX) + 1;
            let insertion = row.get(j).copied().unwrap_or(usize::MAX) + 1;
            previous = row.get(j + 1).copied().unwrap_or(0);
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = substitution.min(deletion).min(insertion);
            }
        }
    }
    row.last().copied().unwrap_or(0)
}

fn unknown_key_hint(key: &str, known: &[&str]) -> String {
    let closest = known.iter().min_by_key(|k| distance(key, k));
    match closest {
        Some(k) if distance(key, k) <= 3 => format!("did you mean `{k}`? (allowed here: {})", known.join(", ")),
        _ => format!("allowed here: {}", known.join(", ")),
    }
}

/// Collects issues while walking the tree.
#[derive(Default)]
struct Checker {
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
}

impl Checker {
    fn error(&mut self, at: Position, message: impl Into<String>, hint: impl Into<String>) {
        self.errors.push(Issue::new(at, message, hint));
    }

    fn warn(&mut self, at: Position, message: impl Into<String>, hint: impl Into<String>) {
        self.warnings.push(Issue::new(at, message, hint));
    }

    /// The entries of a mapping, reporting unknown keys.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, known: &[&str]) -> Vec<(&'n Node, &'n Node)> {
        let Kind::Map(entries) = &node.kind else {
            self.error(node.at, format!("{what} must be a mapping, found {}", node.kind_name()), "");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in entries {
            let name = key.scalar_text().unwrap_or_default();
            if known.is_empty() || known.contains(&name.as_str()) {
                out.push((key, value));
            } else {
                self.error(key.at, format!("unknown key `{name}` in {what}"), unknown_key_hint(&name, known));
            }
        }
        out
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.error(node.at, format!("{what} must be a string, found {}", node.kind_name()), "quote it");
                None
            }
        }
    }

    fn date(&mut self, node: &Node, what: &str) -> Option<i64> {
        match &node.kind {
            Kind::Null => None,
            Kind::Str(s, _) => match parse_datetime_micros(s) {
                Some(t) => Some(t),
                None => {
                    self.error(node.at, format!("{what} {s:?} is not an RFC 3339 date"), "write it like \"2024-01-01T00:00:00Z\", or null");
                    None
                }
            },
            _ => {
                self.error(node.at, format!("{what} must be an RFC 3339 date or null, found {}", node.kind_name()), "write it like \"2024-01-01T00:00:00Z\"");
                None
            }
        }
    }
}

fn get<'n>(entries: &[(&'n Node, &'n Node)], key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.scalar_text().as_deref() == Some(key)).map(|(_, v)| *v)
}

fn check_did_key(checker: &mut Checker, node: &Node, did: &str) -> bool {
    if !is_valid_did(did) {
        checker.error(node.at, format!("{did:?} is not a DID"), "DIDs look like did:plc:<24 characters> or did:web:<host>");
        return false;
    }
    if let Err(e) = crate::did::did_method(did) {
        checker.warn(node.at, format!("{did} can never verify: {e}"), "use the account's real did:plc or did:web");
    }
    true
}

/// Most trusted DIDs, and most rules, one policy may hold: policies are read at every pull,
/// and these bounds keep checking them cheap whatever a hostile file holds.
pub const MAX_TRUSTED_DIDS: usize = 1000;
/// See [`MAX_TRUSTED_DIDS`].
pub const MAX_RULES: usize = 1000;

/// Scope globs: lowercase registry names, path characters, `*` and `**`.
fn check_scope(checker: &mut Checker, node: &Node, scope: &str) {
    if scope.is_empty() {
        checker.error(node.at, "scope is empty", "write a glob such as \"atcr.io/*/prod-*\", or \"**\" for everything");
        return;
    }
    if scope.contains("***") {
        checker.error(node.at, format!("scope {scope:?} has `***`"), "use `*` within a path segment or `**` across segments");
    }
    if let Some(bad) = scope.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:/*[]".contains(*c))) {
        let hint = if bad.is_ascii_uppercase() {
            "references are matched lowercase: write the scope lowercase"
        } else {
            "scopes hold registry hosts, paths, `*` and `**` only (no tags or digests)"
        };
        checker.error(node.at, format!("scope {scope:?} contains {bad:?}"), hint);
    }
    let host = scope.split('/').next().unwrap_or_default();
    if !(scope.starts_with('*') || host.contains('.') || host.contains(':') || host == "localhost") {
        checker.warn(
            node.at,
            format!("scope {scope:?} does not start with a registry host"),
            format!("references are normalized first: `nginx` is matched as docker.io/library/nginx, so write \"docker.io/{scope}\""),
        );
    }
}

fn parse_requirement(checker: &mut Checker, node: &Node, trusted: &[TrustedDid], context: &str) -> Requirement {
    let entries = checker.mapping(node, &format!("`require` of {context}"), &["signature", "trustedDIDs", "minSignatures"]);
    let signature = match get(&entries, "signature").map(|n| (&n.kind, n.at)) {
        Some((Kind::Bool(b), _)) => *b,
        Some((_, at)) => {
            checker.error(at, format!("`require.signature` of {context} must be true or false"), "");
            true
        }
        None => {
            checker.error(
                node.at,
                format!("`require` of {context} does not say `signature: true` or `signature: false`"),
                "say explicitly whether a signature is required",
            );
            true
        }
    };
    let mut trusted_dids = Vec::new();
    if let Some(list) = get(&entries, "trustedDIDs") {
        match &list.kind {
            Kind::Seq(items) => {
                if items.len() > MAX_TRUSTED_DIDS {
                    checker.error(list.at, format!("`require.trustedDIDs` of {context} lists {} DIDs, more than {MAX_TRUSTED_DIDS}", items.len()), "");
                }
                for item in items.iter().take(MAX_TRUSTED_DIDS) {
                    let Some(did) = checker.string(item, "a trustedDIDs entry") else { continue };
                    if !trusted.iter().any(|t| t.did == did) {
                        checker.error(
                            item.at,
                            format!("{did} is required by {context} but is not listed under the top-level `trustedDIDs`"),
                            "add it to trustedDIDs with its name and validity window, or fix the spelling",
                        );
                    } else if trusted_dids.contains(&did) {
                        checker.warn(item.at, format!("{did} is listed twice in {context}"), "each DID counts once toward minSignatures");
                    } else {
                        trusted_dids.push(did);
                    }
                }
                if items.is_empty() {
                    checker.error(
                        list.at,
                        format!("`trustedDIDs` of {context} is empty"),
                        "list DIDs, or remove the key to accept every DID in the top-level trustedDIDs",
                    );
                }
            }
            _ => checker.error(list.at, format!("`trustedDIDs` of {context} must be a list of DIDs"), ""),
        }
    }
    let min_signatures = match get(&entries, "minSignatures").map(|n| (&n.kind, n.at)) {
        None => 1,
        Some((Kind::Int(n), _)) if *n >= 1 => usize::try_from(*n).unwrap_or(usize::MAX),
        Some((_, at)) => {
            checker.error(at, format!("`minSignatures` of {context} must be a whole number of at least 1"), "");
            1
        }
    };
    let set_size = if trusted_dids.is_empty() { trusted.len() } else { trusted_dids.len() };
    match get(&entries, "minSignatures") {
        Some(n) if signature && min_signatures > set_size => {
            checker.error(
                n.at,
                format!("{context} needs {min_signatures} distinct signers but trusts only {set_size}"),
                "lower minSignatures or trust more DIDs: as written, no image could ever be admitted",
            );
        }
        // No trusted DID at all: a deliberate "deny" is legitimate, but say what it does.
        None if signature && set_size == 0 => {
            checker.warn(
                node.at,
                format!("{context} requires a signature but no DID is trusted, so it admits nothing"),
                "intended as a deny rule? then this is fine; otherwise add DIDs under trustedDIDs",
            );
        }
        _ => {}
    }
    if !signature && (get(&entries, "trustedDIDs").is_some() || get(&entries, "minSignatures").is_some()) {
        checker.warn(node.at, format!("{context} requires no signature, so its trustedDIDs and minSignatures are ignored"), "");
    }
    Requirement { signature, trusted_dids, min_signatures }
}

fn parse_action(checker: &mut Checker, node: Option<&Node>, context: &str) -> Action {
    match node.map(|n| (n.scalar_text(), n.at)) {
        None => Action::Enforce,
        Some((Some(text), _)) if text == "enforce" => Action::Enforce,
        Some((Some(text), _)) if text == "audit" => Action::Audit,
        Some((text, at)) => {
            checker.error(
                at,
                format!("`action` of {context} is {:?}", text.unwrap_or_default()),
                "use `enforce` (block the pull) or `audit` (admit and record \"would reject\")",
            );
            Action::Enforce
        }
    }
}

/// Parses and validates a policy (YAML or JSON). On failure, returns every error found.
pub fn parse_policy(text: &str) -> Result<Policy, Vec<Issue>> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(vec![Issue::new(
            Position { line: 1, column: 1 },
            format!("the policy is {} bytes, over the {MAX_POLICY_BYTES}-byte limit", text.len()),
            "",
        )]);
    }
    let (root, duplicates) = yaml::parse(text).map_err(|errors| errors.into_iter().map(|e| Issue::new(e.at, e.message, "")).collect::<Vec<_>>())?;
    let mut checker = Checker::default();
    for duplicate in duplicates {
        checker.error(duplicate.at, duplicate.message, "remove or merge one of them");
    }
    let top = checker.mapping(&root, "the policy", &["version", "trustedDIDs", "policies", "default"]);

    let version = match get(&top, "version") {
        Some(node) => match node.scalar_text() {
            Some(v) if v == "1.0" || v == "1" => v,
            other => {
                checker.error(node.at, format!("unsupported policy version {:?}", other.unwrap_or_default()), "this verifier reads version 1.0");
                String::new()
            }
        },
        None => {
            checker.error(root.at, "the policy has no `version`", "add `version: 1.0` at the top");
            String::new()
        }
    };

    let mut trusted = Vec::new();
    if let Some(node) = get(&top, "trustedDIDs").filter(|n| !matches!(n.kind, Kind::Null)) {
        let entries = checker.mapping(node, "`trustedDIDs`", &[]);
        if entries.len() > MAX_TRUSTED_DIDS {
            checker.error(
                node.at,
                format!("`trustedDIDs` lists {} DIDs, more than {MAX_TRUSTED_DIDS}", entries.len()),
                "a policy names its signers, not a directory: split by scope or trim the list",
            );
        }
        for (key, value) in entries.into_iter().take(MAX_TRUSTED_DIDS) {
            let did = key.scalar_text().unwrap_or_default();
            if trusted.iter().any(|t: &TrustedDid| t.did == did) || !check_did_key(&mut checker, key, &did) {
                continue;
            }
            let mut entry = TrustedDid { did: did.clone(), name: None, valid_from: None, expires_at: None };
            if !matches!(value.kind, Kind::Null) {
                let fields = checker.mapping(value, &format!("trustedDIDs.{did}"), &["name", "validFrom", "expiresAt"]);
                entry.name = get(&fields, "name").and_then(|n| checker.string(n, "name"));
                entry.valid_from = get(&fields, "validFrom").and_then(|n| checker.date(n, "validFrom"));
                entry.expires_at = get(&fields, "expiresAt").and_then(|n| checker.date(n, "expiresAt"));
                if let (Some(from), Some(until)) = (entry.valid_from, entry.expires_at)
                    && until <= from
                {
                    let at = get(&fields, "expiresAt").map_or(value.at, |n| n.at);
                    checker.error(at, format!("{did} expires before it becomes valid"), "expiresAt must be later than validFrom");
                }
            }
            trusted.push(entry);
        }
    }

    let mut rules: Vec<Rule> = Vec::new();
    match get(&top, "policies").map(|n| (&n.kind, n.at)) {
        Some((Kind::Seq(items), at)) => {
            if items.len() > MAX_RULES {
                checker.error(at, format!("`policies` holds {} rules, more than {MAX_RULES}", items.len()), "merge rules with globs (`*`, `**`)");
            }
            for item in items.iter().take(MAX_RULES) {
                let fields = checker.mapping(item, "a policy", &["name", "scope", "require", "action"]);
                let name = match get(&fields, "name") {
                    Some(n) => checker.string(n, "name").unwrap_or_default(),
                    None => {
                        checker.error(item.at, "a policy has no `name`", "give every policy a unique name: decisions and audit records cite it");
                        String::new()
                    }
                };
                if !name.is_empty()
                    && let Some(first) = rules.iter().find(|r| r.name == name)
                {
                    let at = get(&fields, "name").map_or(item.at, |n| n.at);
                    checker.error(at, format!("duplicate policy name {name:?} (first at line {})", first.at.line), "names must be unique: decisions cite them");
                }
                let context = if name.is_empty() { "this policy".to_owned() } else { format!("policy {name:?}") };
                let scope = match get(&fields, "scope") {
                    Some(n) => {
                        let written = checker.string(n, "scope").unwrap_or_default();
                        check_scope(&mut checker, n, &written);
                        // Matched in canonical form: `atcr.io:443/*` and `atcr.io/*` are one scope.
                        let scope = crate::reference::canonical_scope(&written);
                        if let Some(earlier) = rules.iter().find(|r| r.scope == scope && !scope.is_empty()) {
                            checker.warn(
                                n.at,
                                format!("{context} can never match: policy {:?} above has the same scope", earlier.name),
                                "the first matching policy in file order applies",
                            );
                        }
                        scope
                    }
                    None => {
                        checker.error(item.at, format!("{context} has no `scope`"), "add a glob such as \"atcr.io/*/prod-*\"");
                        String::new()
                    }
                };
                let require = match get(&fields, "require") {
                    Some(n) => parse_requirement(&mut checker, n, &trusted, &context),
                    None => {
                        checker.error(item.at, format!("{context} has no `require`"), "add `require: { signature: true }` (or false)");
                        Requirement { signature: true, trusted_dids: Vec::new(), min_signatures: 1 }
                    }
                };
                let action = parse_action(&mut checker, get(&fields, "action"), &context);
                rules.push(Rule { name, scope, require, action, at: item.at });
            }
        }
        Some((_, at)) => checker.error(at, "`policies` must be a list", ""),
        None => checker.warn(root.at, "the policy has no `policies`", "every image falls to the `default` rule"),
    }

    let default = get(&top, "default").map(|node| {
        let fields = checker.mapping(node, "`default`", &["require", "action"]);
        let require = match get(&fields, "require") {
            Some(n) => parse_requirement(&mut checker, n, &trusted, "the default"),
            None => {
                checker.error(node.at, "`default` has no `require`", "add `require: { signature: true }` (or false)");
                Requirement { signature: true, trusted_dids: Vec::new(), min_signatures: 1 }
            }
        };
        let action = parse_action(&mut checker, get(&fields, "action"), "the default");
        Rule { name: "default".into(), scope: "**".into(), require, action, at: node.at }
    });
    if default.is_none() {
        checker.warn(
            root.at,
            "the policy has no `default`",
            "images no policy matches are rejected (no-matching-rule); add `default: { action: enforce, require: { signature: true } }` to say so explicitly",
        );
    }

    if checker.errors.is_empty() {
        Ok(Policy { version, trusted, rules, default, warnings: checker.warnings })
    } else {
        checker.errors.sort_by_key(|e| e.at);
        Err(checker.errors)
    }
}

/// Glob match over `host/path`: `*` = any run of characters without `/`, `**` = any run.
/// Dynamic programming over (pattern, text): linear memory, no backtracking blow-up.
pub fn scope_matches(pattern: &str, text: &str) -> bool {
    enum Token {
        Char(u8),
        Star,
        DoubleStar,
    }
    let bytes = pattern.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        if c == b'*' {
            if bytes.get(i + 1) == Some(&b'*') {
                tokens.push(Token::DoubleStar);
                i += 2;
            } else {
                tokens.push(Token::Star);
                i += 1;
            }
        } else {
            tokens.push(Token::Char(c));
            i += 1;
        }
    }
    let text = text.as_bytes();
    // reachable[j]: pattern prefix matches text prefix of length j.
    let mut reachable = vec![false; text.len() + 1];
    if let Some(first) = reachable.first_mut() {
        *first = true;
    }
    for token in &tokens {
        let mut next = vec![false; text.len() + 1];
        match token {
            Token::Char(c) => {
                for j in 0..text.len() {
                    if reachable.get(j) == Some(&true)
                        && text.get(j) == Some(c)
                        && let Some(slot) = next.get_mut(j + 1)
                    {
                        *slot = true;
                    }
                }
            }
            Token::Star | Token::DoubleStar => {
                let crosses = matches!(token, Token::DoubleStar);
                let mut carrying = false;
                for j in 0..=text.len() {
                    carrying = carrying || reachable.get(j) == Some(&true);
                    if let Some(slot) = next.get_mut(j) {
                        *slot = carrying;
                    }
                    if !crosses && text.get(j) == Some(&b'/') {
                        carrying = false;
                    }
                }
            }
        }
        reachable = next;
    }
    reachable.last() == Some(&true)
}

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
        Reason::NetworkError | Reason::DeadlineExceeded => 5,
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

fn decide_rule(policy: &Policy, rule: &Rule, image: &ImageRef, verdicts: &[Verdict], now: i64) -> Decision {
    let decision = |outcome, reason, message: String, signers| Decision { outcome, reason, message, rule: Some(rule.name.clone()), signers };
    if !rule.require.signature {
        return decision(Outcome::Admit, Reason::NotRequired, format!("policy {:?} requires no signature for {}", rule.name, image.scope_name()), Vec::new());
    }
    let trusted = policy.trusted_for(rule);
    let verified: Vec<&Verdict> = verdicts.iter().filter(|v| v.is_verified()).collect();
    let mut signers: Vec<String> = Vec::new();
    for verdict in &verified {
        let did = &verdict.facts.did;
        if trusted.iter().any(|t| &t.did == did && t.is_valid_at(now)) && !signers.contains(did) {
            signers.push(did.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_semantics() {
        assert!(scope_matches("atcr.io/*/prod-*", "atcr.io/alice.test/prod-api"));
        assert!(!scope_matches("atcr.io/*/prod-*", "atcr.io/alice.test/team/prod-api"));
        assert!(scope_matches("atcr.io/**/prod-*", "atcr.io/alice.test/team/prod-api"));
        assert!(scope_matches("**", "docker.io/library/nginx"));
        assert!(!scope_matches("docker.io/*", "docker.io/library/nginx"));
        assert!(scope_matches("docker.io/**", "docker.io/library/nginx"));
        assert!(scope_matches("localhost:5000/*", "localhost:5000/app"));
        assert!(!scope_matches("localhost:5000/*", "localhost:5001/app"));
        assert!(scope_matches("*/app", "[::1]:5000/app"));
        assert!(!scope_matches("", "x"));
        assert!(scope_matches(&"*".repeat(200), "a/b")); // no blow-up
    }
}
