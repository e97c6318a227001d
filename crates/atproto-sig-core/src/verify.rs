//! The whole proof check: (proof CAR, DID document or key, expectations, now) -> [`Verdict`].
//!
//! Steps, each with its own reason code: parse the CAR (every block hash-checked); decode the
//! commit named by the header root (v3 only); the commit's DID is the expected one; the
//! signature verifies under the DID's key; its (signed) rev is not in the future beyond the
//! allowed skew; the
//! MST walk reaches `io.atcr.manifest/<rkey>` with every node validated (absence proves
//! deletion); the record decodes and names the expected digest and repository.

use crate::car::Car;
use crate::cid::Cid;
use crate::commit::Commit;
use crate::crypto::PublicKey;
use crate::did::DidDocument;
use crate::limits::Limits;
use crate::mst::{self, Lookup};
use crate::record::{MANIFEST_COLLECTION, ManifestRecord};
use crate::syntax::{is_valid_record_key, tid_timestamp_micros};

pub use crate::reason::Reason;

/// What a verified (or partly checked) proof established, for the caller to print.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Facts {
    /// Repository DID.
    pub did: String,
    /// Handle the DID document claims (not verified here).
    pub handle: Option<String>,
    /// Commit CID.
    pub commit: Option<Cid>,
    /// Commit rev.
    pub rev: Option<String>,
    /// `at://did/io.atcr.manifest/rkey`.
    pub uri: String,
    /// Record CID.
    pub record_cid: Option<Cid>,
    /// The record, once decoded.
    pub record: Option<ManifestRecord>,
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Stable reason.
    pub reason: Reason,
    /// One human sentence.
    pub message: String,
    /// What was established before the outcome was reached.
    pub facts: Facts,
}

impl Verdict {
    /// True only for [`Reason::Verified`].
    pub fn is_verified(&self) -> bool {
        self.reason == Reason::Verified
    }
}

/// Where the signing key comes from.
#[derive(Clone, Copy, Debug)]
pub enum KeySource<'a> {
    /// A parsed DID document (its `#atproto` key; its handle claim is reported).
    Document(&'a DidDocument),
    /// A key obtained otherwise (e.g. a verified did:plc audit log).
    Key(&'a PublicKey),
}

/// Which record must be proven, and what it must say.
#[derive(Clone, Copy, Debug)]
pub struct Expectation<'a> {
    /// Repository DID.
    pub did: &'a str,
    /// Record key; `None` means the digest's hex (how ATCR keys manifest records).
    pub rkey: Option<&'a str>,
    /// Image digest, `sha256:<64 hex>`.
    pub digest: &'a str,
    /// Image repository name, if the policy requires it to match.
    pub repository: Option<&'a str>,
}

/// Everything [`verify`] needs. Time is passed in; nothing is read from the environment.
#[derive(Clone, Copy, Debug)]
pub struct ProofInput<'a> {
    /// The proof CAR (`com.atproto.sync.getRecord` response).
    pub car: &'a [u8],
    /// The signing key.
    pub key: KeySource<'a>,
    /// What must be proven.
    pub expect: Expectation<'a>,
    /// Now, in microseconds since the Unix epoch.
    pub now_micros: i64,
    /// How far in the future a commit rev may be.
    pub max_clock_skew_micros: i64,
    /// Parser limits.
    pub limits: &'a Limits,
}

/// Default clock-skew allowance for commit revs (5 minutes).
pub const DEFAULT_CLOCK_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;

/// True when `digest` is `sha256:` + 64 lowercase hex characters.
pub fn is_valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
}

