//! The node's side: `cache refresh` reads the index at `bundle_source` and imports, by the
//! knowledge rules, the bundle of every DID its trust policy names whose artifact changed since
//! the last refresh. Nothing the registry says is trusted: the index only says what to fetch,
//! every artifact and blob is checked against its digest, every entry of a bundle against its
//! signer's key, and a bundle's fetch times count only when a publication signed by one of
//! `bundle_signers` vouches for them.

use std::collections::BTreeSet;

use atproto_sig_core::crypto::PublicKey;
use serde_json::Value as Json;

use super::{
    BUNDLE_ARTIFACT_TYPE, BUNDLE_MEDIA_TYPE, DID_ANNOTATION, ENVELOPE_MEDIA_TYPE, INDEX_MEDIA_TYPE, INDEX_TAG, Location, MAX_INDEX_ENTRIES, publication,
};
use crate::config::Config;
use crate::limits::NodeLimits;
use crate::lookup::registry::{Files, Session};
use crate::material::knowledge::{DocumentRules, FetchedBy};
use crate::material::store::{Cache, Kind};
use crate::remote::{Deadline, Http, InFlight, Remote};

/// What one refresh from the registry did.
#[derive(Debug, Default)]
pub struct Synced {
    /// DIDs whose new bundle was imported (with what that changed).
    pub imported: Vec<String>,
    /// The DIDs of `imported`.
    pub imported_dids: Vec<String>,
    /// Records the imports revoked (`at://` URIs).
    pub revoked: Vec<String>,
    /// DIDs whose artifact had not changed (nothing fetched).
    pub unchanged: usize,
    /// What went wrong (the refresh reports it as failed).
    pub problems: Vec<String>,
    /// What an operator may want to know (entries refused by the knowledge rules, unsigned publications).
    pub notes: Vec<String>,
    /// Requests made to the registry.
    pub registry_requests: usize,
}

/// Imports what changed at `config.bundle_source` into `cache`, for the DIDs of the trust
/// policy `config` names.
pub fn sync(config: &Config, cache: &Cache, remote: &Remote, now: i64, deadline: Deadline) -> Synced {
    match crate::engine::request::load_policy(&config.policy) {
        Ok(policy) => sync_for(config, cache, remote, now, deadline, &policy.trusted.iter().map(|t| t.did.clone()).collect()),
        Err(e) => Synced {
            problems: vec![format!("bundle_source not read: the trust policy names the DIDs to import, and it cannot be read: {e}")],
            ..Synced::default()
        },
    }
}

/// [`sync`] for the DIDs in `wanted` (a watcher passes its loaded policy's: no parse per poll).
pub fn sync_for(config: &Config, cache: &Cache, remote: &Remote, now: i64, deadline: Deadline, wanted: &BTreeSet<String>) -> Synced {
    let mut synced = Synced::default();
    let Some(source) = &config.bundle_source else { return synced };
    let location = match Location::parse(source) {
        Ok(l) => l,
        Err(e) => {
            synced.problems.push(format!("bundle_source: {e}"));
            return synced;
        }
    };
    let signers: Vec<PublicKey> = config.bundle_signers.iter().filter_map(|k| PublicKey::from_did_key(k).ok()).collect();
    let http = Http::new(std::sync::Arc::clone(&remote.fetch), config.request_timeout.0, deadline, InFlight::default());
    let files = Files::new(config, deadline, crate::log::Notes::stderr());
    let session = Session::new(&files, &http, &location.index);
    let origin = location.canonical();
    let index = match session.tagged(INDEX_TAG, INDEX_MEDIA_TYPE) {
        Ok(Some((_, bytes))) => bytes,
        Ok(None) => {
            synced.problems.push(format!("{origin}: no index (tag {INDEX_TAG}): has the publisher run `atproto-verifier bundle push`?"));
            synced.registry_requests = http.request_count();
            return synced;
        }
        Err(e) => {
            synced.problems.push(format!("{origin}: the index: {e}"));
            synced.registry_requests = http.request_count();
            return synced;
        }
    };
    for (did, digest) in listed(&index, wanted, &mut synced) {
        if deadline.expired() {
            synced.problems.push(format!("{origin}: the refresh budget ran out; the rest waits for the next run"));
            break;
        }
        let key = [origin.as_str(), did.as_str()];
        if cache.read::<String>(Kind::Imported, &key).as_deref() == Some(digest.as_str()) {
            synced.unchanged += 1;
            continue;
        }
        match import_artifact(config, cache, &session, &signers, &did, &digest, now, &origin) {
            Ok((line, notes)) => {
                synced.imported.push(line);
                synced.imported_dids.push(did.clone());
                synced.revoked.extend(notes.iter().filter_map(|n| n.strip_prefix("revoked ").map(|r| r.split_once(": ").map_or(r, |(uri, _)| uri).to_owned())));
                synced.notes.extend(notes);
                cache.write(Kind::Imported, &key, &digest);
            }
            Err(e) => synced.problems.push(format!("{origin} {did}: {e}")),
        }
    }
    synced.registry_requests = http.request_count();
    synced
}

