//! Policy tests (`policy test FILE`): a file of cases — an image at a digest, the recorded proof
//! material a node would hold for it, the outcome and reason expected — decided offline against
//! a trust policy, as `kyverno test` and `gator verify` do for theirs, so a policy change is
//! reviewed with its consequences.
//!
//! Each case is decided by the engine itself, exactly as an offline node decides: its material
//! (bundles, or raw proof CARs with their DID documents) is imported into a scratch cache of its
//! own through the bundle import (every entry verified, nothing moving backwards), then
//! [`Session::decide`] runs with no network and no registry. A forged proof in a case is refused
//! on import just as it would be on a node. The clock is the file's (`now`), so a recorded
//! proof does not age out of its own test.

mod parse;

use std::path::{Path, PathBuf};
use std::time::Duration;

use atproto_sig_core::policy::{Decision, Outcome, Policy};
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::reference::ImageRef;
use base64::Engine;

pub use parse::parse;

use crate::bundle::{self, Bundle};
use crate::config::Config;
use crate::engine::{Class, Session, SessionOptions};
use crate::fsio::read_capped;
use crate::limits::NodeLimits;
use crate::material::store::{Cache, DidEntry, LocatorEntry, ProofEntry};
use crate::remote::{Deadline, InFlight, Remote};

/// Largest case file read.
pub const MAX_CASE_FILE_BYTES: usize = 1 << 20;
/// Most cases in one file.
pub const MAX_CASES: usize = 1_000;
/// Most material entries in one case.
pub const MAX_MATERIAL: usize = 32;
/// Time allowed to decide one case (offline: reading the scratch cache only).
const CASE_BUDGET: Duration = Duration::from_secs(10);

/// A parsed case file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseFile {
    /// The policy the cases were written for (resolved against the file's directory).
    pub policy: Option<PathBuf>,
    /// config.toml to decide with (`atproto_registries`, `max_proof_age`, `strict_plc`…).
    pub config: Option<PathBuf>,
    /// The clock for every case without its own, microseconds since the epoch.
    pub now: Option<i64>,
    pub cases: Vec<Case>,
}

/// One case: an image, what a node holds for it, and what the policy must decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    /// 1-based line of the case in its file.
    pub line: usize,
    pub image: String,
    /// The digest decided (from `digest:` or the reference's own).
    pub digest: String,
    pub now: Option<i64>,
    /// Imported in this order, as a node would receive them.
    pub material: Vec<Material>,
    pub expect: Expected,
}

/// Recorded proof material for a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Material {
    /// A bundle file (`atproto-verifier bundle create`).
    Bundle(PathBuf),
    /// A DID document (with its did:plc audit log: a did:plc document is only accepted with
    /// the log that proves it), and a record proof CAR (`com.atproto.sync.getRecord`) signed
    /// under it, if any: a node may know a signer without holding a record for every digest.
    Files { document: PathBuf, audit_log: Option<PathBuf>, proof: Option<PathBuf>, rkey: Option<String> },
}

/// What a case expects; `None` fields are not compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub outcome: Expect,
    pub reason: String,
    pub rule: Option<String>,
    pub signers: Option<Vec<String>>,
}

/// An outcome as a case file names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Admitted,
    /// Admitted by an audit-only rule that would have rejected it.
    Audited,
    Rejected,
    Undecided,
}

impl Expect {
    pub const WORDS: [&'static str; 4] = ["admitted", "audited", "rejected", "undecided"];

    pub fn parse(word: &str) -> Option<Expect> {
        match word {
            "admitted" => Some(Expect::Admitted),
            "audited" => Some(Expect::Audited),
            "rejected" => Some(Expect::Rejected),
            "undecided" => Some(Expect::Undecided),
            _ => None,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Expect::Admitted => "admitted",
            Expect::Audited => "audited",
            Expect::Rejected => "rejected",
            Expect::Undecided => "undecided",
        }
    }

    /// How a decision reads in these words.
    pub fn of(decision: &Decision) -> Expect {
        match (decision.outcome, Class::of(decision)) {
            (Outcome::AuditAdmit, _) => Expect::Audited,
            (_, Class::Admitted) => Expect::Admitted,
            (_, Class::Rejected) => Expect::Rejected,
            (_, Class::Undecided) => Expect::Undecided,
        }
    }
}

/// What the policy decided for a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actual {
    pub outcome: Expect,
    pub reason: String,
    pub rule: Option<String>,
    pub signers: Vec<String>,
    pub message: String,
}

