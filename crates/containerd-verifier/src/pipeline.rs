//! One decision: (image, digest, config, policy, now) -> Decision. The same code serves the
//! containerd entry point and `atproto-verifier verify`.
//!
//! Flow: the policy's rule for the image -> no signature required? admit without any lookup ->
//! candidate signers (identity in the path, then the rule's trusted DIDs; nobody else is fetched)
//! -> per candidate: DID document, record location, proof (cache first, network when stale, stale
//! cache only when the network fails) -> core verify -> the policy's decision.

// A Verdict is the natural error of each step (it carries the reason and the facts); decisions
// are made once per process, so its size does not matter.
#![allow(clippy::result_large_err)]

use atproto_sig_core::did::{DidDocument, DidMethod, did_method};
use atproto_sig_core::plc::verify_audit_log;
use atproto_sig_core::policy::{Decision, Outcome, Policy};
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::syntax::{AtUri, is_valid_did};
use atproto_sig_core::verify::{Expectation, KeySource, ProofInput, verify};
use atproto_sig_core::{Facts, Limits, Reason, Verdict};
use base64::Engine;

use crate::cache::{Cache, DidEntry, HandleEntry, Kind, LocatorEntry, ProofEntry, ReferrersEntry};
use crate::cached::{Got, Lifetime, Material, Miss};
use crate::config::Config;
use crate::knowledge;
use crate::net::{Http, NetError};
use crate::resolve::{self, LookupError, ProofAnswer};

/// Said whenever a decision rests on cached material past its TTL.
pub const STALE_NOTE: &str = " — from cached data past its TTL, because the network failed";

/// Most candidate signers examined per decision.
pub const MAX_CANDIDATES: usize = 8;

/// Where the proof behind a verdict came from: an admission says so, with its age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from the PDS for this decision.
    Fetched,
    /// This node's cache, within `proof_ttl` of when this node fetched it.
    Cached { fetched_at: i64 },
    /// This node's cache past `proof_ttl`, because the network failed.
    Stale { fetched_at: i64 },
    /// Offline: the cache or a proof attached to the image, dated by its signed commit.
    Offline { committed_at: i64, attached: bool },
}

impl Origin {
    /// The words an admission adds about its proof ("" for a proof fetched just now).
    pub fn note(self, now: i64) -> String {
        let age = |t: i64| crate::config::Span(std::time::Duration::from_micros(u64::try_from(now.saturating_sub(t)).unwrap_or(0)));
        match self {
            Origin::Fetched => String::new(),
            Origin::Cached { fetched_at } => format!(" — from a proof this node fetched {} ago", age(fetched_at)),
            Origin::Stale { fetched_at } => {
                format!(" — from cached data past its TTL (a proof this node fetched {} ago), because the network failed", age(fetched_at))
            }
            Origin::Offline { committed_at, attached: true } => format!(" — offline, from a proof attached to the image, committed {} ago", age(committed_at)),
            Origin::Offline { committed_at, attached: false } => format!(" — offline, from a cached proof committed {} ago", age(committed_at)),
        }
    }
}

/// Why a proof could not be had: a lookup failure, or a refusal with its own verdict (no PDS
/// named, or a rollback).
enum ProofMiss {
    Lookup(LookupError),
    Refused(Box<Verdict>),
}

impl crate::cached::FetchError for ProofMiss {
    fn network(self) -> Result<NetError, Self> {
        match self {
            ProofMiss::Lookup(LookupError::Network(e)) => Ok(e),
            other => Err(other),
        }
    }

    fn from_network(e: NetError) -> Self {
        ProofMiss::Lookup(LookupError::Network(e))
    }
}

/// The identity an ATProto registry path names.
enum PathIdentity {
    /// A DID the rule accepts now, with its handle verified both ways.
    Trusted(String),
    /// (handle or DID, DID) the rule does not accept: named in the decision, never fetched.
    Untrusted(String, String),
    /// A handle, offline: not resolvable here, and no evidence of anything. The trusted DIDs
    /// decide; the handle never becomes the reason.
    Offline(String),
    /// Could not be resolved or verified.
    Failed(Box<Verdict>),
}

