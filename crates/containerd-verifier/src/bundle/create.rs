//! `bundle create`: the ordinary online engine against a scratch cache (`strict_plc` forced
//! on), then that cache exported, with the signed state of each named DID's collection.

use std::path::Path;
use std::time::Duration;

use atproto_sig_core::Limits;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use base64::Engine;

use super::{Bundle, BundleError, CollectionEntry, FORMAT, VERSION};
use crate::config::Config;
use crate::engine::{Session, SessionOptions};
use crate::material::knowledge;
use crate::material::store::{Cache, HandleEntry, Kind, LocatorEntry};
use crate::remote::{Deadline, InFlight, Remote};

/// Creates a bundle for `images` (via the trust policy's candidates) and `dids` (every
/// io.atcr.manifest record), written to `out`. Returns what it holds.
pub fn create(
    config: &Config,
    remote: &Remote,
    policy: Option<&atproto_sig_core::policy::Policy>,
    images: &[String],
    dids: &[String],
    out: &Path,
) -> Result<Bundle, BundleError> {
    create_counted(config, remote, policy, images, dids, out, None).map(|(bundle, _)| bundle)
}

/// [`create`], and the identity requests (PLC, PDS, handle) it made. With `known` (a
/// publisher's own cache of identities), each DID's document, audit log and handle binding
/// fetched within `did_ttl` are reused rather than fetched again, and what is fetched is kept
/// there: a publisher's change then costs one request (the repository export). When anything
/// fails with reused material (a rotated key, say), the whole bundle is made again from fresh
/// fetches.
pub fn create_counted(
    config: &Config,
    remote: &Remote,
    policy: Option<&atproto_sig_core::policy::Policy>,
    images: &[String],
    dids: &[String],
    out: &Path,
    known: Option<&Cache>,
) -> Result<(Bundle, usize), BundleError> {
    match known {
        Some(known) => match create_from(config, remote, policy, images, dids, out, Some(known)) {
            Ok(made) => Ok(made),
            Err(e) => {
                crate::log::info(&format!("bundle: with reused identities: {e}: fetching them again"));
                let (bundle, requests) = create_from(config, remote, policy, images, dids, out, None)?;
                keep_identities(&bundle, known);
                Ok((bundle, requests))
            }
        },
        None => create_from(config, remote, policy, images, dids, out, None),
    }
}

/// The identity entries of `known` worth reusing for `dids` at `now`: documents (with their
/// audit log, for did:plc) and handle bindings fetched within `ttl_micros`.
fn reusable(known: &Cache, dids: &[String], now: i64, ttl_micros: i64) -> (Vec<crate::material::store::DidEntry>, Vec<HandleEntry>) {
    let fresh = |fetched_at: i64| fetched_at <= now && now - fetched_at < ttl_micros;
    let documents: Vec<crate::material::store::DidEntry> = dids
        .iter()
        .filter_map(|did| known.read::<crate::material::store::DidEntry>(Kind::Did, &[did]))
        .filter(|e| fresh(e.fetched_at) && (e.audit_log.is_some() || !e.did.starts_with("did:plc:")))
        .collect();
    let handles = known.all::<HandleEntry>(Kind::Handle).into_iter().map(|(_, h)| h).filter(|h| fresh(h.fetched_at) && dids.contains(&h.did)).collect();
    (documents, handles)
}

/// Keeps the bundle's documents and handle bindings in `known` for the next bundle.
fn keep_identities(bundle: &Bundle, known: &Cache) {
    for entry in &bundle.dids {
        known.write(Kind::Did, &[entry.did.as_str()], entry);
    }
    for entry in &bundle.handles {
        known.write(Kind::Handle, &[entry.handle.as_str()], entry);
    }
}

