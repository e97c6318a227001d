//! The case file: YAML (or JSON), read with the policy's own spanned reader, so every error
//! points at its line and column. Paths are relative to the file's directory.
//!
//! ```yaml
//! policy: ../production.yaml          # what the cases were written for (--policy overrides)
//! config: config.toml                 # optional: atproto_registries, max_proof_age, strict_plc
//! now: "2026-11-23T00:00:00Z"         # the clock of every case without its own
//! cases:
//!   - name: our release is admitted
//!     image: atcr.io/alice.test/myapp@sha256:…
//!     material:                       # what the node holds, imported in this order
//!       - bundle: data/alice.bundle.json
//!       - document: data/did.json     # or raw files: a DID document (with its did:plc
//!         auditLog: data/log.json     # audit log) and the getRecord proof CAR signed under it
//!         proof: data/myapp.car
//!     expect: { outcome: admitted, reason: verified, rule: our-atcr-images }
//! ```

use std::path::{Path, PathBuf};

use atproto_sig_core::reason::Reason;
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::verify::is_valid_digest;
use atproto_sig_core::yaml::{self, Kind, Node, Position};

use super::{Case, CaseFile, Expect, Expected, MAX_CASES, MAX_MATERIAL, Material};

/// Every problem found in a case file, each with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.iter().map(|(at, m)| format!("{file}:{at}: {m}")).collect::<Vec<_>>().join("\n"))]
pub struct CaseFileError {
    pub file: String,
    pub problems: Vec<(Position, String)>,
}

/// Parses a case file's text; `dir` is the directory its paths are relative to.
pub fn parse(text: &str, file: &str, dir: &Path) -> Result<CaseFile, CaseFileError> {
    let mut reader = Reader { dir, problems: Vec::new() };
    let root = match yaml::parse(text) {
        Ok((root, duplicates)) => {
            reader.problems.extend(duplicates.into_iter().map(|e| (e.at, e.message)));
            root
        }
        Err(errors) => return Err(CaseFileError { file: file.to_owned(), problems: errors.into_iter().map(|e| (e.at, e.message)).collect() }),
    };
    let parsed = reader.file(&root);
    if reader.problems.is_empty()
        && let Some(parsed) = parsed
    {
        return Ok(parsed);
    }
    reader.problems.sort_by_key(|(at, _)| *at);
    Err(CaseFileError { file: file.to_owned(), problems: reader.problems })
}

struct Reader<'d> {
    dir: &'d Path,
    problems: Vec<(Position, String)>,
}

fn entries(node: &Node) -> &[(Node, Node)] {
    match &node.kind {
        Kind::Map(entries) => entries,
        _ => &[],
    }
}

fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    entries(node).iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