/// Everything a decision needs from outside.
pub struct Context<'a> {
    pub config: &'a Config,
    pub policy: &'a Policy,
    pub cache: &'a Cache,
    /// `None` when offline: no client exists, so no request can be made.
    pub http: Option<&'a Http>,
    /// The registry client: also present offline (the registry or its mirror is the one remote
    /// an offline node still reaches, for proofs attached to images).
    pub registry: Option<&'a Http>,
    pub dns: &'a dyn Fn(&str) -> Result<Vec<String>, String>,
    pub now: i64,
    /// Diagnostic lines for stderr (containerd's debug log).
    pub notes: std::cell::RefCell<Vec<String>>,
    /// Set when cached material past its TTL was used because the network failed.
    pub used_stale: std::cell::Cell<bool>,
    /// What verified proofs rest on when not fetched just now (see [`Origin::note`]).
    pub provenance: std::cell::RefCell<Vec<String>>,
    /// Proof CARs found attached to the image in the registry: (did, rkey, car).
    pub attached: std::cell::RefCell<Vec<(String, String, Vec<u8>)>>,
}

fn micros(span: crate::config::Span) -> i64 {
    i64::try_from(span.0.as_micros()).unwrap_or(i64::MAX)
}

fn verdict(did: &str, reason: Reason, message: String) -> Verdict {
    Verdict { reason, message, facts: Facts { did: did.to_owned(), ..Facts::default() } }
}

/// What a failed lookup was for: it decides the reason an answer like "not found" maps to.
#[derive(Clone, Copy)]
enum Lookup {
    Document,
    Record,
}

fn lookup_verdict(did: &str, what: &str, kind: Lookup, error: &LookupError) -> Verdict {
    match (error, kind) {
        (LookupError::Network(NetError::Deadline), _) => verdict(did, Reason::DeadlineExceeded, format!("the time budget ran out while fetching {what}")),
        (LookupError::Network(e), _) => verdict(did, Reason::NetworkError, format!("cannot fetch {what}: {e} (a network failure, not a signature problem)")),
        (LookupError::NotFound(e), Lookup::Document) => verdict(did, Reason::DidUnresolved, e.clone()),
        (LookupError::NotFound(e), Lookup::Record) => verdict(did, Reason::RecordNotFound, e.clone()),
        (LookupError::Invalid(e), Lookup::Document) => verdict(did, Reason::DidDocumentInvalid, e.clone()),
        (LookupError::Invalid(e), Lookup::Record) => verdict(did, Reason::ProofMalformed, e.clone()),
    }
}

