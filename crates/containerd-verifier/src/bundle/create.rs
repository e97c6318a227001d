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
use crate::material::store::{Cache, Kind, LocatorEntry};
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
    let scratch = tempfile::tempdir().map_err(|e| BundleError::Write { path: "a scratch directory".into(), problem: e.to_string() })?;
    // A connected machine collecting into a scratch cache, with every did:plc audit log (the
    // importing node checks each document against its log).
    let options = SessionOptions { cache_dir: Some(scratch.path().to_owned()), audit_logs: true, online: true, registry: true, ..SessionOptions::default() };
    let empty = atproto_sig_core::policy::Policy::empty();
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let deadline = Deadline::after(Duration::from_secs(300));
    let context = Session::new(config, policy.unwrap_or(&empty), remote, now, deadline, &InFlight::default(), options);
    let cache = Cache::new(scratch.path());
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
        collections.push(collect_did(&context, &cache, did)?);
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
    };
    write(&bundle, out)?;
    Ok(bundle)
}

/// Everything of `did`: the signed state of its whole collection first (it proves deletions
/// too), then a proof and a locator for every record it lists.
fn collect_did(context: &Session<'_>, cache: &Cache, did: &str) -> Result<CollectionEntry, BundleError> {
    let (document, _) = context.document(did).map_err(|v| BundleError::Document { did: did.to_owned(), message: v.message })?;
    let http = context.http().ok_or(BundleError::Offline)?;
    let pds = document.pds.clone().ok_or_else(|| BundleError::NoPds { did: did.to_owned() })?;
    let repo = crate::lookup::atproto::fetch_repo(http, &pds, did).map_err(|error| BundleError::Lookup { did: did.to_owned(), error })?;
    let (car, _) = atproto_sig_core::collection::extract(&repo, MANIFEST_COLLECTION, &Limits::repository())
        .map_err(|e| BundleError::Export { did: did.to_owned(), problem: e.to_string() })?;
    let records = crate::lookup::atproto::list_manifest_records(http, &pds, did, MANIFEST_COLLECTION)
        .map_err(|error| BundleError::Lookup { did: did.to_owned(), error })?;
    for (rkey, digest) in records {
        context.proof(&document, &rkey).map_err(|v| BundleError::Proof { did: did.to_owned(), rkey: rkey.clone(), message: v.message })?;
        let entry = LocatorEntry { did: did.to_owned(), digest: digest.clone(), rkey, fetched_at: context.now };
        cache.write(Kind::Locator, &[did, &digest], &entry);
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
