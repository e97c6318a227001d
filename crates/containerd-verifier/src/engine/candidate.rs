//! One candidate signer: its DID document, where its record for the digest is (hint, known
//! locator, the digest's hex, a listRecords scan), the proof, the verdict.

use atproto_sig_core::did::DidDocument;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::{Reason, Verdict};

use super::context::Session;
use super::failure::{Failure, Lookup};
use super::proof::Origin;
use crate::lookup::atproto;
use crate::material::knowledge;
use crate::material::store::{Kind, LocatorEntry};

/// Where a record key came from: it decides what a failure there means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// From a signature artifact in the registry: anyone able to push controls it, so a
    /// failure there is never decisive.
    Hint,
    /// Held this digest's record before (our cache): absence there means deletion.
    Known,
    /// The digest's hex, or a listRecords match.
    Guess,
}

/// What trying one record key settled.
enum Tried {
    /// The candidate's verdict (verified, or a decisive failure).
    Decided(Verdict),
    /// No record under this key: the explanation unless a better one is found.
    Absent(Verdict),
    /// A hinted record that does not prove the digest: the explanation so far.
    Misled(Verdict),
    /// The key this node knew no longer proves the digest (the record was deleted, moved or
    /// re-pointed): the explanation, unless the digest's record is found elsewhere.
    Outdated(Verdict),
    /// No proof at all under this key.
    Nothing,
}

/// One candidate's facts while its record keys are tried.
struct Search<'d> {
    did: &'d str,
    digest: &'d str,
    repository: Option<&'d str>,
    document: DidDocument,
    stale_document: bool,
    locator: Option<LocatorEntry>,
}