fn create_from(
    config: &Config,
    remote: &Remote,
    policy: Option<&atproto_sig_core::policy::Policy>,
    images: &[String],
    dids: &[String],
    out: &Path,
    known: Option<&Cache>,
) -> Result<(Bundle, usize), BundleError> {
    let scratch = tempfile::tempdir().map_err(|e| BundleError::Write { path: "a scratch directory".into(), problem: e.to_string() })?;
    // A connected machine collecting into a scratch cache, with every did:plc audit log (the
    // importing node checks each document against its log).
    let options = SessionOptions { cache_dir: Some(scratch.path().to_owned()), audit_logs: true, online: true, registry: true, ..SessionOptions::default() };
    let empty = atproto_sig_core::policy::Policy::empty();
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let deadline = Deadline::after(Duration::from_secs(300));
    let context = Session::new(config, policy.unwrap_or(&empty), remote, now, deadline, &InFlight::default(), options);
    let cache = Cache::new(scratch.path());
    let mut reused_handles = Vec::new();
    if let Some(known) = known {
        let (documents, handles) = reusable(known, dids, now, config.did_ttl.micros());
        for entry in &documents {
            cache.write(Kind::Did, &[entry.did.as_str()], entry);
        }
        // Handle bindings are written only when the document still names that handle.
        reused_handles = handles;
    }
    for name in images {
        let image = atproto_sig_core::reference::ImageRef::parse(name).map_err(|e| BundleError::Image { name: name.clone(), problem: e.to_string() })?;
        if policy.is_none() {
            return Err(BundleError::NeedsPolicy);
        }
        let digest = match &image.digest {
            Some(d) => d.clone(),
            None => context.resolve_tag(&image).map_err(|error| BundleError::Tag { name: name.clone(), error })?,
        };
        let (decision, _) = context.decide(&image, &digest);
        crate::log::info(&format!("{name}: {} ({})", decision.message, decision.reason.code()));
    }
    let mut collections = Vec::new();
    for did in dids {
        collections.push(collect_did(&context, &cache, did, &reused_handles)?);
    }
    for note in context.take_notes() {
        crate::log::debug(&note);
    }
    let bundle = Bundle {
        format: FORMAT.into(),
        version: VERSION,
        created_at: atproto_sig_core::syntax::format_datetime_micros(context.now),
        dids: cache.all(Kind::Did).into_iter().map(|(_, e)| e).collect(),
        locators: cache.all(Kind::Locator).into_iter().map(|(_, e)| e).collect(),
        proofs: cache.all(Kind::Proof).into_iter().map(|(_, e)| e).collect(),
        collections,
        handles: cache.all(Kind::Handle).into_iter().map(|(_, e)| e).collect(),
    };
    write(&bundle, out)?;
    if let Some(known) = known {
        keep_identities(&bundle, known);
    }
    Ok((bundle, context.requests().identity))
}

