//! Hints from signature artifacts attached to the image in its registry (referrers API or
//! the `sha256-<hex>` tag): a DID and a record key, and maybe a proof. Hints only: the proof decides.

use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::syntax::{AtUri, is_valid_did};

use super::context::Session;
use crate::lookup::atproto::LookupError;
use crate::lookup::registry::{self, CAR_MEDIA_TYPE, SIGNATURE_ARTIFACT_TYPE};
use crate::material::read::{Got, Lifetime};
use crate::material::store::{Kind, ReferrersEntry};
use crate::remote::Http;

impl Session<'_> {
    /// DIDs and record keys named by ATProto signature artifacts that refer to `digest`
    /// (OCI referrers API, or the `sha256-<hex>` tag). Hints only: the proof decides.
    pub(super) fn referrer_hints(&self, image: &ImageRef, digest: &str) -> Vec<(String, String)> {
        let Some(http) = &self.registry else { return Vec::new() };
        // Online, hints are cached like proofs (registries rate-limit); offline the registry is
        // where proofs come from, so it is always asked.
        let key = [image.host.as_str(), image.path.as_str(), digest];
        if self.http.is_none() {
            return self.fetch_referrer_hints(http, image, digest).unwrap_or_default();
        }
        let material = self.material_with(Kind::Referrers, &key, Lifetime { ttl_micros: self.config.proof_ttl.micros(), max_stale_micros: 0 });
        let fetch = || {
            // A registry that cannot be asked is not an error here: hints are only hints.
            Ok::<_, LookupError>(self.fetch_referrer_hints(http, image, digest).map(|hints| ReferrersEntry {
                digest: digest.to_owned(),
                hints,
                fetched_at: self.now,
            }))
        };
        // Hints are stored as found: they are only hints, and the proof decides.
        match material.get(true, |_: &ReferrersEntry| true, fetch, |e| self.cache.write(Kind::Referrers, &key, e)) {
            Ok(Got::Cached(entry) | Got::Fetched(entry) | Got::Stale(entry, _) | Got::Offline(entry)) => entry.hints,
            Err(_) => Vec::new(),
        }
    }

    /// The hints from the registry; `None` when the registry could not be asked.
    fn fetch_referrer_hints(&self, http: &Http, image: &ImageRef, digest: &str) -> Option<Vec<(String, String)>> {
        let session = registry::Session::new(&self.files, http, image);
        let descriptors = match session.referrers(digest, SIGNATURE_ARTIFACT_TYPE) {
            Ok(d) => d,
            Err(e) => {
                self.note(format!("referrers of {digest}: {e} (continuing without hints)"));
                return None;
            }
        };
        let mut hints = Vec::new();
        for descriptor in descriptors.iter().take(self.limits.artifacts_examined) {
            let Some(manifest_digest) = descriptor.get("digest").and_then(serde_json::Value::as_str) else { continue };
            let manifest = session.manifest(manifest_digest).ok().flatten().and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
            // A layer holding the proof CAR (written by `attach`): verified like any other proof.
            let car = manifest
                .as_ref()
                .and_then(|m| {
                    m.get("layers")?.as_array()?.iter().find(|l| l.get("mediaType").and_then(serde_json::Value::as_str) == Some(CAR_MEDIA_TYPE)).cloned()
                })
                .and_then(|layer| layer.get("digest")?.as_str().map(str::to_owned))
                .and_then(|d| session.blob(&d, self.limits.proof).ok());
            let hint = manifest
                .and_then(|manifest| manifest.get("config")?.get("digest")?.as_str().map(str::to_owned))
                .and_then(|config_digest| session.blob(&config_digest, self.limits.registry_small).ok())
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
}
