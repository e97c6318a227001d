//! `bundle import`: every entry verified before it enters the node's cache, and nothing moves
//! backwards. A did:plc document must agree with its audit log (checked from the genesis hash
//! up); every proof must verify under its DID's key; fetch times are this node's.

use std::collections::BTreeMap;

use atproto_sig_core::did::{DidDocument, DidMethod, did_method};
use atproto_sig_core::plc::verify_audit_log;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::syntax::format_datetime_micros;
use atproto_sig_core::verify::{Expectation, KeySource, ProofInput, verify};
use atproto_sig_core::{Limits, Reason};
use base64::Engine;

use super::{Bundle, CollectionEntry, ImportReport};
use crate::cache::{Cache, DidEntry, Kind, LocatorEntry, ProofEntry};
use crate::config::Config;

/// Why one entry of a bundle is refused (said in the import report, entry by entry).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum Refusal {
    #[error(
        "it claims to be fetched {claimed}, later than this node's clock ({now}) plus clock_skew ({skew}) — a bundle cannot come from the future; check both clocks and re-create the bundle"
    )]
    FromTheFuture { claimed: String, now: String, skew: String },
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
    #[error("{message} ({code})")]
    Proof { message: String, code: &'static str },
    #[error("{0}")]
    RolledBack(String),
}

/// The document a bundle entry proves: did:plc entries must agree with their audit log.
fn check_did_entry(entry: &DidEntry, limits: &Limits) -> Result<(DidDocument, Option<String>), Refusal> {
    let document = DidDocument::parse(entry.document.as_bytes(), &entry.did, limits).map_err(|e| Refusal::Document(e.to_string()))?;
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

/// Refuses material that claims to be fetched later than this node's clock allows.
fn check_fetch_time(fetched_at: i64, now: i64, config: &Config) -> Result<(), Refusal> {
    if fetched_at > now.saturating_add(config.clock_skew.micros()) {
        return Err(Refusal::FromTheFuture {
            claimed: format_datetime_micros(fetched_at),
            now: format_datetime_micros(now),
            skew: config.clock_skew.to_string(),
        });
    }
    Ok(())
}

/// Verifies every entry and writes the accepted ones to `cache`. Nothing moves backwards: a
/// did:plc audit log that is a prefix of the stored one, or a proof at an older commit rev
/// than the stored one for the same record, is refused. Fetch times are this node's: never
/// later than the import (`now`), nor than a proof's signed commit.
pub fn import(bundle: &Bundle, cache: &Cache, source: &str, config: &Config, now: i64) -> ImportReport {
    let mut importer = Importer { bundle, cache, source, config, now, report: ImportReport::default(), documents: BTreeMap::new() };
    importer.documents();
    let proven = importer.proofs();
    importer.locators(&proven);
    for entry in &bundle.collections {
        importer.collection(entry);
    }
    importer.report
}

/// One import: the bundle, where it goes, and what has been verified so far.
struct Importer<'a> {
    bundle: &'a Bundle,
    cache: &'a Cache,
    source: &'a str,
    config: &'a Config,
    now: i64,
    report: ImportReport,
    /// DID documents verified from this bundle.
    documents: BTreeMap<String, DidDocument>,
}

/// What storing one proof did.
struct Stored {
    changed: bool,
    verified: bool,
}

/// One proof to verify and store.
struct ProofToStore<'p> {
    document: &'p DidDocument,
    collection: &'p str,
    rkey: &'p str,
    car: &'p [u8],
    /// The digest its record should name (from a locator), if known.
    digest: Option<&'p str>,
    source: String,
    /// The fetch time the bundle claims.
    claimed: i64,
}

