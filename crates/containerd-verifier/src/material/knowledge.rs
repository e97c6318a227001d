//! What this node knows never moves backwards, never looks fresher than it is, and gets in one
//! way.
//!
//! Freshness rests only on time that is signed (a commit's `rev`) or that this node measured
//! itself (its own clock at fetch or import). A `fetchedAt` inside a bundle is a claim by
//! whoever made the bundle: it can make an entry look older, never newer.
//!
//! Accepting material into the cache is one function per kind, used by every writer (the
//! engine's fetches, bundle import, and the watcher next): [`accept_proof`] (verified by the
//! core, its signature checked, not older than the proof held for the same record) and
//! [`accept_document`] (a did:plc document agreeing with its audit log, never an older log).

use atproto_sig_core::car::Car;
use atproto_sig_core::commit::Commit;
use atproto_sig_core::did::{DidDocument, DidMethod, did_method};
use atproto_sig_core::plc::verify_audit_log;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::syntax::format_datetime_micros;
use atproto_sig_core::verify::{Expectation, KeySource, ProofInput, Verdict, verify};
use atproto_sig_core::{KnownBlocks, Limits, ParsedKeys, Reason};
use base64::Engine;

use crate::material::store::{Cache, CommitSeen, DidEntry, Kind, ProofEntry, RepoEntry, StateSeen, StateShard};

/// The signed commit rev of a proof CAR and its time in microseconds, read without checking
/// the signature: meaningful only for a proof whose signature was checked before it was
/// stored (every proof in the cache), or will be checked before it is used.
pub fn commit_rev(car: &[u8]) -> Option<(String, i64)> {
    let commit = root_commit(car)?;
    Some((commit.rev.clone()?, commit.rev_micros()?))
}

/// The commit a proof CAR's header names, decoded (not verified).
fn root_commit(car: &[u8]) -> Option<Commit> {
    let limits = Limits::collection();
    Commit::of_car(&Car::parse(car, &limits).ok()?, &limits).ok()
}

/// The rev of a cached proof entry, if its CAR is readable.
pub fn entry_rev(entry: &ProofEntry) -> Option<(String, i64)> {
    decode_car(entry).as_deref().and_then(commit_rev)
}

/// The CAR bytes of a proof entry.
pub fn decode_car(entry: &ProofEntry) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(&entry.car).ok()
}

/// The rev of the proof this node holds for `did`/`collection`/`rkey` when it is newer than
/// `rev` (TIDs sort in time order): a proof at `rev` would be a rollback.
pub fn newer_held(cache: &Cache, did: &str, collection: &str, rkey: &str, rev: &str) -> Option<String> {
    let held: ProofEntry = cache.read(Kind::Proof, &[did, collection, rkey])?;
    entry_rev(&held).map(|(r, _)| r).filter(|held| held.as_str() > rev)
}

/// The message for a refused rollback.
pub fn rollback_message(what: &str, rev: &str, held: &str) -> String {
    format!(
        "{what} is at commit rev {rev}, older than what this node already holds (rev {held}) — refusing to move backwards (a replayed old proof could undo a revocation)"
    )
}

/// The time to store for material fetched at `claimed` (someone else's word), imported at
/// `now` (this node's clock), whose content was signed at `signed` (if known): never later
/// than any of them, so it can only look older than it is.
pub fn stored_fetch_time(claimed: i64, now: i64, signed: Option<i64>) -> i64 {
    claimed.min(now).min(signed.unwrap_or(i64::MAX))
}

