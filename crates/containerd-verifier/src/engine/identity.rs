//! The identity an ATProto registry path names (`host/<handle-or-did>/<repo>`), resolved and
//! verified both ways, and only for signers the rule could accept.

use atproto_sig_core::Verdict;
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::syntax::is_valid_did;

use super::context::Session;
use super::failure::Failure;
use crate::lookup::atproto::{self, LookupError};
use crate::material::read::{Got, Miss};
use crate::material::store::{HandleEntry, Kind};

/// The identity an ATProto registry path names.
pub(super) enum PathIdentity {
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

impl Session<'_> {
    /// The identity in an ATProto registry path (`host/<handle-or-did>/<repo>`) and the
    /// repository name after it. A handle is resolved to a DID; only a DID in `acceptable`
    /// (trusted by the rule, now) has its document fetched, for the bidirectional check: no
    /// document or proof is ever fetched for a signer the rule could never accept.
    pub(super) fn path_identity(&self, image: &ImageRef, acceptable: &[&str]) -> Option<(PathIdentity, String)> {
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
        let Some(http) = &self.http else {
            // Offline, a handle can only be trusted through a cached, claiming document of a
            // trusted DID; leave it to the trusted DIDs.
            return found(PathIdentity::Offline(identity.to_owned()));
        };
        let fail = |failure: Failure| found(PathIdentity::Failed(Box::new(failure.verdict(identity))));
        let handle = identity.to_ascii_lowercase();
        let key = [handle.as_str()];
        let material = self.material(Kind::Handle, &key, self.config.did_ttl);
        let fetch = || {
            let did = atproto::resolve_handle(http, self.config.handle_resolver.as_deref(), &*self.dns, identity)?;
            Ok::<_, LookupError>(Some(HandleEntry { handle: handle.clone(), did, fetched_at: self.now }))
        };
        // A resolution is stored as fetched: it is checked against the DID document on every use.
        let did = match material.get(true, |_: &HandleEntry| true, fetch, |e| self.cache.write(Kind::Handle, &key, e)) {
            Ok(Got::Cached(entry) | Got::Fetched(entry) | Got::Offline(entry)) => entry.did,
            Ok(Got::Stale(entry, e)) => {
                self.note(format!("using the cached resolution of {handle} past its TTL: {e}"));
                entry.did
            }
            Err(Miss::Lookup(error)) => return fail(Failure::Handle { identity: identity.to_owned(), error: Some(error) }),
            Err(Miss::Nothing | Miss::Offline) => return fail(Failure::Handle { identity: identity.to_owned(), error: None }),
        };
        if !acceptable.contains(&did.as_str()) {
            return found(PathIdentity::Untrusted(handle, did));
        }
        // Bidirectional: the DID document must claim the handle.
        match self.document(&did) {
            Ok((document, _)) if document.handle.as_deref() == Some(handle.as_str()) => found(PathIdentity::Trusted(did)),
            Ok((document, _)) => fail(Failure::HandleNotClaimed { identity: identity.to_owned(), did, claimed: document.handle }),
            Err(v) => found(PathIdentity::Failed(Box::new(v))),
        }
    }
}