/// Checks a proof. Never panics; every failure is a verdict with a reason.
pub fn verify(input: &ProofInput<'_>) -> Verdict {
    let expect = input.expect;
    let rkey = expect.rkey.unwrap_or_else(|| expect.digest.strip_prefix("sha256:").unwrap_or(expect.digest));
    let mut facts = Facts { did: expect.did.to_owned(), uri: format!("at://{}/{MANIFEST_COLLECTION}/{rkey}", expect.did), ..Facts::default() };
    let verdict = |reason, message: String, facts: Facts| Verdict { reason, message, facts };

    if !is_valid_digest(expect.digest) {
        return verdict(Reason::InvalidRequest, format!("{:?} is not a sha256 digest", expect.digest), facts);
    }
    if !is_valid_record_key(rkey) {
        return verdict(Reason::InvalidRequest, format!("{rkey:?} is not a valid record key"), facts);
    }

    let key = match input.key {
        KeySource::Key(key) => key,
        KeySource::Document(doc) => {
            facts.handle.clone_from(&doc.handle);
            if doc.did != expect.did {
                let message = format!("the DID document is for {}, not {}", doc.did, expect.did);
                return verdict(Reason::DidDocumentInvalid, message, facts);
            }
            match &doc.signing_key {
                Ok(key) => key,
                Err(e) => return verdict(Reason::DidDocumentInvalid, format!("{}: {e}", expect.did), facts),
            }
        }
    };

    let malformed = |what: String, facts: Facts| verdict(Reason::ProofMalformed, format!("proof for {}: {what}", facts.uri), facts);
    let car = match Car::parse(input.car, input.limits) {
        Ok(car) => car,
        Err(e) => return malformed(e.to_string(), facts),
    };
    facts.commit = Some(car.root);
    let Some(commit_block) = car.block(&car.root) else {
        return malformed(format!("commit block {} is missing", car.root), facts);
    };
    let commit = match Commit::decode(commit_block, input.limits) {
        Ok(commit) => commit,
        Err(e) => return malformed(e.to_string(), facts),
    };
    facts.rev.clone_from(&commit.rev);
    if commit.version != 3 {
        return malformed(format!("commit version {} is not supported (only 3)", commit.version), facts);
    }
    if commit.did != expect.did {
        let message = format!("the proof's commit is signed for {}, not {}", commit.did.chars().take(80).collect::<String>(), expect.did);
        return verdict(Reason::DidMismatch, message, facts);
    }
    // The signature first: everything after it (rev, MST, record) is covered by it, so a
    // tampered rev must read as a bad signature, not as a clock problem.
    if let Err(e) = commit.verify_signature(key) {
        let message = format!("commit {} of {} does not verify under the DID's {} key: {e}", car.root, expect.did, key.curve().jwt_alg());
        return verdict(Reason::SignatureInvalid, message, facts);
    }
    let rev = commit.rev.as_deref().unwrap_or_default();
    let Some(rev_micros) = tid_timestamp_micros(rev) else {
        return malformed(format!("commit rev {rev:?} is not a TID"), facts);
    };
    if i64::try_from(rev_micros).unwrap_or(i64::MAX) > input.now_micros.saturating_add(input.max_clock_skew_micros) {
        let message = format!("commit rev {rev} is dated in the future beyond the allowed clock skew — check this node's clock");
        return verdict(Reason::RevInFuture, message, facts);
    }

    let path = format!("{MANIFEST_COLLECTION}/{rkey}");
    let walk = match mst::walk(|cid| car.block(cid), commit.data, path.as_bytes(), input.limits) {
        Ok(walk) => walk,
        Err(e) => return malformed(e.to_string(), facts),
    };
    let record_cid = match walk.lookup {
        Lookup::Present(cid) => cid,
        Lookup::Absent => {
            let message = format!(
                "the signed repository of {} (rev {rev}) has no record {path}: it was deleted or never written, so the image is not signed",
                expect.did
            );
            return verdict(Reason::RecordDeleted, message, facts);
        }
    };
    facts.record_cid = Some(record_cid);
    let Some(record_block) = car.block(&record_cid) else {
        return malformed(format!("record block {record_cid} is missing"), facts);
    };
    let record = match ManifestRecord::decode(record_block, input.limits) {
        Ok(record) => record,
        Err(e) => return verdict(Reason::RecordInvalid, format!("{}: {e}", facts.uri), facts),
    };
    facts.record = Some(record.clone());
    if record.digest != expect.digest {
        let message = format!("{} records digest {}, not the pulled {}", facts.uri, record.digest, expect.digest);
        return verdict(Reason::DigestMismatch, message, facts);
    }
    if let Some(repository) = expect.repository
        && record.repository != repository
    {
        let message = format!("{} is for repository {:?}, not {repository:?}", facts.uri, record.repository);
        return verdict(Reason::RepositoryMismatch, message, facts);
    }
    let message = format!("{} signed by {} (commit {}, rev {rev})", expect.digest, expect.did, car.root);
    verdict(Reason::Verified, message, facts)
}