impl Reader<'_> {
    fn problem(&mut self, at: Position, message: impl Into<String>) {
        self.problems.push((at, message.into()));
    }

    /// A mapping with only `known` keys (an unknown one is a typo that would silently test
    /// nothing).
    fn mapping(&mut self, node: &Node, what: &str, known: &[&str]) -> bool {
        if !matches!(node.kind, Kind::Map(_)) {
            self.problem(node.at, format!("{what} must be a mapping, not {}", node.kind_name()));
            return false;
        }
        for (key, _) in entries(node) {
            let name = key.scalar_text().unwrap_or_default();
            if !known.contains(&name.as_str()) {
                self.problem(key.at, format!("unknown key {name:?} in {what} (known: {})", known.join(", ")));
            }
        }
        true
    }

    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(text) if !text.is_empty() => Some(text.to_owned()),
            _ => {
                self.problem(node.at, format!("{what} must be a non-empty string, not {}", node.kind_name()));
                None
            }
        }
    }

    fn path(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        self.text(node, what).map(|p| self.dir.join(p))
    }

    fn time(&mut self, node: &Node, what: &str) -> Option<i64> {
        let text = self.text(node, what)?;
        let parsed = atproto_sig_core::syntax::parse_datetime_micros(&text);
        if parsed.is_none() {
            self.problem(node.at, format!("{what} {text:?} is not an RFC 3339 datetime such as 2026-01-01T00:00:00Z"));
        }
        parsed
    }

    fn file(&mut self, root: &Node) -> Option<CaseFile> {
        if !self.mapping(root, "the case file", &["policy", "config", "now", "cases"]) {
            return None;
        }
        let policy = get(root, "policy").and_then(|n| self.path(n, "policy"));
        let config = get(root, "config").and_then(|n| self.path(n, "config"));
        let now = get(root, "now").and_then(|n| self.time(n, "now"));
        let Some(list) = get(root, "cases") else {
            self.problem(root.at, "no `cases:` list");
            return None;
        };
        let Kind::Seq(items) = &list.kind else {
            self.problem(list.at, format!("cases must be a list, not {}", list.kind_name()));
            return None;
        };
        if items.is_empty() {
            self.problem(list.at, "cases is empty: a policy test with no case tests nothing");
        }
        if items.len() > MAX_CASES {
            self.problem(list.at, format!("{} cases; at most {MAX_CASES} in one file", items.len()));
            return None;
        }
        let cases: Vec<Case> = items.iter().filter_map(|item| self.case(item)).collect();
        let mut seen = std::collections::HashSet::new();
        let twice: Vec<(usize, String)> = cases.iter().filter(|c| !seen.insert(c.name.as_str())).map(|c| (c.line, c.name.clone())).collect();
        for (line, name) in twice {
            self.problem(Position { line, column: 1 }, format!("two cases are named {name:?}: names say which case changed, so each must be unique"));
        }
        Some(CaseFile { policy, config, now, cases })
    }

    fn case(&mut self, node: &Node) -> Option<Case> {
        if !self.mapping(node, "a case", &["name", "image", "digest", "now", "material", "expect"]) {
            return None;
        }
        let name = match get(node, "name") {
            Some(n) => self.text(n, "name"),
            None => {
                self.problem(node.at, "a case needs a `name`");
                None
            }
        };
        let image = match get(node, "image") {
            Some(n) => self.text(n, "image").and_then(|text| self.image(n.at, text)),
            None => {
                self.problem(node.at, "a case needs an `image`");
                None
            }
        };
        let digest = get(node, "digest").and_then(|n| self.text(n, "digest"));
        let now = get(node, "now").and_then(|n| self.time(n, "now"));
        let material = get(node, "material").map(|n| self.material(n)).unwrap_or_default();
        let expect = match get(node, "expect") {
            Some(n) => self.expect(n),
            None => {
                self.problem(node.at, "a case needs `expect: {outcome: …, reason: …}`");
                None
            }
        };
        let (image, image_digest) = image?;
        let digest = match (digest, image_digest) {
            (Some(d), Some(i)) if d != i => {
                self.problem(node.at, format!("digest {d} differs from the image reference's {i}"));
                return None;
            }
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => {
                self.problem(node.at, "the image has no digest: give `image: …@sha256:…` or `digest:` (tags cannot be resolved offline)");
                return None;
            }
        };
        if !is_valid_digest(&digest) {
            self.problem(node.at, format!("{digest:?} is not sha256:<64 lowercase hex>"));
            return None;
        }
        Some(Case { name: name?, line: node.at.line, image, digest, now, material, expect: expect? })
    }

    fn image(&mut self, at: Position, text: String) -> Option<(String, Option<String>)> {
        match ImageRef::parse(&text) {
            Ok(image) => Some((text, image.digest)),
            Err(e) => {
                self.problem(at, e.to_string());
                None
            }
        }
    }

    fn material(&mut self, node: &Node) -> Vec<Material> {
        let Kind::Seq(items) = &node.kind else {
            self.problem(node.at, format!("material must be a list, not {}", node.kind_name()));
            return Vec::new();
        };
        if items.len() > MAX_MATERIAL {
            self.problem(node.at, format!("{} material entries; at most {MAX_MATERIAL} in one case", items.len()));
            return Vec::new();
        }
        items.iter().filter_map(|item| self.one_material(item)).collect()
    }

    fn one_material(&mut self, node: &Node) -> Option<Material> {
        if !self.mapping(node, "a material entry", &["bundle", "proof", "document", "auditLog", "rkey"]) {
            return None;
        }
        match (get(node, "bundle"), get(node, "proof")) {
            (Some(bundle), None) => {
                if entries(node).len() > 1 {
                    self.problem(node.at, "a `bundle:` entry takes nothing else (a bundle carries its own documents)");
                }
                self.path(bundle, "bundle").map(Material::Bundle)
            }
            (None, proof) if get(node, "document").is_some() => {
                let document = get(node, "document").and_then(|n| self.path(n, "document"));
                let proof = proof.and_then(|n| self.path(n, "proof"));
                let audit_log = get(node, "auditLog").and_then(|n| self.path(n, "auditLog"));
                let rkey = get(node, "rkey").and_then(|n| self.text(n, "rkey"));
                if rkey.is_some() && proof.is_none() {
                    self.problem(node.at, "`rkey:` names the record a `proof:` is for; there is no proof here");
                }
                Some(Material::Files { document: document?, audit_log, proof, rkey })
            }
            _ => {
                self.problem(node.at, "a material entry is either `bundle: FILE`, or `document: FILE` (its DID document, with `auditLog:` for did:plc) and optionally the `proof: FILE` signed under it");
                None
            }
        }
    }

    fn expect(&mut self, node: &Node) -> Option<Expected> {
        if !self.mapping(node, "expect", &["outcome", "reason", "rule", "signers"]) {
            return None;
        }
        let outcome = match get(node, "outcome") {
            Some(n) => self.text(n, "outcome").and_then(|word| {
                let found = Expect::parse(&word);
                if found.is_none() {
                    self.problem(n.at, format!("outcome {word:?} is not one of {}", Expect::WORDS.join(", ")));
                }
                found
            }),
            None => {
                self.problem(node.at, format!("expect needs an `outcome` ({})", Expect::WORDS.join(", ")));
                None
            }
        };
        let reason = match get(node, "reason") {
            Some(n) => self.text(n, "reason").and_then(|code| {
                if Reason::ALL.iter().any(|r| r.code() == code) {
                    Some(code)
                } else {
                    self.problem(n.at, format!("reason {code:?} is not a reason code (see `atproto-verifier --help` and the README's table)"));
                    None
                }
            }),
            None => {
                self.problem(node.at, "expect needs a `reason` (a reason code such as verified, record-deleted)");
                None
            }
        };
        let rule = get(node, "rule").and_then(|n| self.text(n, "rule"));
        let signers = get(node, "signers").and_then(|n| match &n.kind {
            Kind::Seq(items) => items.iter().map(|i| self.text(i, "a signer")).collect::<Option<Vec<_>>>(),
            _ => {
                self.problem(n.at, format!("signers must be a list of DIDs, not {}", n.kind_name()));
                None
            }
        });
        Some(Expected { outcome: outcome?, reason: reason?, rule, signers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:b0ff67b72a1d087090ad4fe635c35ad2752dd27d26f9435bb7877f40ecdc0bc3";

    fn parsed(text: &str) -> Result<CaseFile, CaseFileError> {
        parse(text, "cases.yaml", Path::new("/p"))
    }

    #[test]
    fn a_case_file_reads_with_paths_relative_to_it() {
        let text = format!(
            "policy: ../prod.yaml\nnow: \"2026-11-23T00:00:00Z\"\ncases:\n  - name: ok\n    image: atcr.io/a.test/app@{DIGEST}\n    material:\n      - bundle: b.json\n      - proof: p.car\n        document: d.json\n    expect: {{outcome: admitted, reason: verified, signers: [did:plc:x]}}\n"
        );
        let file = parsed(&text).unwrap();
        assert_eq!(file.policy, Some(PathBuf::from("/p/../prod.yaml")));
        assert_eq!(file.cases[0].digest, DIGEST);
        assert_eq!(file.cases[0].line, 4);
        assert_eq!(
            file.cases[0].material,
            [
                Material::Bundle("/p/b.json".into()),
                Material::Files { document: "/p/d.json".into(), audit_log: None, proof: Some("/p/p.car".into()), rkey: None }
            ]
        );
        assert_eq!(file.cases[0].expect.signers, Some(vec!["did:plc:x".into()]));
    }

    #[test]
    fn every_mistake_is_reported_with_its_position() {
        let text = "cases:\n  - name: a\n    image: atcr.io/a.test/app:v1\n    expect: {outcome: admited, reason: verified}\n  - name: b\n    image: x@sha256:00\n    expct: {}\n";
        let error = parsed(text).unwrap_err();
        let rendered = error.to_string();
        assert!(rendered.contains("cases.yaml:4:"), "{rendered}");
        assert!(rendered.contains("outcome \"admited\" is not one of admitted, audited, rejected, undecided"), "{rendered}");
        assert!(rendered.contains("the image has no digest"), "{rendered}");
        assert!(rendered.contains("unknown key \"expct\""), "{rendered}");
        assert!(rendered.contains("cases.yaml:6:"), "{rendered}");
    }

    #[test]
    fn names_are_unique_and_reasons_are_codes() {
        let case = |name: &str, reason: &str| format!("  - name: {name}\n    image: a.test/x@{DIGEST}\n    expect: {{outcome: rejected, reason: {reason}}}\n");
        let text = format!("cases:\n{}{}{}", case("same", "record-deleted"), case("same", "verified"), case("other", "revoked"));
        let rendered = parsed(&text).unwrap_err().to_string();
        assert!(rendered.contains("cases.yaml:5:1: two cases are named \"same\""), "{rendered}");
        assert!(rendered.contains("reason \"revoked\" is not a reason code"), "{rendered}");
        assert!(parsed("cases: []\n").unwrap_err().to_string().contains("tests nothing"));
        assert!(parsed("- 1\n").unwrap_err().to_string().contains("must be a mapping"));
    }
}