/// Why a proof or a DID document is not accepted into the cache.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The core's check failed before the signature was verified (or the collection is not
    /// `io.atcr.manifest`): nothing about this proof is known to be signed.
    #[error("{message} ({})", reason.code())]
    Unproven { reason: Reason, message: String },
    /// Older than what this node holds for the same record.
    #[error("{}", rollback_message("this proof", .rev, .held))]
    RolledBack { rev: String, held: String },
    #[error("{0}")]
    Document(String),
    #[error("no audit log: a did:plc document cannot be checked without it")]
    NoAuditLog,
    #[error("audit log invalid: {0}")]
    AuditLog(String),
    #[error("the audit log ends in a tombstone: the DID is deactivated")]
    Deactivated,
    #[error("the document's #atproto key differs from the key its audit log establishes")]
    KeyDiffers,
    #[error("the document's PDS or handle differs from its audit log")]
    ServiceDiffers,
    #[error("its audit log is a prefix of the one this node already holds — older than what this node already holds (a rotated-out key must not come back)")]
    OlderAuditLog,
    /// A did:plc audit log that is neither an extension of the held one nor a valid
    /// nullification of it.
    #[error(
        "its audit log forks from the one this node holds at operation {operation}, and that operation is not a valid nullification of the held history ({problem}) — refused: a rotation key the owner already removed cannot take the DID back"
    )]
    ForkedAuditLog { operation: String, problem: String },
    /// A did:plc audit log that nullifies operations this node holds, offered by anything but
    /// the PLC directory itself. The 72-hour recovery window is checked against `createdAt`,
    /// which nobody signs: only the directory, dating operations with its own clock, can vouch
    /// that a recovery came in time.
    #[error(
        "its audit log nullifies operation {operation} of the one this node holds (a did:plc recovery) — refused: the recovery window rests on createdAt, which no signature covers, so a recovery is taken only from the PLC directory (online) or when the operator says so: bundle import --accept-plc-recovery"
    )]
    PlcRecovery { operation: String },
    #[error(
        "it replaces the #atproto key of the did:web document this node holds, and did:web has no signed history to check that against — refused; if the key change is expected, import with --allow-did-web-key-change"
    )]
    DidWebKeyChange,
    /// The cache could not take a collection state (disk full, permissions): nothing of it is
    /// in force, and the caller still stores what it proves record by record.
    #[error("this collection state could not be written to the cache: {0}")]
    StateUnwritable(String),
    /// A collection state older than the one held.
    #[error("this collection state is at rev {rev}, older than the one this node already holds (rev {held}) — refusing to move backwards")]
    OlderState { rev: String, held: String },
}

/// A proof outdated by the newest signed collection state: at `state_rev` (newer than the
/// proof's `rev`), the record is gone (`now` is `None`) or is another record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Supersession {
    pub did: String,
    pub rkey: String,
    pub rev: String,
    pub state_rev: String,
    pub now: Option<String>,
    /// The held state's shard for this record could not be read back (a damaged cache): the
    /// proof cannot be shown to agree with the newest state, so it is not used.
    pub unreadable: bool,
}

impl Supersession {
    /// True when the record is gone at the newer state (a revocation), not merely changed.
    pub fn gone(&self) -> bool {
        self.now.is_none() && !self.unreadable
    }
}

impl std::fmt::Display for Supersession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self;
        let at = format!("at://{}/{MANIFEST_COLLECTION}/{}", s.did, s.rkey);
        if s.unreadable {
            return write!(
                f,
                "the signed state of {}'s collection at rev {} that this node holds cannot be read back for {at} (a damaged cache entry): this proof at rev {} cannot be checked against it — import the state again (`atproto-verifier bundle create --did {}` on a connected machine)",
                s.did, s.state_rev, s.rev, s.did
            );
        }
        match &s.now {
            None => write!(
                f,
                "{at} is gone from the signed state of {}'s collection at rev {}, newer than this proof's rev {}: the record was deleted, so the image is revoked (whatever older proof arrives later)",
                s.did, s.state_rev, s.rev
            ),
            Some(cid) => write!(
                f,
                "{at} was replaced (record {cid}) in the signed state of {}'s collection at rev {}, newer than this proof's rev {}: this proof is outdated",
                s.did, s.state_rev, s.rev
            ),
        }
    }
}

/// What the node knows of `did`'s repository (empty when nothing yet).
pub fn repo_of(cache: &Cache, did: &str) -> RepoEntry {
    cache.read::<RepoEntry>(Kind::Repo, &[did]).unwrap_or_else(|| RepoEntry { did: did.to_owned(), ..RepoEntry::default() })
}

/// Notes a commit whose signature was verified: kept if newer than the newest seen.
pub fn observe_commit(cache: &Cache, did: &str, rev: &str, commit: &str) {
    let mut repo = repo_of(cache, did);
    if repo.newest.as_ref().is_some_and(|n| n.rev.as_str() >= rev) {
        return;
    }
    repo.newest = Some(CommitSeen { rev: rev.to_owned(), commit: commit.to_owned() });
    cache.write(Kind::Repo, &[did], &repo);
}