/// Everything of `did`: the signed state of its whole collection (it proves deletions too),
/// and a proof and a locator for every record it holds, cut from that same export.
fn collect_did(context: &Session<'_>, cache: &Cache, did: &str, reused_handles: &[HandleEntry]) -> Result<CollectionEntry, BundleError> {
    let (document, _) = context.document(did).map_err(|v| BundleError::Document { did: did.to_owned(), message: v.message })?;
    let http = context.http().ok_or(BundleError::Offline)?;
    let pds = document.pds.clone().ok_or_else(|| BundleError::NoPds { did: did.to_owned() })?;
    let repo = crate::lookup::atproto::fetch_repo(http, &pds, did).map_err(|error| BundleError::Lookup { did: did.to_owned(), error })?;
    let (car, rkeys) = atproto_sig_core::collection::extract(&repo, MANIFEST_COLLECTION, &Limits::repository())
        .map_err(|e| BundleError::Export { did: did.to_owned(), problem: e.to_string() })?;
    // The handle, when it resolves back to this DID (both ways, as a pull checks it).
    let reused = document.handle.as_ref().and_then(|h| reused_handles.iter().find(|r| r.handle == *h && r.did == did));
    if let Some(entry) = reused {
        cache.write(Kind::Handle, &[entry.handle.as_str()], entry);
    } else if let Some(handle) = &document.handle {
        match crate::lookup::atproto::resolve_handle(http, context.config.handle_resolver.as_deref(), &*context.dns, handle) {
            Ok(resolved) if resolved == did => {
                let entry = HandleEntry { handle: handle.clone(), did: did.to_owned(), fetched_at: context.now };
                cache.write(Kind::Handle, &[handle.as_str()], &entry);
            }
            Ok(other) => crate::log::info(&format!("{did}: its handle {handle} resolves to {other}: not bundled")),
            Err(e) => crate::log::info(&format!("{did}: its handle {handle} did not resolve ({e}): not bundled")),
        }
    }
    // Every record's proof is cut from the repository just fetched (one request, not a
    // listRecords and a getRecord per record), verified under the document's key as any
    // fetched proof is, and stored with this session's fetch time.
    let proofs = atproto_sig_core::collection::record_proofs(&car, MANIFEST_COLLECTION, &rkeys, &Limits::collection())
        .map_err(|e| BundleError::Export { did: did.to_owned(), problem: e.to_string() })?;
    for (rkey, proof) in proofs {
        let offered = knowledge::OfferedProof {
            document: &document,
            collection: MANIFEST_COLLECTION,
            rkey: &rkey,
            car: &proof,
            digest: None,
            source: pds.clone(),
            fetched_at: context.now,
            fetched_by: knowledge::FetchedBy::ThisNode,
            now: context.now,
            clock_skew_micros: context.config.clock_skew.micros(),
        };
        let accepted =
            knowledge::accept_proof(cache, &offered).map_err(|e| BundleError::Proof { did: did.to_owned(), rkey: rkey.clone(), message: e.to_string() })?;
        // A record that is not a manifest (no digest) gets a proof but no locator.
        if let Some(record) = accepted.verdict.facts.record {
            let entry = LocatorEntry { did: did.to_owned(), digest: record.digest.clone(), rkey, fetched_at: context.now };
            cache.write(Kind::Locator, &[did, &record.digest], &entry);
        }
    }
    Ok(CollectionEntry {
        did: did.to_owned(),
        collection: MANIFEST_COLLECTION.into(),
        fetched_at: context.now,
        source: pds,
        car: base64::engine::general_purpose::STANDARD.encode(&car),
    })
}

