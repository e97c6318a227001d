//! `bundle push`: each DID's bundle made as `bundle create --did` makes it, pushed as an
//! artifact under the DID's tag, then the index updated to list it. Publishing the same
//! knowledge twice changes nothing a node imports; a node reads only artifacts whose digest
//! the index changed.

use std::time::Duration;

use atproto_sig_core::crypto::PrivateKey;
use serde_json::{Value as Json, json};

use super::{
    BUNDLE_ARTIFACT_TYPE, BUNDLE_MEDIA_TYPE, DID_ANNOTATION, EMPTY_CONFIG_MEDIA_TYPE, ENVELOPE_MEDIA_TYPE, INDEX_MEDIA_TYPE, INDEX_TAG, Location,
    MANIFEST_MEDIA_TYPE, MAX_EMBEDDED_BUNDLE, MAX_INDEX_ENTRIES, publication, tag_for,
};
use crate::config::Config;
use crate::lookup::registry::{Files, RegistryError, Session, sha256_digest};
use crate::remote::{Deadline, Http, InFlight, Remote};

/// What was published for one DID.
#[derive(Debug)]
pub struct Published {
    pub did: String,
    pub tag: String,
    /// The artifact's manifest digest (what the index lists).
    pub digest: String,
    pub bundle_bytes: usize,
    /// Whether a publication envelope was attached.
    pub signed: bool,
    /// Requests to the PLC directory, the PDS and handle hosts this publication cost.
    pub identity_requests: usize,
    /// The DID's handle, as its verified document claims it (None: no handle).
    pub handle: Option<String>,
    /// The records it carries, and where their images are.
    pub records: Vec<PublishedRecord>,
    /// A hash of what the bundle says apart from its fetch times ([`content_of`]): equal for
    /// two publications of the same signed knowledge.
    pub content: String,
}

/// A hash of a bundle's content apart from its fetch and creation times: two bundles of the
/// same signed knowledge fetched at different times have the same one.
pub fn content_of(bundle: &crate::bundle::Bundle) -> String {
    fn strip(value: &mut Json) {
        match value {
            Json::Object(map) => {
                map.retain(|k, _| k != "fetchedAt" && k != "createdAt");
                map.values_mut().for_each(strip);
            }
            Json::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(bundle).unwrap_or(Json::Null);
    strip(&mut value);
    sha256_digest(value.to_string().as_bytes())
}

/// A record a publication carries and the image it names. Read from the record's own block
/// without checking the proof again: only a hint of where to `attach`, which verifies the image
/// by the ordinary decision before it pushes anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedRecord {
    pub rkey: String,
    pub digest: String,
    pub repository: String,
}

/// The records of `did` in `bundle` (each locator whose proof holds a manifest record naming its digest).
fn records_of(bundle: &crate::bundle::Bundle, did: &str) -> Vec<PublishedRecord> {
    let limits = atproto_sig_core::Limits::default();
    let mut out = Vec::new();
    for locator in bundle.locators.iter().filter(|l| l.did == did) {
        let Some(car) = bundle.proofs.iter().find(|p| p.did == did && p.rkey == locator.rkey).and_then(crate::material::knowledge::decode_car) else {
            continue;
        };
        let Ok(parsed) = atproto_sig_core::car::Car::parse(&car, &limits) else { continue };
        let record = parsed
            .cids()
            .iter()
            .filter_map(|cid| parsed.block(cid))
            .filter_map(|block| atproto_sig_core::record::ManifestRecord::decode(block, &limits).ok())
            .find(|r| r.digest == locator.digest);
        if let Some(record) = record {
            out.push(PublishedRecord { rkey: locator.rkey.clone(), digest: record.digest, repository: record.repository });
        }
    }
    out
}

/// Why publishing stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{did}: {error}")]
    Bundle { did: String, error: crate::bundle::BundleError },
    #[error("{what}: {error}")]
    Registry { what: String, error: RegistryError },
    #[error("{0}")]
    Other(String),
}

/// Publishes a bundle for each of `dids` to `location`, signed with `key` when given.
pub fn publish(config: &Config, remote: &Remote, location: &Location, dids: &[String], key: Option<&PrivateKey>) -> Result<Vec<Published>, PublishError> {
    publish_unless(config, remote, location, dids, key, |_, _| false)
}

