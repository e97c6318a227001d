//! The proof step: a proof CAR for one record, from cache, PDS or (offline) bundles and
//! attached artifacts, with where it came from; and the core check of it.

#![allow(clippy::result_large_err)]

use atproto_sig_core::did::DidDocument;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::verify::{Expectation, KeySource, ProofInput, verify};
use atproto_sig_core::{Limits, Verdict};
use base64::Engine;

use super::context::Session;
use super::failure::{Failure, Lookup};
use crate::lookup::atproto::{self, LookupError, ProofAnswer};
use crate::material::knowledge::{self, Refusal};
use crate::material::read::{Got, Miss};
use crate::material::store::{Kind, ProofEntry};
use crate::remote::NetError;

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
        let age = |t: i64| crate::clock::human_age(now.saturating_sub(t));
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

impl crate::material::read::FetchError for ProofMiss {
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

impl Session<'_> {
    /// A proof for `did`/`rkey`: cached if fresh, else fetched; stale only on network failure.
    /// A fetched proof goes into the cache only through `knowledge::accept_proof` (its commit
    /// signature verified under `document`'s key, not older than the proof already held).
    pub fn proof(&self, document: &DidDocument, rkey: &str) -> Result<(Option<Vec<u8>>, Origin), Verdict> {
        let did = document.did.as_str();
        let parts = [did, MANIFEST_COLLECTION, rkey];
        let Some(http) = &self.http else {
            let cached: Option<ProofEntry> = self.cache.read(Kind::Proof, &parts);
            return self.offline_proof(document, rkey, cached.as_ref().and_then(knowledge::decode_car));
        };
        let material = self.material(Kind::Proof, &parts, self.config.proof_ttl);
        let fetch = || -> Result<Option<ProofEntry>, ProofMiss> {
            let Some(pds) = document.pds.as_deref() else {
                return Err(ProofMiss::Refused(Box::new(Failure::NoPds { did: did.to_owned() }.verdict(did))));
            };
            match atproto::fetch_proof(http, pds, did, MANIFEST_COLLECTION, rkey).map_err(ProofMiss::Lookup)? {
                ProofAnswer::Car(car) => Ok(Some(ProofEntry {
                    did: did.to_owned(),
                    collection: MANIFEST_COLLECTION.into(),
                    rkey: rkey.to_owned(),
                    fetched_at: self.now,
                    source: pds.to_owned(),
                    car: base64::engine::general_purpose::STANDARD.encode(&car),
                })),
                ProofAnswer::NotFound => Ok(None),
            }
        };
        let refused = std::cell::RefCell::new(None);
        let accept = |entry: &ProofEntry| {
            let Some(car) = knowledge::decode_car(entry) else { return };
            let offered = knowledge::OfferedProof {
                document,
                collection: MANIFEST_COLLECTION,
                rkey,
                car: &car,
                digest: None,
                source: entry.source.clone(),
                fetched_at: entry.fetched_at,
                // Fetched just now by this very session: this node's own clock.
                fetched_by: knowledge::FetchedBy::ThisNode,
                now: self.now,
                clock_skew_micros: self.config.clock_skew.micros(),
            };
            // An unproven proof is simply not stored: the check that follows gives its verdict.
            if let Err(Refusal::RolledBack { rev, held }) = knowledge::accept_proof(&self.cache, &offered) {
                let what = format!("the proof {} served for {did}/{MANIFEST_COLLECTION}/{rkey}", entry.source);
                *refused.borrow_mut() = Some(knowledge::rollback_message(&what, &rev, &held));
            }
        };
        let got = material.get(true, |e: &ProofEntry| knowledge::decode_car(e).is_some(), fetch, accept);
        if let Some(message) = refused.take() {
            return Err(Failure::RolledBack(message).verdict(did));
        }
        match got {
            Ok(Got::Cached(entry)) => Ok((knowledge::decode_car(&entry), Origin::Cached { fetched_at: entry.fetched_at })),
            Ok(Got::Fetched(entry) | Got::Offline(entry)) => Ok((knowledge::decode_car(&entry), Origin::Fetched)),
            Ok(Got::Stale(entry, e)) => {
                self.note(format!("using the cached proof for {did}/{rkey} past its TTL: {e}"));
                Ok((knowledge::decode_car(&entry), Origin::Stale { fetched_at: entry.fetched_at }))
            }
            Err(Miss::Nothing | Miss::Offline) => Ok((None, Origin::Fetched)),
            Err(Miss::Lookup(ProofMiss::Refused(v))) => Err(*v),
            Err(Miss::Lookup(ProofMiss::Lookup(e))) => {
                let pds = document.pds.as_deref().unwrap_or("its PDS");
                Err(Failure::Lookup { what: format!("the proof from {pds}"), kind: Lookup::Record, error: e }.verdict(did))
            }
        }
    }