/// The (DID, artifact digest) pairs of `index` among `wanted` (for tests and fuzz targets).
#[cfg(any(test, feature = "testkit"))]
pub fn index_entries(index: &[u8], wanted: &BTreeSet<String>) -> (Vec<(String, String)>, Vec<String>) {
    let mut synced = Synced::default();
    let entries = listed(index, wanted, &mut synced);
    (entries, synced.problems)
}

/// The (DID, artifact digest) pairs of the index that the policy names, each once.
fn listed(index: &[u8], wanted: &BTreeSet<String>, synced: &mut Synced) -> Vec<(String, String)> {
    let Ok(index) = serde_json::from_slice::<Json>(index) else {
        synced.problems.push("the index is not JSON".into());
        return Vec::new();
    };
    let entries = index.get("manifests").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default();
    if entries.len() > MAX_INDEX_ENTRIES {
        synced.notes.push(format!("the index lists {} entries: only the first {MAX_INDEX_ENTRIES} are read", entries.len()));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in entries.iter().take(MAX_INDEX_ENTRIES) {
        let did = entry.get("annotations").and_then(|a| a.get(DID_ANNOTATION)).and_then(Json::as_str).unwrap_or("");
        let digest = entry.get("digest").and_then(Json::as_str).unwrap_or("");
        let valid_digest = digest.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        // Only DIDs this node trusts, and the first entry of each: the index cannot make a node
        // fetch for signers it does not care about, nor twice.
        if valid_digest && wanted.contains(did) && seen.insert(did.to_owned()) {
            out.push((did.to_owned(), digest.to_owned()));
        }
    }
    out
}

/// Fetches, checks and imports one DID's artifact: (what it did, notes).
#[allow(clippy::too_many_arguments)]
fn import_artifact(
    config: &Config,
    cache: &Cache,
    session: &Session<'_>,
    signers: &[PublicKey],
    did: &str,
    digest: &str,
    now: i64,
    origin: &str,
) -> Result<(String, Vec<String>), String> {
    let manifest = session.manifest(digest).map_err(|e| format!("the artifact {digest}: {e}"))?.ok_or_else(|| format!("the artifact {digest} is gone"))?;
    let manifest: Json = serde_json::from_slice(&manifest).map_err(|_| format!("the artifact {digest} is not JSON"))?;
    if manifest.get("artifactType").and_then(Json::as_str) != Some(BUNDLE_ARTIFACT_TYPE) {
        return Err(format!("the artifact {digest} is not a bundle ({BUNDLE_ARTIFACT_TYPE})"));
    }
    if manifest.get("annotations").and_then(|a| a.get(DID_ANNOTATION)).and_then(Json::as_str) != Some(did) {
        return Err(format!("the artifact {digest} is not {did}'s"));
    }
    let layers = manifest.get("layers").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default();
    let layer = |media_type: &str| layers.iter().find(|l| l.get("mediaType").and_then(Json::as_str) == Some(media_type)).and_then(Layer::of);
    let bundle_layer = layer(BUNDLE_MEDIA_TYPE).ok_or("the artifact has no bundle layer")?;
    let limit = NodeLimits::DEFAULT.bundle;
    if bundle_layer.size > limit as u64 {
        return Err(format!("its bundle is {} bytes, over the {limit}-byte limit", bundle_layer.size));
    }
    let bytes = bundle_layer.content(session, limit).map_err(|e| format!("the bundle: {e}"))?;
    let mut notes = Vec::new();
    let fetched_by = match (signers.is_empty(), layer(ENVELOPE_MEDIA_TYPE)) {
        (true, _) => FetchedBy::Claim,
        (false, None) => {
            notes.push(format!("{did}: the publication is unsigned: its fetch times are claims (bundle_signers is set)"));
            FetchedBy::Claim
        }
        (false, Some(envelope_layer)) => {
            let vouched = envelope_layer
                .content(session, publication::MAX_ENVELOPE)
                .and_then(|envelope| publication::verify(&envelope, &bytes, did, signers, now, config.clock_skew.micros()).map_err(|e| e.to_string()));
            match vouched {
                Ok(v) => FetchedBy::Publisher { published_at: v.published_at },
                Err(e) => {
                    notes.push(format!("{did}: the publication does not count ({e}): its fetch times are claims"));
                    FetchedBy::Claim
                }
            }
        }
    };
    let mut bundle = crate::bundle::parse(&bytes).map_err(|e| e.to_string())?;
    // Only this DID's entries: an artifact listed for one DID carries nothing for another.
    bundle.dids.retain(|d| d.did == did);
    bundle.proofs.retain(|p| p.did == did);
    bundle.locators.retain(|l| l.did == did);
    bundle.collections.retain(|c| c.did == did);
    bundle.handles.retain(|h| h.did == did);
    let report = crate::bundle::import_as(&bundle, cache, &format!("{origin} {digest}"), config, now, DocumentRules::default(), fetched_by);
    notes.extend(report.refused.iter().map(|r| format!("{did}: refused {r}")));
    notes.extend(report.notes);
    let how = match fetched_by {
        FetchedBy::Publisher { .. } => "signed publication",
        _ => "fetch times as claims",
    };
    Ok((format!("{did}: {} entries stored, {} unchanged ({how})", report.stored.len(), report.unchanged.len()), notes))
}

/// A layer of a bundle artifact, as its descriptor says.
struct Layer {
    digest: String,
    size: u64,
    /// The descriptor's `data` (base64), when the publisher embedded the content.
    data: Option<String>,
}

impl Layer {
    fn of(descriptor: &Json) -> Option<Layer> {
        Some(Layer {
            digest: descriptor.get("digest").and_then(Json::as_str)?.to_owned(),
            size: descriptor.get("size").and_then(Json::as_u64).unwrap_or(u64::MAX),
            data: descriptor.get("data").and_then(Json::as_str).map(str::to_owned),
        })
    }

    /// The layer's bytes (at most `limit`), checked against its digest: the embedded copy when
    /// there is one that matches (no request), else the blob from the registry. An embedded
    /// copy that does not match is ignored, not believed: the blob is digest-checked too.
    fn content(&self, session: &Session<'_>, limit: usize) -> Result<Vec<u8>, String> {
        match self.embedded(limit) {
            Some(bytes) => Ok(bytes),
            None => session.blob(&self.digest, limit).map_err(|e| e.to_string()),
        }
    }

    /// The embedded copy, if there is one within `limit` that hashes to the digest.
    fn embedded(&self, limit: usize) -> Option<Vec<u8>> {
        let data = self.data.as_deref()?;
        if data.len() > limit.div_ceil(3) * 4 {
            return None;
        }
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).ok()?;
        (bytes.len() <= limit && crate::lookup::registry::sha256_digest(&bytes) == self.digest).then_some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn layer(bytes: &[u8], data: &[u8]) -> Layer {
        Layer {
            digest: crate::lookup::registry::sha256_digest(bytes),
            size: bytes.len() as u64,
            data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
        }
    }

    #[test]
    fn an_embedded_copy_counts_only_when_it_hashes_to_the_digest_and_fits() {
        assert_eq!(layer(b"bundle", b"bundle").embedded(64).as_deref(), Some(b"bundle".as_slice()));
        // Another content under the digest: ignored (the blob is fetched instead).
        assert_eq!(layer(b"bundle", b"forged").embedded(64), None);
        // Over the limit, even when genuine: not decoded.
        assert_eq!(layer(&[7; 100], &[7; 100]).embedded(64), None);
        let mut broken = layer(b"bundle", b"bundle");
        broken.data = Some("not base64!".into());
        assert_eq!(broken.embedded(64), None);
        broken.data = None;
        assert_eq!(broken.embedded(64), None);
    }
}
