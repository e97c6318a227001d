//! A signed re-check of one DID (what every hint leads to): its DID document fetched again
//! (a changed signing key is logged at warning level and counted), then either a fresh proof
//! (getRecord) of each named or cached record, or, after a gap, the signed state of its whole
//! `io.atcr.manifest` collection (getRepo, applied as a bundle's collection entry is: every
//! cached record that is gone gets the absence proof cut from that state). Only signed
//! material changes the cache, through the engine's knowledge rules.

use atproto_sig_core::Limits;
use atproto_sig_core::Reason;
use atproto_sig_core::did::DidDocument;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use base64::Engine as _;

use super::Watcher;
use super::queue::{Depth, Job};
use crate::bundle::{Bundle, CollectionEntry};
use crate::engine::Session;
use crate::material::read::Refresh;
use crate::material::store::{Cache, Kind, ProofEntry};

/// The signing key this node holds for `did` (did:key form), if any.
fn held_key(watcher: &Watcher, cache: &Cache, did: &str) -> Option<String> {
    super::commit::held_document(watcher, cache, did)?.signing_key.ok().map(|k| k.to_did_key())
}

pub(super) fn run(watcher: &Watcher, job: &Job) {
    watcher.health.recheck(job.why);
    // Whatever the re-check finds, the publisher publishes what the DID's repository holds now.
    watcher.republish(&job.did);
    crate::log::debug(&format!("watch: re-check ({}, {:?}) of {}", job.why, job.depth, job.did));
    let policy = watcher.policy();
    let session = watcher.session(&policy, Refresh::Always);
    let cache = watcher.cache();
    let before = held_key(watcher, &cache, &job.did);
    let document = match session.document(&job.did) {
        Ok((document, _)) => document,
        Err(v) => {
            watcher.health.recheck_failed();
            crate::log::warn(&format!("watch: re-check ({}) of {}: its DID document: {} — cached proofs stay until their TTL", job.why, job.did, v.message));
            return;
        }
    };
    let after = document.signing_key.as_ref().ok().map(atproto_sig_core::crypto::PublicKey::to_did_key);
    if let (Some(old), Some(new)) = (&before, &after)
        && old != new
    {
        watcher.health.key_changed(job.announced);
        let how = if job.announced { "after an #identity event" } else { "without an #identity event first: unexpected" };
        crate::log::warn(&format!(
            "watch: the signing key of {} changed from {old} to {new} ({how}); its cached proofs are fetched again and checked against the new key",
            job.did
        ));
    }
    let changed = match job.depth {
        Depth::Full => match full(watcher, &session, &document) {
            Ok(changed) => changed,
            Err(e) => {
                crate::log::warn(&format!("watch: the collection state of {}: {e} — re-checking its cached records one by one", job.did));
                records(watcher, &session, &document, job)
            }
        },
        Depth::Records => records(watcher, &session, &document, job),
    };
    if changed {
        watcher.changed(&job.did);
    }
}