/// Whether the proof of `did`/`rkey` at `rev` (proving `record`, or absence) is outdated by
/// the newest signed collection state this node holds: only a state newer than the proof can
/// outdate it, and only where it says something else (or where its shard cannot be read).
pub fn superseded(cache: &Cache, did: &str, rkey: &str, rev: &str, record: Option<&str>) -> Option<Supersession> {
    let mut state = repo_of(cache, did).state?;
    if state.rev.as_str() <= rev {
        return None;
    }
    let mut now = state_record(cache, did, &state, rkey);
    if now.is_err() {
        // A newer state may have replaced the one read (its shards go after it is stored).
        state = repo_of(cache, did).state?;
        now = state_record(cache, did, &state, rkey);
    }
    let supersession = |now: Option<String>, unreadable| Supersession {
        did: did.to_owned(),
        rkey: rkey.to_owned(),
        rev: rev.to_owned(),
        state_rev: state.rev.clone(),
        now,
        unreadable,
    };
    match now {
        Ok(now) => (now.as_deref() != record).then(|| supersession(now, false)),
        Err(()) => Some(supersession(None, true)),
    }
}

/// Records per shard of a large state (a shard entry stays far below the cache entry limit
/// even with 512-character record keys); states up to this size are kept inline.
pub const STATE_SHARD_RECORDS: usize = 1024;

/// The shard of `rkey` among `shards` (a stable hash: every process agrees).
pub fn shard_of(rkey: &str, shards: u32) -> u32 {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(rkey.as_bytes());
    let first = hash.first_chunk::<4>().map_or(0, |b| u32::from_be_bytes(*b));
    first % shards.max(1)
}

/// The record CID `state` holds for `rkey` (`None`: absent); `Err` when its shard cannot be read.
fn state_record(cache: &Cache, did: &str, state: &StateSeen, rkey: &str) -> Result<Option<String>, ()> {
    if state.shards == 0 {
        return Ok(state.records.get(rkey).cloned());
    }
    let shard = shard_of(rkey, state.shards);
    let entry: StateShard = cache.read(Kind::StateShard, &[did, &state.rev, &shard.to_string()]).ok_or(())?;
    if entry.did != did || entry.rev != state.rev || entry.shard != shard {
        return Err(());
    }
    Ok(entry.records.get(rkey).cloned())
}

/// What accepting a collection state did.
#[derive(Debug, PartialEq, Eq)]
pub enum StateAccepted {
    Stored,
    Unchanged,
}

/// Accepts a verified collection state ([`atproto_sig_core::collection::signed_state`]): kept
/// as the newest if it is newer than the held one; an older one is refused. A large state is
/// written as shards first, then the repository entry that names them (one atomic rename
/// switches readers to the new state), then the shards of the state it replaced are removed.
pub fn accept_state(cache: &Cache, state: &atproto_sig_core::collection::SignedState) -> Result<StateAccepted, Refusal> {
    let mut repo = repo_of(cache, &state.did);
    let replaced = match repo.state.as_ref() {
        Some(held) if held.rev.as_str() > state.rev.as_str() => return Err(Refusal::OlderState { rev: state.rev.clone(), held: held.rev.clone() }),
        Some(held) if held.rev == state.rev => return Ok(StateAccepted::Unchanged),
        held => held.cloned(),
    };
    let commit = state.commit.to_string();
    let count = state.records.len();
    let (records, shards) = if count <= STATE_SHARD_RECORDS {
        (state.records.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(), 0)
    } else {
        let shards = u32::try_from(count.div_ceil(STATE_SHARD_RECORDS)).unwrap_or(u32::MAX);
        let mut parts: Vec<std::collections::BTreeMap<String, String>> = vec![std::collections::BTreeMap::new(); shards as usize];
        for (rkey, cid) in &state.records {
            if let Some(part) = parts.get_mut(shard_of(rkey, shards) as usize) {
                part.insert(rkey.clone(), cid.to_string());
            }
        }
        for (shard, records) in parts.into_iter().enumerate() {
            let shard = u32::try_from(shard).unwrap_or(u32::MAX);
            let entry = StateShard { did: state.did.clone(), rev: state.rev.clone(), shard, records };
            cache.try_write(Kind::StateShard, &[&state.did, &state.rev, &shard.to_string()], &entry).map_err(|e| Refusal::StateUnwritable(e.to_string()))?;
        }
        (std::collections::BTreeMap::new(), shards)
    };
    repo.state = Some(StateSeen { rev: state.rev.clone(), commit: commit.clone(), records, shards, count });
    if repo.newest.as_ref().is_none_or(|n| n.rev < state.rev) {
        repo.newest = Some(CommitSeen { rev: state.rev.clone(), commit });
    }
    cache.try_write(Kind::Repo, &[&state.did], &repo).map_err(|e| Refusal::StateUnwritable(e.to_string()))?;
    if let Some(old) = replaced {
        for shard in 0..old.shards {
            cache.remove(Kind::StateShard, &[&state.did, &old.rev, &shard.to_string()]);
        }
    }
    Ok(StateAccepted::Stored)
}