impl Importer<'_> {
    /// DID documents: checked (did:plc against its audit log), never an older audit log.
    fn documents(&mut self) {
        let limits = Limits::default();
        for entry in &self.bundle.dids {
            let label = format!("DID document {}", entry.did);
            let checked = check_fetch_time(entry.fetched_at, self.now, self.config).and_then(|()| check_did_entry(entry, &limits));
            let (document, note) = match checked {
                Ok(found) => found,
                Err(e) => {
                    self.report.refused.push(format!("{label}: {e}"));
                    continue;
                }
            };
            self.report.notes.extend(note);
            let held = self.cache.read::<DidEntry>(Kind::Did, &[&entry.did]);
            if let (Some(held_log), Some(new_log)) = (held.as_ref().and_then(|h| h.audit_log.as_deref()), entry.audit_log.as_deref())
                && crate::knowledge::is_older_audit_log(new_log, held_log)
            {
                self.report.refused.push(format!("{label}: {}", Refusal::OlderAuditLog));
                continue;
            }
            self.documents.insert(entry.did.clone(), document);
            if held.as_ref().is_some_and(|h| h.document == entry.document && h.audit_log == entry.audit_log) {
                self.report.unchanged.push(label);
                continue;
            }
            let mut stored = entry.clone();
            stored.fetched_at = crate::knowledge::stored_fetch_time(entry.fetched_at, self.now, None);
            stored.source = format!("bundle {} ({})", self.source, entry.source);
            self.cache.write(Kind::Did, &[&entry.did], &stored);
            self.report.stored.push(label);
        }
    }

    /// The verified document of `did`: from this bundle, else the one this node holds.
    fn document_of(&self, did: &str) -> Option<DidDocument> {
        self.documents
            .get(did)
            .cloned()
            .or_else(|| self.cache.read::<DidEntry>(Kind::Did, &[did]).and_then(|e| check_did_entry(&e, &Limits::default()).ok()).map(|(d, _)| d))
    }

    /// Proofs; returns (did, rkey, digest) whose proof verified for exactly that digest: only
    /// these locators count.
    fn proofs(&mut self) -> Vec<(String, String, String)> {
        let mut proven = Vec::new();
        for entry in &self.bundle.proofs {
            let label = format!("proof {}/{}/{}", entry.did, entry.collection, entry.rkey);
            if let Err(e) = check_fetch_time(entry.fetched_at, self.now, self.config) {
                self.report.refused.push(format!("{label}: {e}"));
                continue;
            }
            let Some(document) = self.document_of(&entry.did) else {
                self.report.refused.push(format!("{label}: no verified DID document for {}", entry.did));
                continue;
            };
            let Ok(car) = base64::engine::general_purpose::STANDARD.decode(&entry.car) else {
                self.report.refused.push(format!("{label}: not base64"));
                continue;
            };
            let digest = self.bundle.locators.iter().find(|l| l.did == entry.did && l.rkey == entry.rkey).map(|l| l.digest.clone());
            let proof = ProofToStore {
                document: &document,
                collection: &entry.collection,
                rkey: &entry.rkey,
                car: &car,
                digest: digest.as_deref(),
                source: format!("bundle {} ({})", self.source, entry.source),
                claimed: entry.fetched_at,
            };
            match self.store_proof(&proof) {
                Ok(Stored { changed, verified }) => {
                    if verified && let Some(digest) = digest {
                        proven.push((entry.did.clone(), entry.rkey.clone(), digest));
                    }
                    if changed { self.report.stored.push(label) } else { self.report.unchanged.push(label) }
                }
                Err(e) => self.report.refused.push(format!("{label}: {e}")),
            }
        }
        proven
    }

    /// Locators, only where a proof verified for exactly that digest.
    fn locators(&mut self, proven: &[(String, String, String)]) {
        for locator in &self.bundle.locators {
            let label = format!("locator {} -> {}/{}", locator.digest, locator.did, locator.rkey);
            if !proven.iter().any(|(d, r, g)| *d == locator.did && *r == locator.rkey && *g == locator.digest) {
                // A locator must point at a record that names its digest; otherwise it could make a
                // good image look mismatched or revoked.
                self.report.refused.push(format!("{label}: its record does not verify for that digest"));
                continue;
            }
            if self.cache.read::<LocatorEntry>(Kind::Locator, &[&locator.did, &locator.digest]).is_some_and(|held| held.rkey == locator.rkey) {
                self.report.unchanged.push(label);
                continue;
            }
            let stored = LocatorEntry { fetched_at: crate::knowledge::stored_fetch_time(locator.fetched_at, self.now, None), ..locator.clone() };
            self.cache.write(Kind::Locator, &[&locator.did, &locator.digest], &stored);
            self.report.stored.push(label);
        }
    }

    /// Verifies one proof CAR and stores it unless this node holds a proof at the same or a
    /// newer commit.
    fn store_proof(&self, proof: &ProofToStore<'_>) -> Result<Stored, Refusal> {
        let limits = Limits::default();
        let did = proof.document.did.as_str();
        let zero = format!("sha256:{}", "0".repeat(64));
        let verdict = verify(&ProofInput {
            car: proof.car,
            key: KeySource::Document(proof.document),
            expect: Expectation { did, rkey: Some(proof.rkey), digest: proof.digest.unwrap_or(&zero), repository: None },
            now_micros: self.now,
            max_clock_skew_micros: self.config.clock_skew.micros(),
            limits: &limits,
        });
        // These outcomes are only reachable after the commit signature and the MST path verified.
        let authentic = matches!(verdict.reason, Reason::Verified | Reason::DigestMismatch | Reason::RecordDeleted | Reason::RecordInvalid);
        if proof.collection != MANIFEST_COLLECTION || !authentic {
            return Err(Refusal::Proof { message: verdict.message, code: verdict.reason.code() });
        }
        let (collection, rkey) = (proof.collection, proof.rkey);
        let rev = verdict.facts.rev.clone().unwrap_or_default();
        if let Some(held) = crate::knowledge::newer_held(self.cache, did, collection, rkey, &rev) {
            return Err(Refusal::RolledBack(crate::knowledge::rollback_message("this proof", &rev, &held)));
        }
        let held: Option<ProofEntry> = self.cache.read(Kind::Proof, &[did, collection, rkey]);
        let verified = verdict.reason == Reason::Verified;
        if held.as_ref().and_then(crate::knowledge::entry_rev).is_some_and(|(r, _)| r == rev) {
            return Ok(Stored { changed: false, verified });
        }
        let signed = atproto_sig_core::syntax::tid_timestamp_micros(&rev).and_then(|t| i64::try_from(t).ok());
        let entry = ProofEntry {
            did: did.to_owned(),
            collection: collection.to_owned(),
            rkey: rkey.to_owned(),
            fetched_at: crate::knowledge::stored_fetch_time(proof.claimed, self.now, signed),
            source: proof.source.clone(),
            car: base64::engine::general_purpose::STANDARD.encode(proof.car),
        };
        self.cache.write(Kind::Proof, &[did, collection, rkey], &entry);
        Ok(Stored { changed: true, verified })
    }

    /// Applies the signed state of a whole collection: every record this node knows of for the
    /// DID (cached proofs, locators, this bundle's entries) gets the proof cut from that state:
    /// present records a newer proof, deleted ones an absence proof that revokes them.
    fn collection(&mut self, entry: &CollectionEntry) {
        let label = format!("collection state {}/{}", entry.did, entry.collection);
        let checked = check_fetch_time(entry.fetched_at, self.now, self.config)
            .map_err(|e| e.to_string())
            .and_then(|()| self.document_of(&entry.did).ok_or_else(|| format!("no verified DID document for {}", entry.did)))
            .and_then(|document| Ok((document, base64::engine::general_purpose::STANDARD.decode(&entry.car).map_err(|_| "not base64".to_owned())?)))
            .and_then(|(document, car)| {
                let (_, present) = atproto_sig_core::collection::extract(&car, &entry.collection, &Limits::collection()).map_err(|e| e.to_string())?;
                Ok((document, car, present))
            });
        let (document, car, present) = match checked {
            Ok(found) => found,
            Err(e) => {
                self.report.refused.push(format!("{label}: {e}"));
                return;
            }
        };
        let locators: Vec<LocatorEntry> = self.cache.all::<LocatorEntry>(Kind::Locator).into_iter().map(|(_, l)| l).filter(|l| l.did == entry.did).collect();
        let rkeys = self.known_rkeys(entry, &present, &locators);
        let (mut changed, mut revoked, mut failed) = (0usize, Vec::new(), Vec::new());
        for rkey in &rkeys {
            let had = self.cache.read::<ProofEntry>(Kind::Proof, &[&entry.did, &entry.collection, rkey]).is_some();
            let proof = match atproto_sig_core::collection::record_proof(&car, &entry.collection, rkey, &Limits::collection()) {
                Ok(p) => p,
                Err(e) => {
                    failed.push(format!("{rkey}: {e}"));
                    continue;
                }
            };
            let digest = locators.iter().find(|l| &l.rkey == rkey).map(|l| l.digest.clone());
            let to_store = ProofToStore {
                document: &document,
                collection: &entry.collection,
                rkey,
                car: &proof,
                digest: digest.as_deref(),
                source: format!("bundle {} ({})", self.source, entry.source),
                claimed: entry.fetched_at,
            };
            match self.store_proof(&to_store) {
                Ok(Stored { changed: true, .. }) => {
                    changed += 1;
                    if had && !present.contains(rkey) {
                        revoked.push(rkey.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => failed.push(format!("{rkey}: {e}")),
            }
        }
        if failed.is_empty() {
            let what = format!("{label}: {} records known, {changed} proofs updated", rkeys.len());
            if changed > 0 { self.report.stored.push(what) } else { self.report.unchanged.push(what) }
        } else {
            self.report.refused.push(format!("{label}: {}", failed.join("; ")));
        }
        for rkey in revoked {
            self.report.notes.push(format!("revoked at://{}/{}/{rkey}: the signed collection state proves the record is gone", entry.did, entry.collection));
        }
    }

    /// Every record key this node knows for the collection's DID: present in the signed state,
    /// held as proofs or locators, or carried by this bundle.
    fn known_rkeys(&self, entry: &CollectionEntry, present: &[String], locators: &[LocatorEntry]) -> Vec<String> {
        let mut rkeys: Vec<String> = present.to_vec();
        rkeys.extend(
            self.cache
                .all::<ProofEntry>(Kind::Proof)
                .into_iter()
                .map(|(_, p)| p)
                .filter(|p| p.did == entry.did && p.collection == entry.collection)
                .map(|p| p.rkey),
        );
        rkeys.extend(locators.iter().map(|l| l.rkey.clone()));
        rkeys.extend(self.bundle.proofs.iter().filter(|p| p.did == entry.did).map(|p| p.rkey.clone()));
        rkeys.sort();
        rkeys.dedup();
        rkeys
    }
}
