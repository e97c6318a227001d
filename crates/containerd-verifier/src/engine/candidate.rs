//! One candidate signer: its DID document, where its record for the digest is (hint, known
//! locator, the digest's hex, a listRecords scan), the proof, the verdict.

use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::{Reason, Verdict};

use super::context::*;
use super::failure::*;
use super::proof::*;
use crate::cache::{Kind, LocatorEntry};
use crate::resolve::{self};

impl Context<'_> {
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
                        let pds = pds.as_deref().unwrap_or("its PDS").to_owned();
                        return Failure::RecordGone { did: did.to_owned(), rkey, digest: digest.to_owned(), pds }.verdict(did);
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
                    last_failure.get_or_insert(Failure::NoRecordUnder { did: did.to_owned(), digest: digest.to_owned() }.verdict(did));
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
                Err(error) => return Failure::Lookup { what: format!("the record list of {did}"), kind: Lookup::Record, error }.verdict(did),
            }
        }
        last_failure.unwrap_or_else(|| Failure::NoRecord { did: did.to_owned(), digest: digest.to_owned() }.verdict(did))
    }
}