/// The signed rev (and its time) of a proof CAR whose commit signature verifies under `key`;
/// `None` otherwise: an unsigned claim never ranks.
pub fn signed_rev(car: &[u8], key: &atproto_sig_core::crypto::PublicKey) -> Option<(String, i64)> {
    let commit = root_commit(car)?;
    commit.verify_signature(key).ok()?;
    Some((commit.rev.clone()?, commit.rev_micros()?))
}

/// A proof offered to the cache.
pub struct OfferedProof<'p> {
    /// The verified DID document of the repository.
    pub document: &'p DidDocument,
    pub collection: &'p str,
    pub rkey: &'p str,
    pub car: &'p [u8],
    /// The digest its record should name, if known (a known locator).
    pub digest: Option<&'p str>,
    /// Where it came from (a PDS URL, `bundle <file> (…)`).
    pub source: String,
    /// When it was fetched: whose word that is is `fetched_by`.
    pub fetched_at: i64,
    pub fetched_by: FetchedBy,
    /// This node's clock.
    pub now: i64,
    pub clock_skew_micros: i64,
}

/// Whose word a proof's fetch time is, which decides how far it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchedBy {
    /// This node fetched it, by its own clock: it counts (never later than `now`).
    ThisNode,
    /// A publisher whose key the operator configured (`bundle_signers`) signed the publication
    /// that carries it, at `published_at`: it counts as that publisher's fetch, never later
    /// than the signed publication nor `now`.
    Publisher { published_at: i64 },
    /// Anyone else's claim (a bundle, an artifact, a stream event): never later than the
    /// proof's own signed commit, so it can only look older than it is.
    Claim,
}

/// What accepting a proof did.
#[derive(Debug)]
pub struct Accepted {
    /// False when the cache already held a proof at the same commit rev.
    pub changed: bool,
    /// The core's verdict on the proof (for the digest offered, or for presence alone).
    pub verdict: Verdict,
    /// Set when the newest signed collection state held says otherwise (then no decision
    /// admits on this proof).
    pub outdated: Option<Supersession>,
}

/// Accepts a proof into the cache: the core verifies it (the commit signature under the
/// document's key must hold; a record absent from the signed tree is a proof too, of
/// deletion), it is refused if older than the proof held for the same record, and stored with
/// a fetch time that can only look older than it is. Nothing unsigned is ever stored, so a
/// forged rev can never block a genuine proof.
pub fn accept_proof(cache: &Cache, proof: &OfferedProof<'_>) -> Result<Accepted, Refusal> {
    let limits = Limits::default();
    let did = proof.document.did.as_str();
    let verdict = verify(&ProofInput {
        car: proof.car,
        key: KeySource::Document(proof.document),
        expect: Expectation { did, rkey: Some(proof.rkey), digest: proof.digest, repository: None },
        now_micros: proof.now,
        max_clock_skew_micros: proof.clock_skew_micros,
        limits: &limits,
        known_blocks: Some(known_blocks()),
    });
    // Only what the signature covers is kept: the path to the record proven under a verified
    // commit whose rev is not in the future (a rev in the future could outrank every later
    // proof, so it is never stored).
    if proof.collection != MANIFEST_COLLECTION || !verdict.facts.path_proven {
        return Err(Refusal::Unproven { reason: verdict.reason, message: verdict.message });
    }
    let rev = verdict.facts.rev.clone().unwrap_or_default();
    let (collection, rkey) = (proof.collection, proof.rkey);
    // Kept even when a newer signed state outdates it (every use checks that state, so it can
    // never admit): the node then gives the same answer whatever order material arrives in.
    let record = verdict.facts.record_cid.map(|c| c.to_string());
    let outdated = superseded(cache, did, rkey, &rev, record.as_deref());
    if let Some(commit) = &verdict.facts.commit {
        observe_commit(cache, did, &rev, &commit.to_string());
    }
    let held: Option<ProofEntry> = cache.read(Kind::Proof, &[did, collection, rkey]);
    let held_rev = held.as_ref().and_then(entry_rev).map(|(r, _)| r);
    if let Some(held) = held_rev.as_ref().filter(|held| held.as_str() > rev.as_str()) {
        return Err(Refusal::RolledBack { rev, held: held.clone() });
    }
    if held_rev.as_deref() == Some(rev.as_str()) {
        return Ok(Accepted { changed: false, verdict, outdated });
    }
    let signed_at = atproto_sig_core::syntax::tid_timestamp_micros(&rev).and_then(|t| i64::try_from(t).ok());
    let entry = ProofEntry {
        did: did.to_owned(),
        collection: collection.to_owned(),
        rkey: rkey.to_owned(),
        fetched_at: match proof.fetched_by {
            FetchedBy::ThisNode => stored_fetch_time(proof.fetched_at, proof.now, None),
            FetchedBy::Publisher { published_at } => stored_fetch_time(proof.fetched_at, proof.now, Some(published_at)),
            FetchedBy::Claim => stored_fetch_time(proof.fetched_at, proof.now, signed_at),
        },
        source: proof.source.clone(),
        car: base64::engine::general_purpose::STANDARD.encode(proof.car),
    };
    cache.write(Kind::Proof, &[did, collection, rkey], &entry);
    Ok(Accepted { changed: true, verdict, outdated })
}