impl Context<'_> {
    fn note(&self, line: String) {
        self.notes.borrow_mut().push(line);
    }

    fn offline_hint(&self, what: &str) -> String {
        format!(
            "{what} is not in the cache and this node is offline — on a connected machine run `atproto-verifier bundle create`, then `atproto-verifier bundle import` here"
        )
    }

    /// The DID document (from cache or network), and whether stale material was used.
    pub fn document(&self, did: &str) -> Result<(DidDocument, bool), Verdict> {
        let limits = Limits::default();
        let parse = |entry: &DidEntry| -> Result<DidDocument, Verdict> {
            if self.config.strict_plc && did_method(did) == Ok(DidMethod::Plc) {
                let log = entry
                    .audit_log
                    .as_deref()
                    .ok_or_else(|| verdict(did, Reason::DidUnresolved, format!("strict_plc is on and no audit log of {did} is available")))?;
                let state = verify_audit_log(did, log.as_bytes(), &limits)
                    .map_err(|e| verdict(did, Reason::DidDocumentInvalid, format!("the audit log of {did} is invalid: {e}")))?;
                return Ok(DidDocument { did: did.to_owned(), signing_key: state.signing_key(), pds: state.pds(), handle: state.handle() });
            }
            DidDocument::parse(entry.document.as_bytes(), did, &limits).map_err(|e| verdict(did, Reason::DidDocumentInvalid, format!("{e}")))
        };
        let material = Material { cache: self.cache, kind: Kind::Did, key: &[did], now: self.now, lifetime: self.lifetime(self.config.did_ttl) };
        let fetch = || {
            let Some(http) = self.http else { return Ok(None) };
            let (bytes, source) = resolve::fetch_did_document(http, &self.config.plc_directory, did)?;
            let audit_log = if self.config.strict_plc && did_method(did) == Ok(DidMethod::Plc) {
                Some(String::from_utf8_lossy(&resolve::fetch_audit_log(http, &self.config.plc_directory, did)?).into_owned())
            } else {
                None
            };
            Ok(Some(DidEntry { did: did.to_owned(), fetched_at: self.now, source, document: String::from_utf8_lossy(&bytes).into_owned(), audit_log }))
        };
        // A document that does not parse (or disagrees with its audit log) is never stored.
        match material.get(self.http.is_some(), |e: &DidEntry| e.fetched_at, |_| true, fetch, |e| parse(e).is_ok()) {
            Ok(Got::Cached(entry) | Got::Fetched(entry) | Got::Offline(entry)) => parse(&entry).map(|d| (d, false)),
            Ok(Got::Stale(entry, e)) => {
                self.note(format!("using the cached DID document of {did} past its TTL: {e}"));
                parse(&entry).map(|d| (d, true))
            }
            Err(Miss::Offline | Miss::Nothing) => Err(verdict(did, Reason::DidUnresolved, self.offline_hint(&format!("the DID document of {did}")))),
            Err(Miss::Lookup(e)) => Err(lookup_verdict(did, &format!("the DID document of {did}"), Lookup::Document, &e)),
        }
    }

    /// How long material with this TTL is fresh, and may stand in when the network fails.
    fn lifetime(&self, ttl: crate::config::Span) -> Lifetime {
        Lifetime { ttl_micros: micros(ttl), max_stale_micros: micros(self.config.max_stale) }
    }

    /// A proof for `did`/`rkey`: cached if fresh, else fetched; stale only on network failure.
    /// A fetched proof is stored only when its commit signature verifies under `document`'s
    /// key and it is not older than the proof already held for that record.
    pub fn proof(&self, document: &DidDocument, rkey: &str) -> Result<(Option<Vec<u8>>, Origin), Verdict> {
        let did = document.did.as_str();
        let parts = [did, MANIFEST_COLLECTION, rkey];
        let decode = |entry: &ProofEntry| base64::engine::general_purpose::STANDARD.decode(&entry.car).ok();
        if self.http.is_none() {
            let cached: Option<ProofEntry> = self.cache.read(Kind::Proof, &parts);
            return self.offline_proof(did, rkey, cached.as_ref().and_then(decode));
        }
        let material = Material { cache: self.cache, kind: Kind::Proof, key: &parts, now: self.now, lifetime: self.lifetime(self.config.proof_ttl) };
        // Stored only when its signature verifies under the document's key (set by `fetch`).
        let authentic = std::cell::Cell::new(false);
        let fetch = || -> Result<Option<ProofEntry>, ProofMiss> {
            let (Some(http), Some(pds)) = (self.http, document.pds.as_deref()) else {
                return Err(ProofMiss::Refused(Box::new(verdict(
                    did,
                    Reason::DidDocumentInvalid,
                    format!("the DID document of {did} names no AtprotoPersonalDataServer"),
                ))));
            };
            let car = match resolve::fetch_proof(http, pds, did, MANIFEST_COLLECTION, rkey).map_err(ProofMiss::Lookup)? {
                ProofAnswer::Car(car) => car,
                ProofAnswer::NotFound => return Ok(None),
            };
            if let Some((rev, _)) = document.signing_key.as_ref().ok().and_then(|key| knowledge::authentic_rev(&car, key)) {
                if let Some(held) = knowledge::newer_held(self.cache, did, MANIFEST_COLLECTION, rkey, &rev) {
                    let message = knowledge::rollback_message(&format!("the proof {pds} served for {did}/{MANIFEST_COLLECTION}/{rkey}"), &rev, &held);
                    return Err(ProofMiss::Refused(Box::new(verdict(did, Reason::ProofRolledBack, message))));
                }
                authentic.set(true);
            }
            let car = base64::engine::general_purpose::STANDARD.encode(&car);
            Ok(Some(ProofEntry {
                did: did.to_owned(),
                collection: MANIFEST_COLLECTION.into(),
                rkey: rkey.to_owned(),
                fetched_at: self.now,
                source: pds.to_owned(),
                car,
            }))
        };
        match material.get(true, |e: &ProofEntry| e.fetched_at, |e| decode(e).is_some(), fetch, |_| authentic.get()) {
            Ok(Got::Cached(entry)) => Ok((decode(&entry), Origin::Cached { fetched_at: entry.fetched_at })),
            Ok(Got::Fetched(entry) | Got::Offline(entry)) => Ok((decode(&entry), Origin::Fetched)),
            Ok(Got::Stale(entry, e)) => {
                self.note(format!("using the cached proof for {did}/{rkey} past its TTL: {e}"));
                Ok((decode(&entry), Origin::Stale { fetched_at: entry.fetched_at }))
            }
            Err(Miss::Nothing | Miss::Offline) => Ok((None, Origin::Fetched)),
            Err(Miss::Lookup(ProofMiss::Refused(v))) => Err(*v),
            Err(Miss::Lookup(ProofMiss::Lookup(e))) => {
                let pds = document.pds.as_deref().unwrap_or("its PDS");
                Err(lookup_verdict(did, &format!("the proof from {pds}"), Lookup::Record, &e))
            }
        }
    }

    /// Offline sources: the cache (imports, bundles) and proofs attached to the image. Their
    /// age is their signed commit rev, never a fetch time: a `fetchedAt` in a bundle or an
    /// artifact timestamp is the word of whoever made it. A revoked image therefore stays
    /// admitted offline at most `max_proof_age` after the last commit this node has seen.
    fn offline_proof(&self, did: &str, rkey: &str, cached: Option<Vec<u8>>) -> Result<(Option<Vec<u8>>, Origin), Verdict> {
        let attached = self.attached.borrow().iter().find(|(d, r, _)| d == did && r == rkey).map(|(_, _, car)| car.clone());
        let dated = |car: Vec<u8>, attached: bool| knowledge::commit_rev(&car).map(|(_, t)| (t, car, attached));
        let newest = match (cached.and_then(|c| dated(c, false)), attached.and_then(|c| dated(c, true))) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        match newest {
            Some((committed_at, _, attached)) if self.now.saturating_sub(committed_at) > micros(self.config.max_proof_age) => Err(verdict(
                did,
                Reason::ProofTooOld,
                format!(
                    "the newest proof for {did}/{MANIFEST_COLLECTION}/{rkey} ({}) was committed {} (its signed rev), longer ago than max_proof_age ({}) — import a fresh bundle (`atproto-verifier bundle create` on a connected machine)",
                    if attached { "attached to the image" } else { "in this node's cache" },
                    atproto_sig_core::syntax::format_datetime_micros(committed_at),
                    self.config.max_proof_age
                ),
            )),
            Some((committed_at, car, attached)) => Ok((Some(car), Origin::Offline { committed_at, attached })),
            None => Err(verdict(did, Reason::RecordNotFound, self.offline_hint(&format!("a proof for {did}/{MANIFEST_COLLECTION}/{rkey}")))),
        }
    }

    fn check(&self, car: &[u8], document: &DidDocument, did: &str, rkey: &str, digest: &str, repository: Option<&str>) -> Verdict {
        let limits = Limits::default();
        verify(&ProofInput {
            car,
            key: KeySource::Document(document),
            expect: Expectation { did, rkey: Some(rkey), digest, repository },
            now_micros: self.now,
            max_clock_skew_micros: micros(self.config.clock_skew),
            limits: &limits,
        })
    }

    /// Verifies one candidate signer for `digest`.
    pub fn verify_candidate(&self, did: &str, digest: &str, repository: Option<&str>, hint_rkey: Option<&str>) -> Verdict {
        let (document, stale_doc) = match self.document(did) {
            Ok(found) => found,
            Err(v) => return v,
        };
        let pds = document.pds.clone();
        let locator: Option<LocatorEntry> = self.cache.read(Kind::Locator, &[did, digest]);
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest).to_owned();
        // Where an rkey came from decides what a failure there means.
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Source {
            /// From a signature artifact in the registry: anyone able to push controls it, so a
            /// failure there is never decisive.
            Hint,
            /// Held this digest's record before (our cache): absence there means deletion.
            Known,
            /// The digest's hex, or a listRecords match.
            Guess,
        }
        let mut tried: Vec<String> = Vec::new();
        let mut attempts: Vec<(String, Source)> = Vec::new();
        if let Some(h) = hint_rkey {
            attempts.push((h.to_owned(), Source::Hint));
        }
        if let Some(l) = &locator {
            attempts.push((l.rkey.clone(), Source::Known));
        }
        attempts.push((hex, Source::Guess));
        let mut last_failure: Option<Verdict> = None;
        let mut scanned = false;
        loop {
            while let Some((rkey, source)) = (!attempts.is_empty()).then(|| attempts.remove(0)) {
                if tried.contains(&rkey) {
                    continue;
                }
                tried.push(rkey.clone());
                let (car, origin) = match self.proof(&document, &rkey) {
                    Ok(found) => found,
                    Err(v) => return v,
                };
                let Some(car) = car else {
                    if source == Source::Known {
                        return verdict(
                            did,
                            Reason::RecordDeleted,
                            format!(
                                "the record at://{did}/{MANIFEST_COLLECTION}/{rkey} that signed {digest} is gone from {}",
                                pds.as_deref().unwrap_or("its PDS")
                            ),
                        );
                    }
                    continue;
                };
                let mut result = self.check(&car, &document, did, &rkey, digest, repository);
                if result.is_verified() {
                    if locator.as_ref().is_none_or(|l| l.rkey != rkey) {
                        self.cache.write(
                            Kind::Locator,
                            &[did, digest],
                            &LocatorEntry { did: did.to_owned(), digest: digest.to_owned(), rkey: rkey.clone(), fetched_at: self.now },
                        );
                    }
                    if stale_doc || matches!(origin, Origin::Stale { .. }) {
                        self.used_stale.set(true);
                    }
                    let provenance = origin.note(self.now);
                    result.message.push_str(&provenance);
                    if !provenance.is_empty() {
                        self.provenance.borrow_mut().push(provenance);
                    }
                    return result;
                }
                if result.reason == Reason::RecordDeleted && source != Source::Known {
                    // Absence under a guessed or hinted rkey says nothing about deletion: keep looking.
                    last_failure.get_or_insert(verdict(did, Reason::RecordNotFound, format!("no record for {digest} in {did}")));
                    continue;
                }
                if source == Source::Hint {
                    // A misleading hint must not hide a record found elsewhere.
                    self.note(format!("hinted record {did}/{rkey} does not prove {digest}: {}", result.message));
                    last_failure = Some(result);
                    continue;
                }
                if result.reason == Reason::RecordDeleted {
                    let rev = result.facts.rev.clone().unwrap_or_default();
                    result.message = format!(
                        "{did} deleted the record that signed {digest} (at://{did}/{MANIFEST_COLLECTION}/{rkey}); its signed repository at rev {rev} proves it is gone: the image is revoked"
                    );
                }
                return result;
            }
            if scanned {
                break;
            }
            scanned = true;
            let (Some(http), Some(pds)) = (self.http, pds.as_deref()) else { break };
            match resolve::find_record(http, pds, did, MANIFEST_COLLECTION, digest, repository) {
                Ok(Some(rkey)) => attempts.push((rkey, Source::Guess)),
                Ok(None) => {}
                Err(e) => return lookup_verdict(did, &format!("the record list of {did}"), Lookup::Record, &e),
            }
        }
        last_failure.unwrap_or_else(|| {
            verdict(
                did,
                Reason::RecordNotFound,
                format!("no io.atcr.manifest record for {digest} in {did} — was the image pushed through an ATProto registry?"),
            )
        })
    }

    /// The identity in an ATProto registry path (`host/<handle-or-did>/<repo>`) and the
    /// repository name after it. A handle is resolved to a DID; only a DID in `acceptable`
    /// (trusted by the rule, now) has its document fetched, for the bidirectional check: no
    /// document or proof is ever fetched for a signer the rule could never accept.
    fn path_identity(&self, image: &ImageRef, acceptable: &[&str]) -> Option<(PathIdentity, String)> {
        if !self.config.atproto_registries.contains(&image.host) {
            return None;
        }
        let (identity, repository) = image.path.split_once('/')?;
        let found = |p: PathIdentity| Some((p, repository.to_owned()));
        if is_valid_did(identity) {
            return found(if acceptable.contains(&identity) {
                PathIdentity::Trusted(identity.to_owned())
            } else {
                PathIdentity::Untrusted(identity.to_owned(), identity.to_owned())
            });
        }
        let Some(http) = self.http else {
            // Offline, a handle can only be trusted through a cached, claiming document of a
            // trusted DID; leave it to the trusted DIDs.
            return found(PathIdentity::Offline(identity.to_owned()));
        };
        let fail = |message: String| found(PathIdentity::Failed(Box::new(verdict(identity, Reason::IdentityUnresolved, message))));
        let handle = identity.to_ascii_lowercase();
        let material = Material { cache: self.cache, kind: Kind::Handle, key: &[&handle], now: self.now, lifetime: self.lifetime(self.config.did_ttl) };
        let fetch = || {
            let did = resolve::resolve_handle(http, self.config.handle_resolver.as_deref(), self.dns, identity)?;
            Ok::<_, LookupError>(Some(HandleEntry { handle: handle.clone(), did, fetched_at: self.now }))
        };
        let did = match material.get(true, |e: &HandleEntry| e.fetched_at, |_| true, fetch, |_| true) {
            Ok(Got::Cached(entry) | Got::Fetched(entry) | Got::Offline(entry)) => entry.did,
            Ok(Got::Stale(entry, e)) => {
                self.note(format!("using the cached resolution of {handle} past its TTL: {e}"));
                entry.did
            }
            Err(Miss::Lookup(LookupError::Network(e))) => {
                let reason = if e == NetError::Deadline { Reason::DeadlineExceeded } else { Reason::NetworkError };
                return found(PathIdentity::Failed(Box::new(verdict(identity, reason, format!("cannot resolve handle {identity}: {e}")))));
            }
            Err(Miss::Lookup(e)) => return fail(format!("cannot resolve handle {identity}: {e}")),
            Err(Miss::Nothing | Miss::Offline) => return fail(format!("cannot resolve handle {identity}")),
        };
        if !acceptable.contains(&did.as_str()) {
            return found(PathIdentity::Untrusted(handle, did));
        }
        // Bidirectional: the DID document must claim the handle.
        match self.document(&did) {
            Ok((document, _)) if document.handle.as_deref() == Some(handle.as_str()) => found(PathIdentity::Trusted(did)),
            Ok((document, _)) => fail(format!(
                "handle {identity} points to {did}, but that DID document claims {} — the handle is not verified",
                document.handle.as_deref().map_or("no handle".to_owned(), |h| format!("handle {h}"))
            )),
            Err(v) => found(PathIdentity::Failed(Box::new(v))),
        }
    }

    /// DIDs and record keys named by ATProto signature artifacts that refer to `digest`
    /// (OCI referrers API, or the `sha256-<hex>` tag). Hints only: the proof decides.
    fn referrer_hints(&self, image: &ImageRef, digest: &str) -> Vec<(String, String)> {
        let Some(http) = self.registry else { return Vec::new() };
        // Online, hints are cached like proofs (registries rate-limit); offline the registry is
        // where proofs come from, so it is always asked.
        let key = [image.host.as_str(), image.path.as_str(), digest];
        if self.http.is_none() {
            return self.fetch_referrer_hints(http, image, digest).unwrap_or_default();
        }
        let material = Material {
            cache: self.cache,
            kind: Kind::Referrers,
            key: &key,
            now: self.now,
            lifetime: Lifetime { ttl_micros: micros(self.config.proof_ttl), max_stale_micros: 0 },
        };
        let fetch = || {
            // A registry that cannot be asked is not an error here: hints are only hints.
            Ok::<_, LookupError>(self.fetch_referrer_hints(http, image, digest).map(|hints| ReferrersEntry {
                digest: digest.to_owned(),
                hints,
                fetched_at: self.now,
            }))
        };
        match material.get(true, |e: &ReferrersEntry| e.fetched_at, |_| true, fetch, |_| true) {
            Ok(Got::Cached(entry) | Got::Fetched(entry) | Got::Stale(entry, _) | Got::Offline(entry)) => entry.hints,
            Err(_) => Vec::new(),
        }
    }

    /// The hints from the registry; `None` when the registry could not be asked.
    fn fetch_referrer_hints(&self, http: &Http, image: &ImageRef, digest: &str) -> Option<Vec<(String, String)>> {
        let session = crate::registry::Session::new(self.config, http, image);
        let descriptors = match session.referrers(digest, crate::registry::SIGNATURE_ARTIFACT_TYPE) {
            Ok(d) => d,
            Err(e) => {
                self.note(format!("referrers of {digest}: {e} (continuing without hints)"));
                return None;
            }
        };
        let mut hints = Vec::new();
        for descriptor in descriptors.iter().take(4) {
            let Some(manifest_digest) = descriptor.get("digest").and_then(serde_json::Value::as_str) else { continue };
            let manifest = session.manifest(manifest_digest).ok().flatten().and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
            // A layer holding the proof CAR (written by `attach`): verified like any other proof.
            let car = manifest
                .as_ref()
                .and_then(|m| {
                    m.get("layers")?
                        .as_array()?
                        .iter()
                        .find(|l| l.get("mediaType").and_then(serde_json::Value::as_str) == Some(crate::registry::CAR_MEDIA_TYPE))
                        .cloned()
                })
                .and_then(|layer| layer.get("digest")?.as_str().map(str::to_owned))
                .and_then(|d| session.blob(&d, crate::resolve::MAX_PROOF).ok());
            let hint = manifest
                .and_then(|manifest| manifest.get("config")?.get("digest")?.as_str().map(str::to_owned))
                .and_then(|config_digest| session.blob(&config_digest, 64 << 10).ok())
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|meta| {
                    let did = meta.get("atproto")?.get("did")?.as_str()?.to_owned();
                    let uri = AtUri::parse(meta.get("atproto")?.get("recordUri")?.as_str()?)?;
                    (uri.authority == did && uri.collection.as_deref() == Some(MANIFEST_COLLECTION) && is_valid_did(&did)).then_some((did, uri.rkey?))
                });
            if let Some(hint) = hint {
                self.note(format!(
                    "signature artifact {manifest_digest} names {} / {}{}",
                    hint.0,
                    hint.1,
                    if car.is_some() { " and carries a proof" } else { "" }
                ));
                if let Some(car) = car {
                    self.attached.borrow_mut().push((hint.0.clone(), hint.1.clone(), car));
                }
                hints.push(hint);
            }
        }
        Some(hints)
    }

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
                verdicts.push(verdict(did, Reason::DeadlineExceeded, "the time budget ran out before every candidate signer was checked".into()));
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

