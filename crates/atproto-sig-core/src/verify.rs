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
use crate::known::KnownBlocks;
use crate::limits::Limits;
use crate::mst::{self, Lookup};
use crate::record::{MANIFEST_COLLECTION, ManifestRecord};
use crate::syntax::{is_valid_record_key, tid_timestamp_micros};
use sha2::{Digest as _, Sha256};

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
    /// The commit's signature verified under the DID's key: from here on, everything the
    /// commit says (its rev, the tree, hence the record's presence or absence) is signed.
    pub signature_verified: bool,
    /// The MST path to the record verified under that signed commit: the record's presence
    /// (`record_cid`) or its absence is proven by the signature.
    pub path_proven: bool,
    /// The key the commit's signature verified under, once it did: two DIDs sharing one key
    /// are one signer for `minSignatures`. Carried as parsed (`to_did_key` for its text), so
    /// the hot path never re-encodes it.
    pub signing_key: Option<PublicKey>,
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
    /// Image digest, `sha256:<64 hex>`, that the record must name. `None`: no digest is
    /// expected (accepting a proof into a cache, where only its record key is known); then
    /// `rkey` is required, and [`Reason::Verified`] means only "the record is proven present and
    /// decodes", never an admission.
    pub digest: Option<&'a str>,
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
    /// Blocks this process already checked (`None`: check every block): a process that checks
    /// many proofs keeps one, bounded ([`KnownBlocks`]). The signature is verified either way,
    /// and the verdict is the same either way.
    pub known_blocks: Option<&'a KnownBlocks>,
}

impl ProofInput<'_> {
    fn known(&self) -> &KnownBlocks {
        static NONE: KnownBlocks = KnownBlocks::disabled();
        self.known_blocks.unwrap_or(&NONE)
    }
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
    let digest = expect.digest.unwrap_or_default();
    let rkey = expect.rkey.unwrap_or_else(|| digest.strip_prefix("sha256:").unwrap_or(digest));
    let mut facts = Facts { did: expect.did.to_owned(), uri: record_uri(expect.did, rkey), ..Facts::default() };
    match verified(input, rkey, &mut facts) {
        Ok(message) => Verdict { reason: Reason::Verified, message, facts },
        Err((reason, message)) => Verdict { reason, message, facts },
    }
}

/// `at://<did>/io.atcr.manifest/<rkey>`, written in one allocation (it is made for every check).
fn record_uri(did: &str, rkey: &str) -> String {
    let mut uri = String::with_capacity(URI_PREFIX.len() + did.len() + 1 + MANIFEST_COLLECTION.len() + 1 + rkey.len());
    for part in [URI_PREFIX, did, "/", MANIFEST_COLLECTION, "/", rkey] {
        uri.push_str(part);
    }
    uri
}

const URI_PREFIX: &str = "at://";

/// The record's path in the repository (`io.atcr.manifest/<rkey>`): the tail of its URI.
fn record_path<'u>(uri: &'u str, did: &str) -> &'u str {
    uri.get(URI_PREFIX.len() + did.len() + 1..).unwrap_or_default()
}

/// A failed step: the reason and the sentence for people (the facts gathered so far go with it).
type Step<T> = Result<T, (Reason, String)>;

/// The checks in order, each on what the previous one established; the admission's sentence.
fn verified(input: &ProofInput<'_>, rkey: &str, facts: &mut Facts) -> Step<String> {
    let expect = input.expect;
    if let Some(digest) = expect.digest.filter(|d| !is_valid_digest(d)) {
        return Err((Reason::InvalidRequest, format!("{digest:?} is not a sha256 digest")));
    }
    if !is_valid_record_key(rkey) {
        return Err((Reason::InvalidRequest, format!("{rkey:?} is not a valid record key")));
    }
    let key = signing_key(input, facts)?;
    let car = Car::parse_known(input.car, input.limits, input.known()).map_err(|e| malformed(facts, e))?;
    facts.commit = Some(car.root);
    // The commit as held by the memo (with the digest of its signed bytes), or decoded here.
    let held = car.known_block(&car.root);
    let decoded;
    let (commit, known_digest) = match held.as_deref().and_then(|block| block.commit(input.limits)) {
        Some((commit, digest)) => (commit, Some(*digest)),
        None => {
            decoded = Commit::of_car(&car, input.limits).map_err(|e| malformed(facts, e))?;
            (&decoded, None)
        }
    };
    signed_commit(input, key, &car, commit, known_digest, facts)?;
    let rev = commit.rev.as_deref().unwrap_or_default();
    let record = proven_record(input, &car, commit, rkey, facts)?;
    // The record goes into the facts whatever it says: a mismatch is reported with it.
    let outcome = matching(expect, &record, &facts.uri).map(|()| admitted(expect, &facts.uri, &car.root, rev));
    facts.record = Some(record);
    outcome
}

/// The sentence for a verified proof, written into one buffer of the size it needs (it is made
/// for every check: no formatting machinery).
fn admitted(expect: Expectation<'_>, uri: &str, commit: &Cid, rev: &str) -> String {
    let commit = commit.text();
    let parts: [&str; 8] = match expect.digest {
        Some(digest) => [digest, " signed by ", expect.did, " (commit ", commit.as_str(), ", rev ", rev, ")"],
        None => [uri, " is present in the signed repository of ", expect.did, " (commit ", commit.as_str(), ", rev ", rev, ")"],
    };
    let mut message = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        message.push_str(part);
    }
    message
}