impl Session<'_> {
    /// Verifies one candidate signer for `digest`. Online, a signature that fails against a
    /// cached key is tried once more against a freshly fetched document: after a genuine key
    /// rotation the cache is simply behind, and a fresh node would admit.
    pub fn verify_candidate(&self, did: &str, digest: &str, repository: Option<&str>, hint_rkey: Option<&str>) -> Verdict {
        let (document, stale_document, fetched) = match self.document_read(did, self.refresh) {
            Ok(found) => found,
            Err(v) => return v,
        };
        let first = self.verify_with(did, digest, repository, hint_rkey, document.clone(), stale_document);
        if first.reason != Reason::SignatureInvalid || fetched || self.http.is_none() {
            return first;
        }
        match self.document_read(did, crate::material::read::Refresh::Always) {
            Ok((fresh, stale, _)) if fresh.signing_key != document.signing_key => {
                self.note(format!("the signature of {did} failed against its cached key; its document, fetched again, names another key: checked again"));
                self.verify_with(did, digest, repository, hint_rkey, fresh, stale)
            }
            _ => first,
        }
    }

    fn verify_with(&self, did: &str, digest: &str, repository: Option<&str>, hint_rkey: Option<&str>, document: DidDocument, stale_document: bool) -> Verdict {
        let locator: Option<LocatorEntry> = self.cache.read(Kind::Locator, &[did, digest]);
        let mut attempts: Vec<(String, Source)> = Vec::new();
        // A key this node already knew stays known when an artifact hints it too: its absence
        // is a deletion, whoever else names it.
        let known = locator.as_ref().map(|l| l.rkey.as_str());
        attempts.extend(hint_rkey.filter(|h| Some(*h) != known).map(|h| (h.to_owned(), Source::Hint)));
        attempts.extend(known.map(|k| (k.to_owned(), Source::Known)));
        attempts.push((digest.strip_prefix("sha256:").unwrap_or(digest).to_owned(), Source::Guess));
        let search = Search { did, digest, repository, document, stale_document, locator };
        let mut tried: Vec<String> = Vec::new();
        let mut last_failure: Option<Verdict> = None;
        // The known keys first; then, once, the record list for a key not tried yet.
        for round in 0..2 {
            if round == 1 {
                match self.listed_rkey(&search) {
                    Ok(Some(rkey)) => attempts.push((rkey, Source::Guess)),
                    Ok(None) => {}
                    Err(v) => return v,
                }
            }
            for (rkey, source) in attempts.drain(..) {
                if tried.contains(&rkey) {
                    continue;
                }
                tried.push(rkey.clone());
                match self.try_rkey(&search, rkey, source) {
                    Tried::Decided(verdict) => return verdict,
                    Tried::Absent(verdict) => _ = last_failure.get_or_insert(verdict),
                    Tried::Misled(verdict) | Tried::Outdated(verdict) => last_failure = Some(verdict),
                    Tried::Nothing => {}
                }
            }
        }
        last_failure.unwrap_or_else(|| Failure::NoRecord { did: did.to_owned(), digest: digest.to_owned() }.verdict(did))
    }

    /// The record key the PDS lists for the digest (a bounded listRecords scan), if any.
    fn listed_rkey(&self, search: &Search<'_>) -> Result<Option<String>, Verdict> {
        let (Some(http), Some(pds)) = (&self.http, search.document.pds.as_deref()) else { return Ok(None) };
        atproto::find_record(http, pds, search.did, MANIFEST_COLLECTION, search.digest, search.repository)
            .map_err(|error| Failure::Lookup { what: format!("the record list of {}", search.did), kind: Lookup::Record, error }.verdict(search.did))
    }

    /// Fetches and checks the proof under one record key.
    fn try_rkey(&self, search: &Search<'_>, rkey: String, source: Source) -> Tried {
        let did = search.did;
        let (car, origin) = match self.proof(&search.document, &rkey) {
            Ok(found) => found,
            Err(v) => return Tried::Decided(v),
        };
        let Some(car) = car else {
            if source == Source::Known {
                let pds = search.document.pds.as_deref().unwrap_or("its PDS").to_owned();
                return self.known_failed(Failure::RecordGone { did: did.to_owned(), rkey, digest: search.digest.to_owned(), pds }.verdict(did));
            }
            return Tried::Nothing;
        };
        let result = self.check(&car, &search.document, did, &rkey, search.digest, search.repository);
        // A proof older than the newest signed collection state holds only where that state
        // agrees: a record gone from it is revoked, whatever proof is offered.
        let result = match superseding(&self.cache, &result, did, &rkey) {
            Some(outdated) if outdated.gone() => return Tried::Decided(Failure::Revoked(outdated).verdict(did)),
            Some(outdated) if result.is_verified() => Failure::Revoked(outdated).verdict(did),
            _ => result,
        };
        if result.is_verified() {
            return Tried::Decided(self.admitted(search, &rkey, origin, result));
        }
        if result.reason == Reason::RecordDeleted && source != Source::Known {
            // Absence under a guessed or hinted rkey says nothing about deletion: keep looking.
            return Tried::Absent(Failure::NoRecordUnder { did: did.to_owned(), digest: search.digest.to_owned() }.verdict(did));
        }
        if source == Source::Hint {
            // A misleading hint must not hide a record found elsewhere.
            self.note(format!("hinted record {did}/{rkey} does not prove {}: {}", search.digest, result.message));
            return Tried::Misled(result);
        }
        if source == Source::Known && matches!(result.reason, Reason::RecordDeleted | Reason::DigestMismatch) {
            return self.known_failed(revocation_said(result, search, &rkey));
        }
        Tried::Decided(revocation_said(result, search, &rkey))
    }

    /// A known locator that no longer proves the digest is a hint too: online, the digest's
    /// record is looked for elsewhere (a fresh node would find it); offline, there is nowhere
    /// else to look, so it decides.
    fn known_failed(&self, verdict: Verdict) -> Tried {
        if self.http.is_some() { Tried::Outdated(verdict) } else { Tried::Decided(verdict) }
    }

    /// A verified proof: remember where the record is, and say what the admission rests on.
    fn admitted(&self, search: &Search<'_>, rkey: &str, origin: Origin, mut result: Verdict) -> Verdict {
        let (did, digest) = (search.did, search.digest);
        if search.locator.as_ref().is_none_or(|l| l.rkey != rkey) {
            let entry = LocatorEntry { did: did.to_owned(), digest: digest.to_owned(), rkey: rkey.to_owned(), fetched_at: self.now };
            self.cache.write(Kind::Locator, &[did, digest], &entry);
        }
        if search.stale_document || matches!(origin, Origin::Stale { .. }) {
            self.used_stale.set(true);
        }
        let provenance = origin.note(self.now);
        result.message.push_str(&provenance);
        if !provenance.is_empty() {
            self.provenance.borrow_mut().push(provenance);
        }
        result
    }
}

/// The newest signed collection state's word against a proof whose tree path verified.
fn superseding(cache: &crate::material::store::Cache, result: &Verdict, did: &str, rkey: &str) -> Option<knowledge::Supersession> {
    if !result.facts.path_proven {
        return None;
    }
    let rev = result.facts.rev.as_deref()?;
    knowledge::superseded(cache, did, rkey, rev, result.facts.record_cid.map(|c| c.to_string()).as_deref())
}

/// A deletion proven under the key this node knew: said as the revocation it is.
fn revocation_said(mut result: Verdict, search: &Search<'_>, rkey: &str) -> Verdict {
    if result.reason == Reason::RecordDeleted {
        let (did, digest) = (search.did, search.digest);
        let rev = result.facts.rev.clone().unwrap_or_default();
        result.message = format!(
            "{did} deleted the record that signed {digest} (at://{did}/{MANIFEST_COLLECTION}/{rkey}); its signed repository at rev {rev} proves it is gone: the image is revoked"
        );
    }
    result
}