/// The DID document a cache entry stands for: with `strict` (did:plc under `strict_plc`),
/// derived from its verified audit log; else the served document, parsed.
/// (`Refusal::NoAuditLog`, `AuditLog` or `Document` when it cannot be had.)
pub fn document_of(entry: &DidEntry, strict: bool, limits: &Limits) -> Result<DidDocument, Refusal> {
    let did = entry.did.as_str();
    if strict {
        let log = entry.audit_log.as_deref().ok_or(Refusal::NoAuditLog)?;
        let state = verify_audit_log(did, log.as_bytes(), limits).map_err(|e| Refusal::AuditLog(e.to_string()))?;
        return Ok(DidDocument { did: did.to_owned(), signing_key: state.signing_key(), pds: state.pds(), handle: state.handle() });
    }
    parse_document(entry, limits)
}

/// The signing keys this process has parsed, by their text: `serve`, `watch` and `node` check
/// many proofs from few signers, so each signer's point is decoded once (at most
/// [`ParsedKeys::DEFAULT_CAPACITY`] keys, oldest forgotten first; a lookup gives exactly what a
/// parse gives, so no caller can steer another's result through it).
pub fn parsed_keys() -> &'static ParsedKeys {
    static KEYS: std::sync::OnceLock<ParsedKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(ParsedKeys::default)
}

/// The blocks this process has hash-checked and decoded, by CID (MST nodes, signed commits,
/// records): a proof re-checked from the cache, another record's proof from the same
/// repository, or a later commit that left a subtree alone, takes its known blocks from here
/// instead of hashing and checking them again; the signature is verified at every check
/// ([`KnownBlocks::DEFAULT_SLOTS`] slots, a few MiB; an answer only for byte-identical blocks,
/// so the verdict is the one a fresh check gives and no caller can steer another's).
pub fn known_blocks() -> &'static KnownBlocks {
    static BLOCKS: KnownBlocks = KnownBlocks::new(KnownBlocks::DEFAULT_SLOTS);
    &BLOCKS
}

/// An entry's served document, parsed (its key through [`parsed_keys`]).
fn parse_document(entry: &DidEntry, limits: &Limits) -> Result<DidDocument, Refusal> {
    DidDocument::parse_with_keys(entry.document.as_bytes(), &entry.did, limits, parsed_keys()).map_err(|e| Refusal::Document(e.to_string()))
}