/// The record names the expected digest and repository (when they are expected).
fn matching(expect: Expectation<'_>, record: &ManifestRecord, uri: &str) -> Step<()> {
    if let Some(digest) = expect.digest
        && record.digest != digest
    {
        return Err((Reason::DigestMismatch, format!("{uri} records digest {}, not the pulled {digest}", record.digest)));
    }
    if let Some(repository) = expect.repository.filter(|_| expect.digest.is_some())
        && record.repository != repository
    {
        return Err((Reason::RepositoryMismatch, format!("{uri} is for repository {:?}, not {repository:?}", record.repository)));
    }
    Ok(())
}

fn malformed(facts: &Facts, what: impl std::fmt::Display) -> (Reason, String) {
    (Reason::ProofMalformed, format!("proof for {}: {what}", facts.uri))
}

/// The key the commit must be signed with: given, or the DID document's `#atproto` key.
fn signing_key<'k>(input: &ProofInput<'k>, facts: &mut Facts) -> Step<&'k PublicKey> {
    match input.key {
        KeySource::Key(key) => Ok(key),
        KeySource::Document(doc) => {
            facts.handle.clone_from(&doc.handle);
            if doc.did != input.expect.did {
                return Err((Reason::DidDocumentInvalid, format!("the DID document is for {}, not {}", doc.did, input.expect.did)));
            }
            doc.signing_key.as_ref().map_err(|e| (Reason::DidDocumentInvalid, format!("{}: {e}", input.expect.did)))
        }
    }
}

/// The commit is v3, for the expected DID, with a valid signature under `key` (over
/// `known_digest` when the memo holds the commit), and its rev is a TID not later than the
/// clock allows.
fn signed_commit(input: &ProofInput<'_>, key: &PublicKey, car: &Car<'_>, commit: &Commit, known_digest: Option<[u8; 32]>, facts: &mut Facts) -> Step<()> {
    let expect = input.expect;
    facts.rev.clone_from(&commit.rev);
    if commit.version != 3 {
        return Err(malformed(facts, format!("commit version {} is not supported (only 3)", commit.version)));
    }
    if commit.did != expect.did {
        let message = format!("the proof's commit is signed for {}, not {}", commit.did.chars().take(80).collect::<String>(), expect.did);
        return Err((Reason::DidMismatch, message));
    }
    // The signature first: everything after it (rev, MST, record) is covered by it, so a
    // tampered rev must read as a bad signature, not as a clock problem.
    let digest = known_digest.unwrap_or_else(|| Sha256::digest(commit.unsigned_bytes()).into());
    if let Err(e) = key.verify_prehash(&digest, &commit.sig) {
        let message = format!("commit {} of {} does not verify under the DID's {} key: {e}", car.root, expect.did, key.curve().jwt_alg());
        return Err((Reason::SignatureInvalid, message));
    }
    if known_digest.is_none()
        && let Some(block) = car.block(&car.root)
    {
        input.known().remember_commit(&car.root, block, commit, digest, input.limits);
    }
    facts.signature_verified = true;
    facts.signing_key = Some(key.clone());
    let rev = commit.rev.as_deref().unwrap_or_default();
    let rev_micros = tid_timestamp_micros(rev).ok_or_else(|| malformed(facts, format!("commit rev {rev:?} is not a TID")))?;
    if i64::try_from(rev_micros).unwrap_or(i64::MAX) > input.now_micros.saturating_add(input.max_clock_skew_micros) {
        return Err((Reason::RevInFuture, format!("commit rev {rev} is dated in the future beyond the allowed clock skew — check this node's clock")));
    }
    Ok(())
}

/// The record at `io.atcr.manifest/<rkey>` in the signed tree, decoded; its absence is proven
/// deletion (`record-deleted`).
fn proven_record(input: &ProofInput<'_>, car: &Car<'_>, commit: &Commit, rkey: &str, facts: &mut Facts) -> Step<ManifestRecord> {
    let path = record_path(&facts.uri, input.expect.did).as_bytes();
    let walk = mst::walk_car(car, commit.data, path, input.limits, input.known()).map_err(|e| malformed(facts, e))?;
    facts.path_proven = true;
    let record_cid = match walk.lookup {
        Lookup::Present(cid) => cid,
        Lookup::Absent => {
            let rev = commit.rev.as_deref().unwrap_or_default();
            let message = format!(
                "the signed repository of {} (rev {rev}) has no record {MANIFEST_COLLECTION}/{rkey}: it was deleted or never written, so the image is not signed",
                input.expect.did
            );
            return Err((Reason::RecordDeleted, message));
        }
    };
    facts.record_cid = Some(record_cid);
    let record_block = car.block(&record_cid).ok_or_else(|| malformed(facts, format!("record block {record_cid} is missing")))?;
    if let Some(record) = car.known_block(&record_cid).as_deref().and_then(|block| block.record(input.limits)) {
        return Ok(record.clone());
    }
    let record = ManifestRecord::decode(record_block, input.limits).map_err(|e| (Reason::RecordInvalid, format!("{}: {e}", facts.uri)))?;
    input.known().remember_record(&record_cid, record_block, &record, input.limits);
    Ok(record)
}
