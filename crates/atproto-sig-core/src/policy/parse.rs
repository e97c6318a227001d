//! Reading a policy file: the spanned YAML tree checked key by key, every problem collected
//! with its position and a hint; limits keep hostile files cheap.

use super::{Action, Issue, MAX_POLICY_BYTES, Policy, Requirement, Rule, TrustedDid};
use crate::syntax::{is_valid_did, parse_datetime_micros};
use crate::yaml::{self, Kind, Node, Position};

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
    if let Some(problem) = never_matching(scope) {
        checker.error(node.at, format!("scope {scope:?} can never match: {}", problem.0), problem.1);
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

/// Why a scope can match no image reference, and the fix: scopes are matched against
/// canonical `host/path` (no tag, no digest, no trailing `/`), with `*` and `**` as the only
/// wildcards (`[` and `]` are literal, and appear in a reference only around an IPv6 host).
fn never_matching(scope: &str) -> Option<(String, String)> {
    let mut segments = scope.split('/');
    let host = segments.next().unwrap_or_default();
    let path: Vec<&str> = segments.collect();
    if scope.ends_with('/') {
        return Some((
            "it ends with '/', and no image path does".into(),
            format!("write {:?} (that path) or {:?} (everything under it)", scope.trim_end_matches('/'), format!("{scope}**")),
        ));
    }
    if path.is_empty() && !host.contains('*') {
        return Some((
            "it names a registry without a path, and every image has one".into(),
            format!("write {:?} for every image of that registry", format!("{host}/**")),
        ));
    }
    if path.iter().any(|s| s.is_empty()) {
        return Some(("it has an empty path segment ('//')".into(), "remove the doubled '/'".into()));
    }
    if let Some(segment) = path.iter().find(|s| s.contains(':')) {
        let (name, tag) = segment.split_once(':').unwrap_or((segment, ""));
        return Some((
            format!("':{tag}' is a tag, and scopes match registry and repository only (host/path), never tags"),
            format!("drop the tag: {:?} (a rule covers every tag and digest of a repository)", scope.replacen(&format!("{name}:{tag}"), name, 1)),
        ));
    }
    if path.iter().any(|s| s.contains('[') || s.contains(']')) || (host.contains(['[', ']']) && !is_ipv6_host(host)) {
        return Some((
            "'[' and ']' are not character classes here (only `*` and `**` are wildcards), and no image path contains them".into(),
            "write one rule per name, or use `*` (any run of characters within a segment)".into(),
        ));
    }
    None
}

/// `[v6]` or `[v6]:port`, as an IPv6 registry host is written.
fn is_ipv6_host(host: &str) -> bool {
    host.starts_with('[') && host.matches('[').count() == 1 && host.matches(']').count() == 1 && crate::reference::canonical_host(host).is_ok()
}

/// A rule's own `trustedDIDs`: each listed under the top-level `trustedDIDs`, once.
fn parse_required_dids(checker: &mut Checker, list: &Node, trusted: &[TrustedDid], context: &str) -> Vec<String> {
    let mut trusted_dids = Vec::new();
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
    trusted_dids
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
    let trusted_dids = get(&entries, "trustedDIDs").map(|list| parse_required_dids(checker, list, trusted, context)).unwrap_or_default();
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

/// `version`: 1.0 is the only one.
fn parse_version(checker: &mut Checker, node: Option<&Node>, root: &Node) -> String {
    match node {
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
    }
}

/// The top-level `trustedDIDs`: each DID once, with its name and validity window.
fn parse_trusted(checker: &mut Checker, node: &Node) -> Vec<TrustedDid> {
    let mut trusted = Vec::new();
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
        if trusted.iter().any(|t: &TrustedDid| t.did == did) || !check_did_key(checker, key, &did) {
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
    trusted
}

/// `policies`: the rules in file order (the first match applies).
fn parse_rules(checker: &mut Checker, node: Option<&Node>, root: &Node, trusted: &[TrustedDid]) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    match node.map(|n| (&n.kind, n.at)) {
        Some((Kind::Seq(items), at)) => {
            if items.len() > MAX_RULES {
                checker.error(at, format!("`policies` holds {} rules, more than {MAX_RULES}", items.len()), "merge rules with globs (`*`, `**`)");
            }
            for item in items.iter().take(MAX_RULES) {
                let fields = checker.mapping(item, "a policy", &["name", "scope", "require", "action", "pinDigest"]);
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
                        check_scope(checker, n, &written);
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
                    Some(n) => parse_requirement(checker, n, trusted, &context),
                    None => {
                        checker.error(item.at, format!("{context} has no `require`"), "add `require: { signature: true }` (or false)");
                        Requirement { signature: true, trusted_dids: Vec::new(), min_signatures: 1 }
                    }
                };
                let action = parse_action(checker, get(&fields, "action"), &context);
                let pin_digest = parse_pin_digest(checker, get(&fields, "pinDigest"), &context);
                rules.push(Rule { name, scope, require, action, pin_digest, at: item.at });
            }
        }
        Some((_, at)) => checker.error(at, "`policies` must be a list", ""),
        None => checker.warn(root.at, "the policy has no `policies`", "every image falls to the `default` rule"),
    }
    rules
}

/// `default`: the rule for images no policy matches.
fn parse_default(checker: &mut Checker, node: &Node, trusted: &[TrustedDid]) -> Rule {
    let fields = checker.mapping(node, "`default`", &["require", "action", "pinDigest"]);
    let require = match get(&fields, "require") {
        Some(n) => parse_requirement(checker, n, trusted, "the default"),
        None => {
            checker.error(node.at, "`default` has no `require`", "add `require: { signature: true }` (or false)");
            Requirement { signature: true, trusted_dids: Vec::new(), min_signatures: 1 }
        }
    };
    let action = parse_action(checker, get(&fields, "action"), "the default");
    let pin_digest = parse_pin_digest(checker, get(&fields, "pinDigest"), "the default");
    Rule { name: "default".into(), scope: "**".into(), require, action, pin_digest, at: node.at }
}

/// `pinDigest`: true when absent.
fn parse_pin_digest(checker: &mut Checker, node: Option<&Node>, context: &str) -> bool {
    match node.map(|n| (&n.kind, n.at)) {
        None => true,
        Some((Kind::Bool(b), _)) => *b,
        Some((_, at)) => {
            checker.error(at, format!("`pinDigest` of {context} must be true or false"), "");
            true
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
    // Editors on some systems start UTF-8 files with a byte-order mark: it is not part of the
    // first key (YAML 1.2 allows it there). Positions stay those of the text after it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (root, duplicates) = yaml::parse(text).map_err(|errors| errors.into_iter().map(|e| Issue::new(e.at, e.message, "")).collect::<Vec<_>>())?;
    let mut checker = Checker::default();
    for duplicate in duplicates {
        checker.error(duplicate.at, duplicate.message, "remove or merge one of them");
    }
    let top = checker.mapping(&root, "the policy", &["version", "trustedDIDs", "policies", "default"]);

    let version = parse_version(&mut checker, get(&top, "version"), &root);
    let trusted = get(&top, "trustedDIDs").filter(|n| !matches!(n.kind, Kind::Null)).map(|n| parse_trusted(&mut checker, n)).unwrap_or_default();

    let rules = parse_rules(&mut checker, get(&top, "policies"), &root, &trusted);

    let default = get(&top, "default").map(|node| parse_default(&mut checker, node, &trusted));
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