/// The document an entry proves on its own: did:plc entries must carry an audit log the
/// served document agrees with (key, PDS, handle; not deactivated); did:web documents are
/// taken as delivered (they cannot be self-certified: the note says so).
pub fn checked_document(entry: &DidEntry, limits: &Limits) -> Result<(DidDocument, Option<String>), Refusal> {
    let document = parse_document(entry, limits)?;
    match did_method(&entry.did).map_err(|e| Refusal::Document(e.to_string()))? {
        DidMethod::Plc => {
            let log = entry.audit_log.as_deref().ok_or(Refusal::NoAuditLog)?;
            let state = verify_audit_log(&entry.did, log.as_bytes(), limits).map_err(|e| Refusal::AuditLog(e.to_string()))?;
            if state.deactivated {
                return Err(Refusal::Deactivated);
            }
            let key = state.signing_key().map_err(|e| Refusal::AuditLog(e.to_string()))?;
            if document.signing_key.as_ref().ok() != Some(&key) {
                return Err(Refusal::KeyDiffers);
            }
            if document.pds != state.pds() || document.handle != state.handle() {
                return Err(Refusal::ServiceDiffers);
            }
            Ok((document, None))
        }
        DidMethod::Web => Ok((document, Some(format!("{}: did:web documents are trusted as delivered (they cannot be self-certified)", entry.did)))),
    }
}

/// What accepting a DID document did.
#[derive(Debug, PartialEq, Eq)]
pub enum DocumentAccepted {
    Stored,
    Unchanged,
    /// Stored, replacing the key of a did:web document (the operator allowed it).
    DidWebKeyChanged,
    /// Stored, nullifying this held did:plc operation (a recovery, from the directory or
    /// allowed by the operator).
    PlcRecovered {
        nullified: String,
    },
}

/// Who may change what a DID document says.
#[derive(Clone, Copy, Debug, Default)]
pub struct DocumentRules {
    /// A did:web document may replace the key of the one held. did:web has no history to
    /// check a change against: fetched from its own host it may (online), from a bundle only
    /// when the operator says so (`bundle import --allow-did-web-key-change`); `bundle_dir`
    /// imports never.
    pub did_web_key_change: bool,
    /// A did:plc audit log may nullify operations this node holds (a recovery, its rules
    /// checked), and may replace a held log that fails today's checks. Only logs from the PLC
    /// directory (online: its own clock dated the recovery), or a bundle the operator names
    /// (`bundle import --accept-plc-recovery`); `bundle_dir` imports never.
    pub plc_recovery: bool,
}

impl DocumentRules {
    /// What a document fetched from its own source (the PLC directory, a did:web host) may change.
    pub const FETCHED: DocumentRules = DocumentRules { did_web_key_change: true, plc_recovery: true };
}

/// Accepts a DID document entry into the cache after the caller's verification
/// ([`checked_document`] for bundles, the engine's parse for fetched ones): a did:plc audit log
/// may only extend the one held (an older one is refused, a diverging one unless it is a valid
/// nullification of the held history); a did:web key is replaced only as `rules` allow; the
/// fetch time stored can only look older than it is.
pub fn accept_document(cache: &Cache, entry: &DidEntry, now: i64, rules: DocumentRules) -> Result<DocumentAccepted, Refusal> {
    let held = cache.read::<DidEntry>(Kind::Did, &[&entry.did]);
    let mut stored = DidEntry { fetched_at: stored_fetch_time(entry.fetched_at, now, None), ..entry.clone() };
    let mut recovered = None;
    if let (Some(held_log), Some(new_log)) = (held.as_ref().and_then(|h| h.audit_log.as_deref()), entry.audit_log.as_deref()) {
        let (log, nullified) = extended_log(&entry.did, held_log, new_log, rules.plc_recovery)?;
        stored.audit_log = Some(log);
        recovered = nullified;
    }
    if held.as_ref().is_some_and(|h| h.document == stored.document && h.audit_log == stored.audit_log) {
        return Ok(DocumentAccepted::Unchanged);
    }
    let key_changed = did_method(&entry.did) == Ok(DidMethod::Web) && held.as_ref().is_some_and(|h| signing_key_of(h) != signing_key_of(entry));
    if key_changed && !rules.did_web_key_change {
        return Err(Refusal::DidWebKeyChange);
    }
    cache.write(Kind::Did, &[&entry.did], &stored);
    Ok(match (key_changed, recovered) {
        (true, _) => DocumentAccepted::DidWebKeyChanged,
        (false, Some(nullified)) => DocumentAccepted::PlcRecovered { nullified },
        (false, None) => DocumentAccepted::Stored,
    })
}

/// The `#atproto` key a document entry names (as did:key text), if any.
fn signing_key_of(entry: &DidEntry) -> Option<String> {
    parse_document(entry, &Limits::default()).ok()?.signing_key.ok().map(|k| k.to_did_key())
}

