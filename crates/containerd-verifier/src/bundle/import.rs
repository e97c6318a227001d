//! `bundle import`: every entry verified before it enters the node's cache, and nothing moves
//! backwards. A did:plc document must agree with its audit log (checked from the genesis hash
//! up); every proof must verify under its DID's key; fetch times are this node's.

use std::collections::BTreeMap;

use atproto_sig_core::did::DidDocument;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::{Limits, Reason};
use base64::Engine;

use super::{Bundle, CollectionEntry, ImportReport};
use crate::config::Config;
use crate::material::knowledge::{self, DocumentAccepted, DocumentRules, FetchedBy, OfferedProof, Refusal, check_fetch_time, checked_document};
use crate::material::store::{Cache, DidEntry, HandleEntry, Kind, LocatorEntry, ProofEntry};

/// Verifies every entry and writes the accepted ones to `cache`. Nothing moves backwards: a
/// did:plc audit log that is a prefix of the stored one, or a proof at an older commit rev
/// than the stored one for the same record, is refused. Fetch times are this node's: never
/// later than the import (`now`), nor than a proof's signed commit.
pub fn import(bundle: &Bundle, cache: &Cache, source: &str, config: &Config, now: i64) -> ImportReport {
    import_with(bundle, cache, source, config, now, DocumentRules::default())
}

/// [`import`], with the operator's word on DID document changes (`--allow-did-web-key-change`).
pub fn import_with(bundle: &Bundle, cache: &Cache, source: &str, config: &Config, now: i64, rules: DocumentRules) -> ImportReport {
    import_as(bundle, cache, source, config, now, rules, FetchedBy::Claim)
}

/// [`import_with`], with the bundle's fetch times taken as `fetched_by` says: a publication
/// signed by a configured publisher (`fleet`) makes them count as that publisher's fetch.
pub fn import_as(bundle: &Bundle, cache: &Cache, source: &str, config: &Config, now: i64, rules: DocumentRules, fetched_by: FetchedBy) -> ImportReport {
    let mut importer = Importer { bundle, cache, source, config, now, rules, fetched_by, report: ImportReport::default(), documents: BTreeMap::new() };
    importer.documents();
    let proven = importer.proofs();
    importer.locators(&proven);
    for entry in &bundle.collections {
        importer.collection(entry);
    }
    importer.handles();
    importer.report
}