/// A case's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseResult {
    /// Decided as expected.
    Passed(Actual),
    /// Decided otherwise: the fields that differ, as (field, expected, actual).
    Failed { actual: Actual, differences: Vec<(&'static str, String, String)> },
    /// Could not be run (unreadable material, an image without a digest).
    Error(String),
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        matches!(self, CaseResult::Passed(_))
    }
}

/// The fields of `actual` that differ from `expected`.
fn differences(expected: &Expected, actual: &Actual) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    if expected.outcome != actual.outcome {
        out.push(("outcome", expected.outcome.word().to_owned(), actual.outcome.word().to_owned()));
    }
    if expected.reason != actual.reason {
        out.push(("reason", expected.reason.clone(), actual.reason.clone()));
    }
    if let Some(rule) = &expected.rule
        && Some(rule) != actual.rule.as_ref()
    {
        out.push(("rule", rule.clone(), actual.rule.clone().unwrap_or_else(|| "none".into())));
    }
    if let Some(signers) = &expected.signers {
        let (mut want, mut got) = (signers.clone(), actual.signers.clone());
        want.sort();
        got.sort();
        if want != got {
            out.push(("signers", signers.join(", "), actual.signers.join(", ")));
        }
    }
    out
}

/// Decides every case against `policy`, never stopping at the first failure.
pub fn run(file: &CaseFile, policy: &Policy, config: &Config, default_now: i64) -> Vec<CaseResult> {
    file.cases.iter().map(|case| run_case(case, policy, config, file.now.unwrap_or(default_now))).collect()
}

fn run_case(case: &Case, policy: &Policy, config: &Config, file_now: i64) -> CaseResult {
    let now = case.now.unwrap_or(file_now);
    let scratch = match tempfile::Builder::new().prefix("atproto-verifier-policy-test.").tempdir() {
        Ok(dir) => dir,
        Err(e) => return CaseResult::Error(format!("cannot make a scratch cache: {e}")),
    };
    let config = Config { offline: true, cache_dir: scratch.path().to_owned(), bundle_dir: None, ..config.clone() };
    let cache = Cache::new(scratch.path());
    let mut notes = Vec::new();
    for (index, material) in case.material.iter().enumerate() {
        let bundle = match material_bundle(material, &case.digest, now) {
            Ok(bundle) => bundle,
            Err(e) => return CaseResult::Error(format!("material {}: {e}", index + 1)),
        };
        let report = bundle::import(&bundle, &cache, &material.source(), &config, now);
        // The locator of raw files is this runner's own (made for every proof): its refusal
        // (a deletion proof locates no record) is not the material's.
        let synthesized = |r: &String| matches!(material, Material::Files { .. }) && r.starts_with("locator ");
        notes.extend(report.refused.iter().filter(|r| !synthesized(r)).map(|r| format!("material {}: refused: {r}", index + 1)));
    }
    let Ok(image) = ImageRef::parse(&case.image) else { return CaseResult::Error(format!("{:?} is not an image reference", case.image)) };
    let remote = Remote::unreachable();
    let options = SessionOptions { registry: false, ..SessionOptions::default() };
    let session = Session::new(&config, policy, &remote, now, Deadline::after(CASE_BUDGET), &InFlight::default(), options);
    let (decision, _) = session.decide(&image, &case.digest);
    if session.requests().identity + session.requests().registry > 0 {
        // Offline with no registry: a request here is a bug, and a test that passed through the
        // network would prove nothing.
        return CaseResult::Error("the decision made a network request".into());
    }
    let mut message = decision.message.clone();
    for note in notes {
        message.push_str("; ");
        message.push_str(&note);
    }
    let actual = Actual {
        outcome: Expect::of(&decision),
        reason: decision.reason.code().to_owned(),
        rule: decision.rule.clone(),
        signers: decision.signers.clone(),
        message,
    };
    let differences = differences(&case.expect, &actual);
    if differences.is_empty() { CaseResult::Passed(actual) } else { CaseResult::Failed { actual, differences } }
}