/// [`publish`], skipping (nothing pushed, not returned) each DID whose new bundle `unchanged`
/// says is already published: (did, [`content_of`] the new bundle).
pub fn publish_unless(
    config: &Config,
    remote: &Remote,
    location: &Location,
    dids: &[String],
    key: Option<&PrivateKey>,
    unchanged: impl Fn(&str, &str) -> bool,
) -> Result<Vec<Published>, PublishError> {
    let deadline = Deadline::after(Duration::from_secs(600));
    let http = Http::new(std::sync::Arc::clone(&remote.fetch), config.request_timeout.0, deadline, InFlight::default());
    let files = Files::new(config, deadline, crate::log::Notes::stderr());
    let session = Session::new(&files, &http, &location.index);
    let registry = |what: String| move |error: RegistryError| PublishError::Registry { what, error };
    // The publisher's identities (documents, audit logs, handles) fetched within `did_ttl`:
    // a change then costs one identity request, the repository export that proves it.
    let known = crate::material::store::Cache::new(&config.cache_dir.join("publisher"));
    let mut published = Vec::new();
    for did in dids {
        let scratch = tempfile::tempdir().map_err(|e| PublishError::Other(e.to_string()))?;
        let file = scratch.path().join("bundle.json");
        let (made, identity_requests) = crate::bundle::create_counted(config, remote, None, &[], std::slice::from_ref(did), &file, Some(&known))
            .map_err(|error| PublishError::Bundle { did: did.clone(), error })?;
        let content = content_of(&made);
        if unchanged(did, &content) {
            continue;
        }
        let bundle = std::fs::read(&file).map_err(|e| PublishError::Other(format!("{}: {e}", file.display())))?;
        let now = crate::clock::now_micros(None).map_err(|e| PublishError::Other(e.to_string()))?;
        let envelope = key.map(|k| publication::sign(k, did, &bundle, now));
        let (config_blob, bundle_digest) = (b"{}".as_slice(), session.push_blob(&bundle).map_err(registry(format!("{did}: the bundle")))?);
        let config_digest = session.push_blob(config_blob).map_err(registry("the empty config".into()))?;
        // The blobs are pushed whatever the size (a registry checks that layers exist, and a
        // reader that ignores `data` fetches them); small ones are also embedded.
        let mut layers = vec![descriptor(BUNDLE_MEDIA_TYPE, &bundle_digest, &bundle, bundle.len() <= MAX_EMBEDDED_BUNDLE)];
        if let Some(envelope) = &envelope {
            let digest = session.push_blob(envelope).map_err(registry(format!("{did}: the publication")))?;
            layers.push(descriptor(ENVELOPE_MEDIA_TYPE, &digest, envelope, true));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": BUNDLE_ARTIFACT_TYPE,
            "config": {"mediaType": EMPTY_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_blob.len()},
            "layers": layers,
            "annotations": {DID_ANNOTATION: did, "org.opencontainers.image.created": atproto_sig_core::syntax::format_datetime_micros(now)},
        }))
        .map_err(|e| PublishError::Other(e.to_string()))?;
        let tag = tag_for(did);
        let digest = session.push_manifest(&tag, MANIFEST_MEDIA_TYPE, &manifest).map_err(registry(format!("{did}: the artifact")))?;
        let handle = made.handles.iter().find(|h| h.did == *did).map(|h| h.handle.clone());
        let records = records_of(&made, did);
        published.push(Published {
            did: did.clone(),
            tag,
            digest: digest.clone(),
            bundle_bytes: bundle.len(),
            signed: envelope.is_some(),
            identity_requests,
            handle,
            records,
            content,
        });
        // The index after each DID: a publisher stopped half-way has still published what it did.
        update_index(&session, did, &digest, manifest.len())?;
    }
    Ok(published)
}

/// Lists `did`'s artifact in the index (the entry for that DID replaced, the others kept).
/// An OCI descriptor of `bytes`, with their base64 as `data` when `embed`.
fn descriptor(media_type: &str, digest: &str, bytes: &[u8], embed: bool) -> Json {
    use base64::Engine as _;
    let mut descriptor = serde_json::Map::new();
    descriptor.insert("mediaType".into(), media_type.into());
    descriptor.insert("digest".into(), digest.into());
    descriptor.insert("size".into(), bytes.len().into());
    if embed {
        descriptor.insert("data".into(), base64::engine::general_purpose::STANDARD.encode(bytes).into());
    }
    Json::Object(descriptor)
}

fn update_index(session: &Session<'_>, did: &str, digest: &str, size: usize) -> Result<(), PublishError> {
    let held = session.tagged(INDEX_TAG, INDEX_MEDIA_TYPE).map_err(|error| PublishError::Registry { what: "the index".into(), error })?;
    let mut index = held
        .and_then(|(_, bytes)| serde_json::from_slice::<Json>(&bytes).ok())
        .filter(|i| i.get("manifests").is_some_and(Json::is_array))
        .unwrap_or_else(|| json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "artifactType": BUNDLE_ARTIFACT_TYPE, "manifests": []}));
    let entry = json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": digest,
        "size": size,
        "artifactType": BUNDLE_ARTIFACT_TYPE,
        "annotations": {DID_ANNOTATION: did},
    });
    if let Some(list) = index.get_mut("manifests").and_then(Json::as_array_mut) {
        list.retain(|d| d.get("annotations").and_then(|a| a.get(DID_ANNOTATION)).and_then(Json::as_str) != Some(did));
        if list.len() >= MAX_INDEX_ENTRIES {
            return Err(PublishError::Other(format!("the index lists {MAX_INDEX_ENTRIES} DIDs, as many as a node reads: publish to another repository")));
        }
        list.push(entry);
    }
    let bytes = serde_json::to_vec(&index).map_err(|e| PublishError::Other(e.to_string()))?;
    let pushed = session.push_manifest(INDEX_TAG, INDEX_MEDIA_TYPE, &bytes).map_err(|error| PublishError::Registry { what: "the index".into(), error })?;
    debug_assert_eq!(pushed, sha256_digest(&bytes));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(fetched_at: i64, car: &str) -> crate::bundle::Bundle {
        let text = serde_json::json!({
            "format": crate::bundle::FORMAT, "version": crate::bundle::VERSION, "createdAt": format!("t{fetched_at}"),
            "dids": [{"did": "did:plc:a", "fetchedAt": fetched_at, "source": "plc", "document": "{}"}],
            "locators": [{"did": "did:plc:a", "digest": "sha256:00", "rkey": "r", "fetchedAt": fetched_at}],
            "proofs": [{"did": "did:plc:a", "collection": "io.atcr.manifest", "rkey": "r", "fetchedAt": fetched_at, "source": "pds", "car": car}],
        });
        crate::bundle::parse(text.to_string().as_bytes()).unwrap()
    }

    /// Publishing the same signed knowledge fetched later is no change (nodes would all fetch
    /// it again for nothing); a different proof is one.
    #[test]
    fn content_ignores_fetch_times_and_nothing_else() {
        assert_eq!(content_of(&bundle(1, "AAAA")), content_of(&bundle(2, "AAAA")));
        assert_ne!(content_of(&bundle(1, "AAAA")), content_of(&bundle(1, "BBBB")));
    }
}