/// Writes the bundle to `out` atomically (a temporary file beside it, then a rename).
fn write(bundle: &Bundle, out: &Path) -> Result<(), BundleError> {
    let written = |problem: String| BundleError::Write { path: out.display().to_string(), problem };
    let bytes = serde_json::to_vec_pretty(bundle).map_err(|e| written(e.to_string()))?;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| written(e.to_string()))?;
    std::io::Write::write_all(&mut temp, &bytes).map_err(|e| written(e.to_string()))?;
    temp.persist(out).map_err(|e| written(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use atproto_sig_core::crypto::Curve;
    use atproto_sig_core::testkit::{Identity, TestRepo, digest_of};

    use super::*;
    use crate::lookup::atproto::query;
    use crate::remote::memory::{MemoryFetch, MemoryResolve};

    /// `bundle create --did` runs over the world it is given (here an in-memory PLC directory
    /// and PDS), and what it makes imports on another node: the DID document with its audit
    /// log, the proof, the locator and the signed collection state.
    #[test]
    fn creates_a_bundle_over_the_world_it_is_given() {
        let mut repo = TestRepo::new(Identity::new(Curve::K256, "bundle-create"));
        let digest = digest_of("bundle-create");
        let rkey = repo.put_manifest(&digest, "app");
        let (did, pds) = (repo.identity.did.clone(), repo.identity.pds.clone());
        let web = Arc::new(MemoryFetch::new());
        web.serve(&format!("https://plc.test/{did}"), 200, repo.identity.did_document_multikey());
        web.serve(&format!("https://plc.test/{did}/log/audit"), 200, repo.identity.audit_log());
        web.serve(&format!("{pds}/xrpc/com.atproto.sync.getRepo?{}", query(&[("did", &did)])), 200, repo.export());
        let listed = serde_json::json!({"records": [{"uri": format!("at://{did}/{MANIFEST_COLLECTION}/{rkey}"), "value": {"digest": digest}}]});
        let list_url = format!("{pds}/xrpc/com.atproto.repo.listRecords?{}", query(&[("repo", &did), ("collection", MANIFEST_COLLECTION), ("limit", "100")]));
        web.serve(&list_url, 200, listed.to_string());
        let proof_url = format!("{pds}/xrpc/com.atproto.sync.getRecord?{}", query(&[("did", &did), ("collection", MANIFEST_COLLECTION), ("rkey", &rkey)]));
        web.serve(&proof_url, 200, repo.proof(MANIFEST_COLLECTION, &rkey));
        let dir = tempfile::tempdir().unwrap();
        // Offline in its own config: bundle create goes online anyway (it is made on a connected machine).
        let config = Config { cache_dir: dir.path().join("cache"), plc_directory: "https://plc.test".into(), offline: true, ..Config::default() };
        let out = dir.path().join("bundle.json");
        let bundle = create(&config, &Remote::new(web.clone(), Arc::new(MemoryResolve::new())), None, &[], &[did.clone()], &out).unwrap();
        assert_eq!(bundle.dids.len(), 1);
        assert!(bundle.dids[0].audit_log.is_some(), "every did:plc document carries its audit log");
        assert_eq!((bundle.proofs.len(), bundle.locators.len(), bundle.collections.len()), (1, 1, 1));
        // One export of the repository carries every record's proof: no getRecord, no listRecords.
        assert!(!web.requested().contains(&proof_url) && !web.requested().contains(&list_url), "{:?}", web.requested());
        // The node's own cache was never touched: the bundle was collected in a scratch one.
        assert!(!dir.path().join("cache").exists());
        // And it imports, every entry verified.
        let node = tempfile::tempdir().unwrap();
        let parsed = crate::bundle::parse(&std::fs::read(&out).unwrap()).unwrap();
        let report = crate::bundle::import(&parsed, &Cache::new(node.path()), "bundle.json", &Config::default(), crate::clock::now_micros(None).unwrap());
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        assert_eq!(report.stored.len(), 4, "document, proof, locator, collection state: {:?}", report.stored);
        assert!(report.stored.iter().any(|u| u.starts_with("collection state")), "{:?}", report.stored);
    }

    #[test]
    fn only_fresh_identities_with_their_audit_log_are_reused() {
        use crate::material::store::DidEntry;
        let dir = tempfile::tempdir().unwrap();
        let known = Cache::new(dir.path());
        let doc = |did: &str, fetched_at: i64, log: bool| DidEntry {
            did: did.into(),
            fetched_at,
            source: "test".into(),
            document: "{}".into(),
            audit_log: log.then(|| "[]".into()),
        };
        let (now, ttl) = (1_000_000_000, 300_000_000);
        known.write(Kind::Did, &["did:plc:fresh"], &doc("did:plc:fresh", now - 1, true));
        known.write(Kind::Did, &["did:plc:stale"], &doc("did:plc:stale", now - ttl, true));
        known.write(Kind::Did, &["did:plc:nolog"], &doc("did:plc:nolog", now - 1, false));
        known.write(Kind::Did, &["did:plc:future"], &doc("did:plc:future", now + 1, true));
        known.write(Kind::Did, &["did:web:a.test"], &doc("did:web:a.test", now - 1, false));
        known.write(Kind::Handle, &["a.test"], &HandleEntry { handle: "a.test".into(), did: "did:plc:fresh".into(), fetched_at: now - 1 });
        known.write(Kind::Handle, &["b.test"], &HandleEntry { handle: "b.test".into(), did: "did:plc:other".into(), fetched_at: now - 1 });
        let all: Vec<String> = ["did:plc:fresh", "did:plc:stale", "did:plc:nolog", "did:plc:future", "did:web:a.test"].map(String::from).to_vec();
        let (documents, handles) = reusable(&known, &all, now, ttl);
        let mut reused: Vec<&str> = documents.iter().map(|d| d.did.as_str()).collect();
        reused.sort();
        assert_eq!(reused, ["did:plc:fresh", "did:web:a.test"]);
        assert_eq!(handles.iter().map(|h| h.handle.as_str()).collect::<Vec<_>>(), ["a.test"], "only the named DIDs' bindings");
    }
}