impl Material {
    /// Where the material came from, as the cache records it.
    fn source(&self) -> String {
        match self {
            Material::Bundle(path) => format!("bundle:{}", path.display()),
            Material::Files { document, proof, .. } => format!("policy-test:{}", proof.as_ref().unwrap_or(document).display()),
        }
    }
}

/// The material as a bundle: a bundle file read (capped) and parsed; raw files wrapped in one.
fn material_bundle(material: &Material, digest: &str, now: i64) -> Result<Bundle, String> {
    let limits = NodeLimits::DEFAULT;
    let read = |path: &Path, max: usize| read_capped(path, max).map_err(|e| e.to_string());
    let text = |path: &Path, max: usize| read(path, max).and_then(|b| String::from_utf8(b).map_err(|_| format!("{}: not UTF-8 text", path.display())));
    match material {
        Material::Bundle(path) => bundle::read(path).map_err(|e| format!("{}: {e}", path.display())),
        Material::Files { document, audit_log, proof, rkey } => {
            let car_bytes = proof.as_deref().map(|p| read(p, limits.proof)).transpose()?;
            let document_text = text(document, limits.did_document)?;
            let audit_log = audit_log.as_deref().map(|p| text(p, limits.audit_log)).transpose()?;
            let did = serde_json::from_str::<serde_json::Value>(&document_text)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
                .ok_or_else(|| format!("{}: not a DID document (no \"id\")", document.display()))?;
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
            let rkey = rkey.clone().unwrap_or_else(|| hex.to_owned());
            let source = material.source();
            // As `bundle create` records it: where the digest's record is (a node that held the
            // proof knows the record; its absence later is a deletion, not a miss).
            let locators = if car_bytes.is_none() {
                Vec::new()
            } else {
                vec![LocatorEntry { did: did.clone(), digest: digest.to_owned(), rkey: rkey.clone(), fetched_at: now }]
            };
            Ok(Bundle {
                format: bundle::FORMAT.into(),
                version: bundle::VERSION,
                created_at: atproto_sig_core::syntax::format_datetime_micros(now),
                dids: vec![DidEntry { did: did.clone(), fetched_at: now, source: source.clone(), document: document_text, audit_log }],
                locators,
                proofs: car_bytes
                    .map(|car| ProofEntry {
                        did,
                        collection: MANIFEST_COLLECTION.into(),
                        rkey,
                        fetched_at: now,
                        source,
                        car: base64::engine::general_purpose::STANDARD.encode(car),
                    })
                    .into_iter()
                    .collect(),
                collections: Vec::new(),
                handles: Vec::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actual(outcome: Expect, reason: &str, rule: Option<&str>, signers: &[&str]) -> Actual {
        Actual {
            outcome,
            reason: reason.into(),
            rule: rule.map(str::to_owned),
            signers: signers.iter().map(|s| (*s).to_owned()).collect(),
            message: String::new(),
        }
    }

    #[test]
    fn only_the_fields_a_case_names_are_compared() {
        let expected = Expected { outcome: Expect::Admitted, reason: "verified".into(), rule: None, signers: None };
        assert!(differences(&expected, &actual(Expect::Admitted, "verified", Some("any"), &["did:plc:a"])).is_empty());
        let expected = Expected { rule: Some("prod".into()), signers: Some(vec!["did:plc:b".into(), "did:plc:a".into()]), ..expected };
        assert!(differences(&expected, &actual(Expect::Admitted, "verified", Some("prod"), &["did:plc:a", "did:plc:b"])).is_empty());
        let got = differences(&expected, &actual(Expect::Rejected, "too-few-signatures", Some("other"), &["did:plc:a"]));
        let fields: Vec<&str> = got.iter().map(|(f, _, _)| *f).collect();
        assert_eq!(fields, ["outcome", "reason", "rule", "signers"]);
        assert_eq!(got[0], ("outcome", "admitted".into(), "rejected".into()));
    }
}