/// The audit log to keep when `new` is offered and `held` is kept, and the held operation it
/// nullifies, if any: `new` when it extends `held` (same operations first, none newly marked
/// nullified); refused when it is older (a strict prefix) or forks from it. A fork (or a held
/// operation newly marked nullified) is a did:plc recovery: taken only when `recovery` allows
/// it, and only if it is a valid nullification of the held history (signed by a
/// higher-priority rotation key, within 72 hours, as checked on the held operations it
/// nullifies: then the held history with those operations nullified, followed by the new
/// ones). With `recovery`, a held log that fails today's checks (the directory removed invalid
/// operations since) is replaced by `new`.
fn extended_log(did: &str, held: &str, new: &str, recovery: bool) -> Result<(String, Option<String>), Refusal> {
    let (Some(held_ops), Some(new_ops)) = (log_entries(held), log_entries(new)) else {
        return Ok((new.to_owned(), None));
    };
    if recovery && verify_audit_log(did, held.as_bytes(), &Limits::default()).is_err() {
        // What this node held no longer passes (plc.directory removed invalid operations):
        // nothing in it is worth protecting against the directory's current log.
        return Ok((new.to_owned(), None));
    }
    let cid = |e: &serde_json::Value| e.get("cid").and_then(serde_json::Value::as_str).map(str::to_owned);
    let nullified = |e: &serde_json::Value| e.get("nullified").and_then(serde_json::Value::as_bool).unwrap_or(false);
    let fork = held_ops.iter().zip(&new_ops).position(|(h, n)| cid(h) != cid(n));
    let flipped = held_ops.iter().zip(&new_ops).position(|(h, n)| cid(h) == cid(n) && nullified(n) && !nullified(h));
    let at = match (fork, flipped) {
        (None, None) => return if new_ops.len() < held_ops.len() { Err(Refusal::OlderAuditLog) } else { Ok((new.to_owned(), None)) },
        (Some(f), None) | (None, Some(f)) => f,
        (Some(a), Some(b)) => a.min(b),
    };
    let held_op = held_ops.get(at).and_then(cid).unwrap_or_default();
    if !recovery {
        return Err(Refusal::PlcRecovery { operation: crate::limits::short(&held_op, 80) });
    }
    let candidate = if fork.is_some_and(|f| f == at) {
        let mut merged: Vec<serde_json::Value> = held_ops.clone();
        for entry in merged.iter_mut().skip(at) {
            if let Some(map) = entry.as_object_mut() {
                map.insert("nullified".into(), serde_json::Value::Bool(true));
            }
        }
        merged.extend(new_ops.iter().skip(at).cloned());
        serde_json::Value::Array(merged).to_string()
    } else {
        // The held operations are all there, some now marked nullified: `new` is the history.
        new.to_owned()
    };
    match verify_audit_log(did, candidate.as_bytes(), &Limits::default()) {
        Ok(_) => Ok((candidate, Some(crate::limits::short(&held_op, 80)))),
        Err(e) => {
            let diverging = new_ops.get(at).and_then(cid).unwrap_or_default();
            Err(Refusal::ForkedAuditLog { operation: crate::limits::short(&diverging, 80), problem: e.to_string() })
        }
    }
}

/// The entries of a did:plc audit log, if it is a JSON array.
fn log_entries(log: &str) -> Option<Vec<serde_json::Value>> {
    serde_json::from_str(log).ok()
}