/// One import: the bundle, where it goes, and what has been verified so far.
struct Importer<'a> {
    bundle: &'a Bundle,
    cache: &'a Cache,
    source: &'a str,
    config: &'a Config,
    now: i64,
    rules: DocumentRules,
    fetched_by: FetchedBy,
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
            let checked = check_fetch_time(entry.fetched_at, self.now, &self.config.clock_skew)
                .and_then(|()| checked_document(entry, &limits).map_err(|e| e.to_string()));
            let (document, note) = match checked {
                Ok(found) => found,
                Err(e) => {
                    self.report.refused.push(format!("{label}: {e}"));
                    continue;
                }
            };
            self.report.notes.extend(note);
            let stored = DidEntry { source: format!("bundle {} ({})", self.source, entry.source), ..entry.clone() };
            match knowledge::accept_document(self.cache, &stored, self.now, self.rules) {
                Ok(DocumentAccepted::Stored) => self.report.stored.push(label),
                Ok(DocumentAccepted::DidWebKeyChanged) => {
                    self.report.notes.push(format!("{label}: its #atproto key replaces the one this node held (allowed by --allow-did-web-key-change)"));
                    self.report.stored.push(label);
                }
                Ok(DocumentAccepted::PlcRecovered { nullified }) => {
                    self.report.notes.push(format!(
                        "{label}: its audit log nullifies operation {nullified} this node held, a did:plc recovery (allowed by --accept-plc-recovery)"
                    ));
                    self.report.stored.push(label);
                }
                Ok(DocumentAccepted::Unchanged) => self.report.unchanged.push(label),
                Err(e) => {
                    self.report.refused.push(format!("{label}: {e}"));
                    continue;
                }
            }
            self.documents.insert(entry.did.clone(), document);
        }
    }

    /// The verified document of `did`: from this bundle, else the one this node holds.
    fn document_of(&self, did: &str) -> Option<DidDocument> {
        self.documents
            .get(did)
            .cloned()
            .or_else(|| self.cache.read::<DidEntry>(Kind::Did, &[did]).and_then(|e| checked_document(&e, &Limits::default()).ok()).map(|(d, _)| d))
    }

    /// Proofs; returns (did, rkey, digest) whose proof verified for exactly that digest: only
    /// these locators count.
    fn proofs(&mut self) -> Vec<(String, String, String)> {
        let mut proven = Vec::new();
        for entry in &self.bundle.proofs {
            let label = format!("proof {}/{}/{}", entry.did, entry.collection, entry.rkey);
            if let Err(e) = check_fetch_time(entry.fetched_at, self.now, &self.config.clock_skew) {
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
            let stored = LocatorEntry { fetched_at: crate::material::knowledge::stored_fetch_time(locator.fetched_at, self.now, None), ..locator.clone() };
            self.cache.write(Kind::Locator, &[&locator.did, &locator.digest], &stored);
            self.report.stored.push(label);
        }
    }

    /// Verifies one proof CAR and stores it unless this node holds a proof at the same or a
    /// newer commit (`knowledge::accept_proof`, the one way in).
    fn store_proof(&self, proof: &ProofToStore<'_>) -> Result<Stored, Refusal> {
        let offered = OfferedProof {
            document: proof.document,
            collection: proof.collection,
            rkey: proof.rkey,
            car: proof.car,
            digest: proof.digest,
            source: proof.source.clone(),
            fetched_at: proof.claimed,
            fetched_by: self.fetched_by,
            now: self.now,
            clock_skew_micros: self.config.clock_skew.micros(),
        };
        let accepted = knowledge::accept_proof(self.cache, &offered)?;
        // Verified for the locator's digest (or, with none, proven present).
        let verified = accepted.verdict.reason == Reason::Verified && proof.digest.is_some();
        Ok(Stored { changed: accepted.changed, verified })
    }

    /// Applies the signed state of a whole collection: every record this node knows of for the
    /// DID (cached proofs, locators, this bundle's entries) gets the proof cut from that state:
    /// present records a newer proof, deleted ones an absence proof that revokes them.
    fn collection(&mut self, entry: &CollectionEntry) {
        let label = format!("collection state {}/{}", entry.did, entry.collection);
        let limits = Limits::collection();
        // The signature first, once for the whole collection; then linear work only.
        let checked = check_fetch_time(entry.fetched_at, self.now, &self.config.clock_skew)
            .and_then(|()| self.document_of(&entry.did).ok_or_else(|| format!("no verified DID document for {}", entry.did)))
            .and_then(|document| Ok((document, base64::engine::general_purpose::STANDARD.decode(&entry.car).map_err(|_| "not base64".to_owned())?)))
            .and_then(|(document, car)| {
                let key = document.signing_key.clone().map_err(|e| e.to_string())?;
                let state =
                    atproto_sig_core::collection::signed_state(&car, &entry.did, &key, &entry.collection, self.now, self.config.clock_skew.micros(), &limits)
                        .map_err(|e| e.to_string())?;
                if entry.collection != MANIFEST_COLLECTION {
                    return Err(format!("collection {:?} is not {MANIFEST_COLLECTION}", entry.collection));
                }
                Ok((document, car, state))
            });
        let (document, car, state) = match checked {
            Ok(found) => found,
            Err(e) => {
                self.report.refused.push(format!("{label}: {e}"));
                return;
            }
        };
        let accepted = match knowledge::accept_state(self.cache, &state) {
            Ok(accepted) => Some(accepted),
            Err(e @ Refusal::OlderState { .. }) => {
                self.report.refused.push(format!("{label}: {e}"));
                return;
            }
            Err(e) => {
                // Verified but not kept: what it proves of every record this node holds is
                // still stored, record by record, so nothing it revokes stays admitted.
                self.report.refused.push(format!("{label}: {e} — the records this node holds are still checked against it"));
                None
            }
        };
        let locators: Vec<LocatorEntry> = self.cache.all::<LocatorEntry>(Kind::Locator).into_iter().map(|(_, l)| l).filter(|l| l.did == entry.did).collect();
        // Proofs only for the records this node knows of (the state itself answers for the rest).
        // Records whose held proof is already at this commit need nothing: no cut, no check.
        let known: Vec<String> = self
            .known_rkeys(entry, &locators)
            .into_iter()
            .filter(|r| {
                let held = self.held_rev(entry, r);
                (state.records.contains_key(r) || held.is_some()) && held.as_deref() != Some(state.rev.as_str())
            })
            .collect();
        let proofs = match atproto_sig_core::collection::record_proofs(&car, &entry.collection, &known, &limits) {
            Ok(proofs) => proofs,
            Err(e) => {
                self.report.refused.push(format!("{label}: {e}"));
                return;
            }
        };
        let (mut changed, mut failed) = (0usize, Vec::new());
        for (rkey, proof) in &proofs {
            let digest = locators.iter().find(|l| &l.rkey == rkey).map(|l| l.digest.clone());
            let to_store = ProofToStore {
                document: &document,
                collection: &entry.collection,
                rkey,
                car: proof,
                digest: digest.as_deref(),
                source: format!("bundle {} ({})", self.source, entry.source),
                claimed: entry.fetched_at,
            };
            match self.store_proof(&to_store) {
                Ok(Stored { changed: true, .. }) => changed += 1,
                Ok(_) => {}
                Err(e) => failed.push(format!("{rkey}: {e}")),
            }
        }
        let what = format!("{label} at rev {}: {} records, {} known here, {changed} proofs updated", state.rev, state.records.len(), known.len());
        if !failed.is_empty() {
            self.report.refused.push(format!("{label}: {}", failed.join("; ")));
        } else if changed > 0 || accepted == Some(knowledge::StateAccepted::Stored) {
            self.report.stored.push(what);
        } else {
            self.report.unchanged.push(what);
        }
        if accepted.is_some() {
            for rkey in proofs.iter().map(|(r, _)| r).filter(|r| !state.records.contains_key(*r)) {
                self.report
                    .notes
                    .push(format!("revoked at://{}/{}/{rkey}: the signed collection state proves the record is gone", entry.did, entry.collection));
            }
        }
    }

    /// Handle resolutions: only from a signed publication (a resolution is nobody's signed
    /// word), only where the DID's verified document claims the handle, never older than the
    /// one held. Every use checks them against the document again.
    fn handles(&mut self) {
        for entry in &self.bundle.handles {
            let label = format!("handle {} -> {}", entry.handle, entry.did);
            let FetchedBy::Publisher { published_at } = self.fetched_by else {
                self.report.notes.push(format!("{label}: not imported (only a signed publication's handle resolutions are)"));
                continue;
            };
            if let Err(e) = check_fetch_time(entry.fetched_at, self.now, &self.config.clock_skew) {
                self.report.refused.push(format!("{label}: {e}"));
                continue;
            }
            let handle = entry.handle.to_ascii_lowercase();
            if self.document_of(&entry.did).and_then(|d| d.handle) != Some(handle.clone()) {
                self.report.refused.push(format!("{label}: the DID's verified document does not claim that handle"));
                continue;
            }
            let fetched_at = knowledge::stored_fetch_time(entry.fetched_at, self.now, Some(published_at));
            let held: Option<HandleEntry> = self.cache.read(Kind::Handle, &[handle.as_str()]);
            if held.as_ref().is_some_and(|h| h.fetched_at >= fetched_at) {
                self.report.unchanged.push(label);
                continue;
            }
            self.cache.write(Kind::Handle, &[handle.as_str()], &HandleEntry { handle: handle.clone(), did: entry.did.clone(), fetched_at });
            self.report.stored.push(label);
        }
    }

    /// The rev of the proof this node holds for `rkey` of the collection's DID, if any.
    fn held_rev(&self, entry: &CollectionEntry, rkey: &str) -> Option<String> {
        self.cache.read::<ProofEntry>(Kind::Proof, &[&entry.did, &entry.collection, rkey]).as_ref().and_then(knowledge::entry_rev).map(|(rev, _)| rev)
    }

    /// Every record key this node knows for the collection's DID: held as proofs or locators,
    /// or carried by this bundle.
    fn known_rkeys(&self, entry: &CollectionEntry, locators: &[LocatorEntry]) -> Vec<String> {
        let mut rkeys: Vec<String> = Vec::new();
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