impl<'a> Context<'a> {
    /// A context for one decision (or one batch, for bundles and refreshes).
    pub fn new(
        config: &'a Config,
        policy: &'a Policy,
        cache: &'a Cache,
        http: Option<&'a Http>,
        registry: Option<&'a Http>,
        dns: &'a dyn Fn(&str) -> Result<Vec<String>, String>,
        now: i64,
    ) -> Context<'a> {
        Context {
            config,
            policy,
            cache,
            http,
            registry,
            dns,
            now,
            notes: Default::default(),
            used_stale: Default::default(),
            provenance: Default::default(),
            attached: Default::default(),
        }
    }
}

/// The JSON record of a decision: one audit-log line, and `verify --format json`.
pub fn decision_record(
    name: &str,
    digest: &str,
    decision: &Decision,
    requests: (usize, usize),
    elapsed: std::time::Duration,
) -> serde_json::Map<String, serde_json::Value> {
    let value = serde_json::json!({
        "name": name,
        "digest": digest,
        "admitted": decision.outcome != Outcome::Reject,
        "outcome": outcome_label(decision.outcome),
        "reason": decision.reason.code(),
        "message": decision.message,
        "rule": decision.rule,
        "signers": decision.signers,
        "requests": requests.0,
        "registryRequests": requests.1,
        "durationMs": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "exit": exit_code(decision),
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The exit code of a decision: 0 admitted (also in audit mode), 1 rejected, 2 undecided.
pub fn exit_code(decision: &Decision) -> u8 {
    match decision.outcome {
        Outcome::Admit | Outcome::AuditAdmit => crate::exit::ADMITTED,
        Outcome::Reject if is_undecided(decision.reason) => crate::exit::UNDECIDED,
        Outcome::Reject => crate::exit::REJECTED,
    }
}

/// True for reasons that mean "could not decide" (exit 2) rather than "rejected" (exit 1).
pub fn is_undecided(reason: Reason) -> bool {
    matches!(reason, Reason::NetworkError | Reason::DeadlineExceeded | Reason::ConfigInvalid | Reason::InvalidRequest)
}

/// A short label for an outcome.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Admit => "admitted",
        Outcome::AuditAdmit => "admitted (audit)",
        Outcome::Reject => "rejected",
    }
}