/// Refuses material that claims to be fetched later than this node's clock allows.
pub fn check_fetch_time(fetched_at: i64, now: i64, skew: &crate::config::Span) -> Result<(), String> {
    if fetched_at > now.saturating_add(skew.micros()) {
        return Err(format!(
            "it claims to be fetched {}, later than this node's clock ({}) plus clock_skew ({skew}) — a bundle cannot come from the future; check both clocks and re-create the bundle",
            format_datetime_micros(fetched_at),
            format_datetime_micros(now),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_times_only_move_older() {
        assert_eq!(stored_fetch_time(100, 50, None), 50);
        assert_eq!(stored_fetch_time(10, 50, Some(5)), 5);
        assert_eq!(stored_fetch_time(10, 50, Some(20)), 10);
    }

    #[test]
    fn audit_logs_only_extend() {
        let log = |cids: &[&str]| serde_json::to_string(&cids.iter().map(|c| serde_json::json!({"cid": c})).collect::<Vec<_>>()).unwrap();
        assert_eq!(extended_log("did:plc:x", &log(&["a"]), &log(&["a", "b"]), false), Ok((log(&["a", "b"]), None)));
        assert_eq!(extended_log("did:plc:x", &log(&["a", "b"]), &log(&["a", "b"]), false), Ok((log(&["a", "b"]), None)));
        assert_eq!(extended_log("did:plc:x", &log(&["a", "b"]), &log(&["a"]), false), Err(Refusal::OlderAuditLog));
        // From the directory, a held log that fails today's checks (these fake ones all do) is
        // replaced by the directory's, even a shorter one.
        assert_eq!(extended_log("did:plc:x", &log(&["a", "b"]), &log(&["a"]), true), Ok((log(&["a"]), None)));
        // Not from the directory: a fork is a recovery, refused naming the held operation.
        let forked = extended_log("did:plc:x", &log(&["a", "b"]), &log(&["a", "c"]), false);
        assert_eq!(forked, Err(Refusal::PlcRecovery { operation: "b".into() }));
        let flipped = serde_json::json!([{"cid": "a"}, {"cid": "b", "nullified": true}, {"cid": "c"}]).to_string();
        assert_eq!(extended_log("did:plc:x", &log(&["a", "b"]), &flipped, false), Err(Refusal::PlcRecovery { operation: "b".into() }));
    }

    /// Every size of state is stored (large ones in shards) and checked record by record;
    /// the shards of a replaced state go; a damaged shard never passes a proof as current.
    #[test]
    fn a_collection_state_of_any_size_is_stored_in_shards_and_checked_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let cid = atproto_sig_core::cid::Cid::for_dag_cbor(b"record");
        let state = |rev: &str, n: usize, skip: usize| atproto_sig_core::collection::SignedState {
            did: "did:plc:x".into(),
            commit: cid,
            rev: rev.into(),
            rev_micros: 0,
            records: (0..n).filter(|i| *i != skip).map(|i| (format!("3k{i:011}"), cid)).collect(),
        };
        let cid = cid.to_string();
        assert_eq!(accept_state(&cache, &state("3aaaaaaaaaaaa", 2, usize::MAX)), Ok(StateAccepted::Stored));
        // 120,000 records (about 15 MB as one entry, over the 8 MiB limit): stored in shards.
        assert_eq!(accept_state(&cache, &state("3bbbbbbbbbbbb", 120_000, 77_777)), Ok(StateAccepted::Stored));
        let held = repo_of(&cache, "did:plc:x").state.unwrap();
        assert_eq!((held.rev.as_str(), held.count, held.shards, held.records.len()), ("3bbbbbbbbbbbb", 119_999, 118, 0));
        assert_eq!(superseded(&cache, "did:plc:x", "3k00000000001", "3aaaaaaaaaaaa", Some(&cid)), None);
        let gone = superseded(&cache, "did:plc:x", "3k00000077777", "3aaaaaaaaaaaa", Some(&cid)).unwrap();
        assert!(gone.gone(), "{gone}");
        // A newer state replaces it; the old shards go.
        assert_eq!(accept_state(&cache, &state("3cccccccccccc", 130_000, 5)), Ok(StateAccepted::Stored));
        let shards_left = cache.all::<StateShard>(Kind::StateShard).into_iter().filter(|(_, s)| s.rev == "3bbbbbbbbbbbb").count();
        assert_eq!(shards_left, 0);
        assert!(superseded(&cache, "did:plc:x", "3k00000000005", "3bbbbbbbbbbbb", Some(&cid)).unwrap().gone());
        assert_eq!(superseded(&cache, "did:plc:x", "3k00000077777", "3bbbbbbbbbbbb", None).map(|s| s.now), Some(Some(cid.clone())));
        // A damaged shard: the proof is not passed as current.
        let held = repo_of(&cache, "did:plc:x").state.unwrap();
        let shard = shard_of("3k00000000009", held.shards);
        assert!(cache.remove(Kind::StateShard, &["did:plc:x", &held.rev, &shard.to_string()]));
        let damaged = superseded(&cache, "did:plc:x", "3k00000000009", "3bbbbbbbbbbbb", Some(&cid)).unwrap();
        assert!(damaged.unreadable && !damaged.gone() && damaged.to_string().contains("cannot be read back"), "{damaged}");
    }
}