/// A fresh proof of each record of the job this node holds a proof of; true when one changed.
fn records(watcher: &Watcher, session: &Session<'_>, document: &DidDocument, job: &Job) -> bool {
    let cache = watcher.cache();
    let rkeys = match &job.rkeys {
        Some(rkeys) => rkeys.clone(),
        // Every cached record of the DID: those of the watched set, and any cached since.
        None => {
            let mut rkeys = watcher.watched().records.get(&job.did).cloned().unwrap_or_default();
            if job.depth == Depth::Records && rkeys.is_empty() {
                rkeys.extend(cache.all::<ProofEntry>(Kind::Proof).into_iter().filter(|(_, e)| e.did == job.did).map(|(_, e)| e.rkey));
            }
            rkeys
        }
    };
    let mut changed = false;
    for rkey in &rkeys {
        let parts = [job.did.as_str(), MANIFEST_COLLECTION, rkey.as_str()];
        let Some(held) = cache.read::<ProofEntry>(Kind::Proof, &parts) else { continue };
        let result = session.proof(document, rkey);
        let now = cache.read::<ProofEntry>(Kind::Proof, &parts);
        let replaced = now.as_ref().is_some_and(|n| n.car != held.car);
        // getRecord answers a deleted record with an absence proof: a proof all the same.
        let result = match result {
            Ok((Some(car), _)) if proves_absent(document, rkey, &car, &watcher.config) => Ok((None, ())),
            Ok((car, _)) => Ok((car, ())),
            Err(v) => Err(v),
        };
        let at = format!("at://{}/{MANIFEST_COLLECTION}/{rkey}", job.did);
        match result {
            Err(v) if v.reason == Reason::RecordDeleted && replaced => {
                changed = true;
                watcher.health.revoked("recheck");
                crate::log::info(&format!("watch: {at} revoked (the record is deleted), proven by its PDS on a re-check ({})", job.why));
            }
            Err(v) if matches!(v.reason, Reason::NetworkError | Reason::RateLimited | Reason::DeadlineExceeded) => {
                watcher.health.recheck_failed();
                crate::log::warn(&format!("watch: re-check ({}) of {at}: {} — the cached proof stays until its TTL", job.why, v.message));
            }
            Err(v) => {
                changed |= replaced;
                crate::log::info(&format!("watch: re-check ({}) of {at}: {}", job.why, v.message));
            }
            Ok((None, _)) if replaced => {
                changed = true;
                watcher.health.revoked("recheck");
                crate::log::info(&format!("watch: {at} revoked (the record is deleted), proven by its PDS on a re-check ({})", job.why));
            }
            Ok(_) if replaced => {
                changed = true;
                watcher.health.changed();
                crate::log::debug(&format!("watch: re-check ({}) of {at}: a newer proof stored", job.why));
            }
            Ok(_) => {}
        }
    }
    changed
}

/// Whether `car` proves `rkey` absent under a commit signed by the document's key.
fn proves_absent(document: &DidDocument, rkey: &str, car: &[u8], config: &crate::config::Config) -> bool {
    let Ok(key) = &document.signing_key else { return false };
    let verdict = atproto_sig_core::verify::verify(&atproto_sig_core::verify::ProofInput {
        car,
        key: atproto_sig_core::verify::KeySource::Key(key),
        expect: atproto_sig_core::verify::Expectation { did: &document.did, rkey: Some(rkey), digest: None, repository: None },
        now_micros: crate::clock::now_micros(None).unwrap_or(0),
        max_clock_skew_micros: config.clock_skew.micros(),
        limits: &Limits::default(),
        known_blocks: Some(crate::material::knowledge::known_blocks()),
    });
    verdict.reason == Reason::RecordDeleted
}

/// The signed state of the DID's whole collection, applied as a bundle's would be; true when
/// a cached proof changed.
fn full(watcher: &Watcher, session: &Session<'_>, document: &DidDocument) -> Result<bool, String> {
    let did = &document.did;
    let http = session.http().ok_or("offline")?;
    let pds = document.pds.clone().ok_or("its DID document names no PDS")?;
    let repo = crate::lookup::atproto::fetch_repo(http, &pds, did).map_err(|e| e.to_string())?;
    let (car, _) = atproto_sig_core::collection::extract(&repo, MANIFEST_COLLECTION, &Limits::repository()).map_err(|e| e.to_string())?;
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let bundle = Bundle {
        format: crate::bundle::FORMAT.into(),
        version: crate::bundle::VERSION,
        created_at: String::new(),
        dids: Vec::new(),
        locators: Vec::new(),
        proofs: Vec::new(),
        collections: vec![CollectionEntry {
            did: did.clone(),
            collection: MANIFEST_COLLECTION.into(),
            fetched_at: now,
            source: pds.clone(),
            car: base64::engine::general_purpose::STANDARD.encode(&car),
        }],
        handles: Vec::new(),
    };
    let report = crate::bundle::import::import(&bundle, &watcher.cache(), "watch", &watcher.config, now);
    if let Some(refused) = report.refused.first() {
        return Err(refused.clone());
    }
    for note in report.notes.iter().filter(|n| n.starts_with("revoked ")) {
        watcher.health.revoked("recheck");
        crate::log::info(&format!("watch: {note}"));
    }
    Ok(!report.stored.is_empty())
}