    /// Offline sources: the cache (imports, bundles) and proofs attached to the image. Their
    /// age is their signed commit rev, never a fetch time: a `fetchedAt` in a bundle or an
    /// artifact timestamp is the word of whoever made it. A revoked image therefore stays
    /// admitted offline at most `max_proof_age` after the last commit this node has seen.
    fn offline_proof(&self, document: &DidDocument, rkey: &str, cached: Option<Vec<u8>>) -> Result<(Option<Vec<u8>>, Origin), Verdict> {
        let did = document.did.as_str();
        let attached = self.attached.borrow().iter().find(|(d, r, _)| d == did && r == rkey).map(|(_, _, car)| car.clone());
        // Ranked by signed rev only: a proof whose signature does not verify (a forged newer
        // rev pushed as an artifact) never outranks one that does.
        let key = document.signing_key.as_ref().ok();
        let unsigned = std::cell::RefCell::new(None);
        let dated = |car: Vec<u8>, attached: bool| match key.and_then(|k| knowledge::signed_rev(&car, k)) {
            Some((_, t)) => Some((t, car, attached)),
            None => {
                self.note(format!(
                    "{} proof for {did}/{rkey} does not verify under the DID's key: not ranked",
                    if attached { "an attached" } else { "the cached" }
                ));
                let dated = knowledge::commit_rev(&car).map(|(_, t)| (t, car, attached));
                unsigned.borrow_mut().get_or_insert(dated);
                None
            }
        };
        let signed = match (cached.and_then(|c| dated(c, false)), attached.and_then(|c| dated(c, true))) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        // With no proof that verifies, the first one offered is checked for its own verdict.
        let newest = signed.or_else(|| unsigned.take().flatten());
        match newest {
            Some((committed_at, _, attached)) if self.now.saturating_sub(committed_at) > self.config.max_proof_age.micros() => Err(Failure::ProofTooOld {
                did: did.to_owned(),
                rkey: rkey.to_owned(),
                attached,
                committed: atproto_sig_core::syntax::format_datetime_micros(committed_at),
                max_age: self.config.max_proof_age.to_string(),
            }
            .verdict(did)),
            Some((committed_at, car, attached)) => Ok((Some(car), Origin::Offline { committed_at, attached })),
            None => Err(Failure::Offline { what: format!("a proof for {did}/{MANIFEST_COLLECTION}/{rkey}"), kind: Lookup::Record }.verdict(did)),
        }
    }

    pub(super) fn check(&self, car: &[u8], document: &DidDocument, did: &str, rkey: &str, digest: &str, repository: Option<&str>) -> Verdict {
        let limits = Limits::default();
        verify(&ProofInput {
            car,
            key: KeySource::Document(document),
            expect: Expectation { did, rkey: Some(rkey), digest: Some(digest), repository },
            now_micros: self.now,
            max_clock_skew_micros: self.config.clock_skew.micros(),
            limits: &limits,
            known_blocks: Some(crate::material::knowledge::known_blocks()),
        })
    }
}
