//! Bundles: DID documents (with did:plc audit logs), record locators and proofs in one
//! versioned JSON file, carried from a connected machine to air-gapped nodes.
//!
//! Creating one runs the ordinary online engine against a scratch cache (with `strict_plc`
//! forced on, so every did:plc audit log is fetched and verified) and exports that cache.
//! Importing verifies every entry before it enters the node's cache: a did:plc document must
//! agree with its audit log, which is checked from the genesis hash up, so a tampered bundle is
//! caught without trusting whoever carried it; every proof must verify under its DID's key.
//! did:web documents cannot be self-certified: they are trusted as delivered (said on import).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use atproto_sig_core::did::{DidDocument, DidMethod, did_method};
use atproto_sig_core::plc::verify_audit_log;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::verify::{Expectation, KeySource, ProofInput, verify};
use atproto_sig_core::{Limits, Reason};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::cache::{Cache, DidEntry, Kind, LocatorEntry, ProofEntry};
use crate::config::Config;
use crate::net::{Deadline, Http};

pub const FORMAT: &str = "atproto-verifier-bundle";
/// Version 2 adds `collections` (the signed state of each DID's io.atcr.manifest collection);
/// version 1 bundles are still read.
pub const VERSION: u32 = 2;
pub const MAX_BUNDLE: usize = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub version: u32,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    pub dids: Vec<DidEntry>,
    pub locators: Vec<LocatorEntry>,
    pub proofs: Vec<ProofEntry>,
    /// The signed state of whole collections (made by `bundle create --did`): proves every
    /// record that is gone, so importing revokes cached proofs of deleted records.
    #[serde(default)]
    pub collections: Vec<CollectionEntry>,
}

/// A collection CAR: commit, the MST nodes covering the collection, and its records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CollectionEntry {
    pub did: String,
    pub collection: String,
    pub fetched_at: i64,
    pub source: String,
    /// Base64 of the CAR bytes.
    pub car: String,
}

/// What an import did with each entry, in words: only `stored` changed the cache.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub stored: Vec<String>,
    pub unchanged: Vec<String>,
    pub refused: Vec<String>,
    pub notes: Vec<String>,
}

/// Creates a bundle for `images` (via the trust policy's candidates) and `dids` (every
/// io.atcr.manifest record), written to `out`. Returns what it holds.
pub fn create(config: &Config, policy: Option<&atproto_sig_core::policy::Policy>, images: &[String], dids: &[String], out: &Path) -> Result<Bundle, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut online = config.clone();
    online.cache_dir = scratch.path().to_owned();
    online.strict_plc = true;
    online.offline = false;
    let http = Http::new(config.connect_timeout.0, config.request_timeout.0, Deadline::after(Duration::from_secs(300)));
    let cache = Cache::new(scratch.path());
    let dns = crate::dns::SystemResolve { timeout: config.connect_timeout.0 };
    let empty = atproto_sig_core::policy::Policy::empty();
    let context =
        crate::engine::Context::new(&online, policy.unwrap_or(&empty), &cache, Some(&http), Some(&http), &dns, crate::input::now_micros(None).unwrap_or(0));
    for name in images {
        let image = atproto_sig_core::reference::ImageRef::parse(name).map_err(|e| e.to_string())?;
        if policy.is_none() {
            return Err("--image needs the trust policy (to know which DIDs sign it): install it, or use --did".into());
        }
        let digest = match &image.digest {
            Some(d) => d.clone(),
            None => crate::registry::resolve_tag(config, &image, &http).map_err(|e| format!("{name}: {e}"))?,
        };
        let decision = context.decide(&image, &digest);
        crate::log::info(&format!("{name}: {} ({})", decision.message, decision.reason.code()));
    }
    let mut collections = Vec::new();
    for did in dids {
        let (document, _) = context.document(did).map_err(|v| format!("{did}: {}", v.message))?;
        let pds = document.pds.clone().ok_or_else(|| format!("{did} names no PDS"))?;
        // The signed state of the whole collection first: it proves deletions too.
        let repo = crate::resolve::fetch_repo(&http, &pds, did).map_err(|e| format!("{did}: {e}"))?;
        let (car, _) = atproto_sig_core::collection::extract(&repo, MANIFEST_COLLECTION, &Limits::repository())
            .map_err(|e| format!("{did}: the repository export: {e}"))?;
        collections.push(CollectionEntry {
            did: did.clone(),
            collection: MANIFEST_COLLECTION.into(),
            fetched_at: context.now,
            source: pds.clone(),
            car: base64::engine::general_purpose::STANDARD.encode(&car),
        });
        let records = crate::resolve::list_manifest_records(&http, &pds, did, MANIFEST_COLLECTION).map_err(|e| format!("{did}: {e}"))?;
        for (rkey, digest) in records {
            context.proof(&document, &rkey).map_err(|v| format!("{did}/{rkey}: {}", v.message))?;
            let entry = LocatorEntry { did: did.clone(), digest: digest.clone(), rkey, fetched_at: context.now };
            cache.write(Kind::Locator, &[did, &digest], &entry);
        }
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
    let bytes = serde_json::to_vec_pretty(&bundle).map_err(|e| e.to_string())?;
    let mut temp = tempfile::NamedTempFile::new_in(out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))).map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut temp, &bytes).map_err(|e| e.to_string())?;
    temp.persist(out).map_err(|e| e.to_string())?;
    Ok(bundle)
}

/// Parses a bundle file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Bundle, String> {
    let bundle: Bundle = serde_json::from_slice(bytes).map_err(|e| format!("not a bundle: {e}"))?;
    if bundle.format != FORMAT || !(1..=VERSION).contains(&bundle.version) {
        return Err(format!("bundle format {:?} version {} is not supported (expected {FORMAT} {VERSION})", bundle.format, bundle.version));
    }
    Ok(bundle)
}

/// The document a bundle entry proves: did:plc entries must agree with their audit log.
fn check_did_entry(entry: &DidEntry, limits: &Limits) -> Result<(DidDocument, Option<String>), String> {
    let document = DidDocument::parse(entry.document.as_bytes(), &entry.did, limits).map_err(|e| e.to_string())?;
    match did_method(&entry.did).map_err(|e| e.to_string())? {
        DidMethod::Plc => {
            let log = entry.audit_log.as_deref().ok_or("no audit log: a did:plc document cannot be checked without it")?;
            let state = verify_audit_log(&entry.did, log.as_bytes(), limits).map_err(|e| format!("audit log invalid: {e}"))?;
            if state.deactivated {
                return Err("the audit log ends in a tombstone: the DID is deactivated".into());
            }
            let key = state.signing_key().map_err(|e| format!("audit log: {e}"))?;
            if document.signing_key.as_ref().ok() != Some(&key) {
                return Err("the document's #atproto key differs from the key its audit log establishes".into());
            }
            if document.pds != state.pds() || document.handle != state.handle() {
                return Err("the document's PDS or handle differs from its audit log".into());
            }
            Ok((document, None))
        }
        DidMethod::Web => Ok((document, Some(format!("{}: did:web documents are trusted as delivered (they cannot be self-certified)", entry.did)))),
    }
}

/// Refuses material that claims to be fetched later than this node's clock allows.
fn check_fetch_time(fetched_at: i64, now: i64, config: &Config) -> Result<(), String> {
    let skew = i64::try_from(config.clock_skew.0.as_micros()).unwrap_or(i64::MAX);
    if fetched_at > now.saturating_add(skew) {
        return Err(format!(
            "it claims to be fetched {}, later than this node's clock ({}) plus clock_skew ({}) — a bundle cannot come from the future; check both clocks and re-create the bundle",
            atproto_sig_core::syntax::format_datetime_micros(fetched_at),
            atproto_sig_core::syntax::format_datetime_micros(now),
            config.clock_skew
        ));
    }
    Ok(())
}

/// Verifies every entry and writes the accepted ones to `cache`. Nothing moves backwards: a
/// did:plc audit log that is a prefix of the stored one, or a proof at an older commit rev
/// than the stored one for the same record, is refused. Fetch times are this node's: never
/// later than the import (`now`), nor than a proof's signed commit.
pub fn import(bundle: &Bundle, cache: &Cache, source: &str, config: &Config, now: i64) -> ImportReport {
    let limits = Limits::default();
    let mut report = ImportReport::default();
    let mut documents: BTreeMap<String, DidDocument> = BTreeMap::new();
    for entry in &bundle.dids {
        let label = format!("DID document {}", entry.did);
        let checked = check_fetch_time(entry.fetched_at, now, config).and_then(|()| check_did_entry(entry, &limits));
        let (document, note) = match checked {
            Ok(found) => found,
            Err(e) => {
                report.refused.push(format!("{label}: {e}"));
                continue;
            }
        };
        report.notes.extend(note);
        let held = cache.read::<DidEntry>(Kind::Did, &[&entry.did]);
        if let (Some(held_log), Some(new_log)) = (held.as_ref().and_then(|h| h.audit_log.as_deref()), entry.audit_log.as_deref())
            && crate::knowledge::is_older_audit_log(new_log, held_log)
        {
            report.refused.push(format!("{label}: its audit log is a prefix of the one this node already holds — older than what this node already holds (a rotated-out key must not come back)"));
            continue;
        }
        documents.insert(entry.did.clone(), document);
        if held.as_ref().is_some_and(|h| h.document == entry.document && h.audit_log == entry.audit_log) {
            report.unchanged.push(label);
            continue;
        }
        let mut stored = entry.clone();
        stored.fetched_at = crate::knowledge::stored_fetch_time(entry.fetched_at, now, None);
        stored.source = format!("bundle {source} ({})", entry.source);
        cache.write(Kind::Did, &[&entry.did], &stored);
        report.stored.push(label);
    }
    let document_of = |did: &str, documents: &BTreeMap<String, DidDocument>| {
        documents.get(did).cloned().or_else(|| cache.read::<DidEntry>(Kind::Did, &[did]).and_then(|e| check_did_entry(&e, &limits).ok()).map(|(d, _)| d))
    };
    // (did, rkey, digest) whose proof verified for exactly that digest: only these locators count.
    let mut proven: Vec<(String, String, String)> = Vec::new();
    for entry in &bundle.proofs {
        let label = format!("proof {}/{}/{}", entry.did, entry.collection, entry.rkey);
        if let Err(e) = check_fetch_time(entry.fetched_at, now, config) {
            report.refused.push(format!("{label}: {e}"));
            continue;
        }
        let Some(document) = document_of(&entry.did, &documents) else {
            report.refused.push(format!("{label}: no verified DID document for {}", entry.did));
            continue;
        };
        let Ok(car) = base64::engine::general_purpose::STANDARD.decode(&entry.car) else {
            report.refused.push(format!("{label}: not base64"));
            continue;
        };
        let digest = bundle.locators.iter().find(|l| l.did == entry.did && l.rkey == entry.rkey).map(|l| l.digest.clone());
        match store_proof(
            cache,
            config,
            now,
            &document,
            &entry.rkey,
            &entry.collection,
            &car,
            digest.as_deref(),
            &format!("bundle {source} ({})", entry.source),
            entry.fetched_at,
        ) {
            Ok(Stored { changed, verified }) => {
                if verified && let Some(digest) = digest {
                    proven.push((entry.did.clone(), entry.rkey.clone(), digest));
                }
                if changed { report.stored.push(label) } else { report.unchanged.push(label) }
            }
            Err(e) => report.refused.push(format!("{label}: {e}")),
        }
    }
    for locator in &bundle.locators {
        let label = format!("locator {} -> {}/{}", locator.digest, locator.did, locator.rkey);
        if !proven.iter().any(|(d, r, g)| *d == locator.did && *r == locator.rkey && *g == locator.digest) {
            // A locator must point at a record that names its digest; otherwise it could make a
            // good image look mismatched or revoked.
            report.refused.push(format!("{label}: its record does not verify for that digest"));
            continue;
        }
        if cache.read::<LocatorEntry>(Kind::Locator, &[&locator.did, &locator.digest]).is_some_and(|held| held.rkey == locator.rkey) {
            report.unchanged.push(label);
            continue;
        }
        let stored = LocatorEntry { fetched_at: crate::knowledge::stored_fetch_time(locator.fetched_at, now, None), ..locator.clone() };
        cache.write(Kind::Locator, &[&locator.did, &locator.digest], &stored);
        report.stored.push(label);
    }
    for entry in &bundle.collections {
        import_collection(entry, bundle, cache, config, now, source, &document_of(&entry.did, &documents), &mut report);
    }
    report
}

/// What storing one proof did.
struct Stored {
    changed: bool,
    verified: bool,
}

/// Verifies one proof CAR for `document.did`/`collection`/`rkey` and stores it unless this node
/// holds a proof at the same or a newer commit. `digest` is the digest its record should name.
#[allow(clippy::too_many_arguments)]
fn store_proof(
    cache: &Cache,
    config: &Config,
    now: i64,
    document: &DidDocument,
    rkey: &str,
    collection: &str,
    car: &[u8],
    digest: Option<&str>,
    source: &str,
    claimed: i64,
) -> Result<Stored, String> {
    let limits = Limits::default();
    let did = document.did.as_str();
    let zero = format!("sha256:{}", "0".repeat(64));
    let verdict = verify(&ProofInput {
        car,
        key: KeySource::Document(document),
        expect: Expectation { did, rkey: Some(rkey), digest: digest.unwrap_or(&zero), repository: None },
        now_micros: now,
        max_clock_skew_micros: i64::try_from(config.clock_skew.0.as_micros()).unwrap_or(i64::MAX),
        limits: &limits,
    });
    // These outcomes are only reachable after the commit signature and the MST path verified.
    let authentic = matches!(verdict.reason, Reason::Verified | Reason::DigestMismatch | Reason::RecordDeleted | Reason::RecordInvalid);
    if collection != MANIFEST_COLLECTION || !authentic {
        return Err(format!("{} ({})", verdict.message, verdict.reason.code()));
    }
    let rev = verdict.facts.rev.clone().unwrap_or_default();
    if let Some(held) = crate::knowledge::newer_held(cache, did, collection, rkey, &rev) {
        return Err(crate::knowledge::rollback_message("this proof", &rev, &held));
    }
    let held: Option<ProofEntry> = cache.read(Kind::Proof, &[did, collection, rkey]);
    let verified = verdict.reason == Reason::Verified;
    if held.as_ref().and_then(crate::knowledge::entry_rev).is_some_and(|(r, _)| r == rev) {
        return Ok(Stored { changed: false, verified });
    }
    let signed = atproto_sig_core::syntax::tid_timestamp_micros(&rev).and_then(|t| i64::try_from(t).ok());
    let entry = ProofEntry {
        did: did.to_owned(),
        collection: collection.to_owned(),
        rkey: rkey.to_owned(),
        fetched_at: crate::knowledge::stored_fetch_time(claimed, now, signed),
        source: source.to_owned(),
        car: base64::engine::general_purpose::STANDARD.encode(car),
    };
    cache.write(Kind::Proof, &[did, collection, rkey], &entry);
    Ok(Stored { changed: true, verified })
}

/// Applies the signed state of a whole collection: every record this node knows of for the
/// DID (cached proofs, locators, this bundle's entries) gets the proof cut from that state:
/// present records a newer proof, deleted ones an absence proof that revokes them.
#[allow(clippy::too_many_arguments)]
fn import_collection(
    entry: &CollectionEntry,
    bundle: &Bundle,
    cache: &Cache,
    config: &Config,
    now: i64,
    source: &str,
    document: &Option<DidDocument>,
    report: &mut ImportReport,
) {
    let label = format!("collection state {}/{}", entry.did, entry.collection);
    if let Err(e) = check_fetch_time(entry.fetched_at, now, config) {
        report.refused.push(format!("{label}: {e}"));
        return;
    }
    let Some(document) = document else {
        report.refused.push(format!("{label}: no verified DID document for {}", entry.did));
        return;
    };
    let Ok(car) = base64::engine::general_purpose::STANDARD.decode(&entry.car) else {
        report.refused.push(format!("{label}: not base64"));
        return;
    };
    let limits = Limits::collection();
    let present = match atproto_sig_core::collection::extract(&car, &entry.collection, &limits) {
        Ok((_, rkeys)) => rkeys,
        Err(e) => {
            report.refused.push(format!("{label}: {e}"));
            return;
        }
    };
    let locators: Vec<LocatorEntry> = cache.all::<LocatorEntry>(Kind::Locator).into_iter().map(|(_, l)| l).filter(|l| l.did == entry.did).collect();
    let mut rkeys: Vec<String> = present.clone();
    rkeys.extend(
        cache.all::<ProofEntry>(Kind::Proof).into_iter().map(|(_, p)| p).filter(|p| p.did == entry.did && p.collection == entry.collection).map(|p| p.rkey),
    );
    rkeys.extend(locators.iter().map(|l| l.rkey.clone()));
    rkeys.extend(bundle.proofs.iter().filter(|p| p.did == entry.did).map(|p| p.rkey.clone()));
    rkeys.sort();
    rkeys.dedup();
    let (mut changed, mut revoked, mut failed) = (0usize, Vec::new(), Vec::new());
    for rkey in &rkeys {
        let had = cache.read::<ProofEntry>(Kind::Proof, &[&entry.did, &entry.collection, rkey]).is_some();
        let proof = match atproto_sig_core::collection::record_proof(&car, &entry.collection, rkey, &limits) {
            Ok(p) => p,
            Err(e) => {
                failed.push(format!("{rkey}: {e}"));
                continue;
            }
        };
        let digest = locators.iter().find(|l| &l.rkey == rkey).map(|l| l.digest.clone());
        let gone = !present.contains(rkey);
        match store_proof(
            cache,
            config,
            now,
            document,
            rkey,
            &entry.collection,
            &proof,
            digest.as_deref(),
            &format!("bundle {source} ({})", entry.source),
            entry.fetched_at,
        ) {
            Ok(Stored { changed: true, .. }) => {
                changed += 1;
                if gone && had {
                    revoked.push(rkey.clone());
                }
            }
            Ok(_) => {}
            Err(e) => failed.push(format!("{rkey}: {e}")),
        }
    }
    if failed.is_empty() {
        let what = format!("{label}: {} records known, {changed} proofs updated", rkeys.len());
        if changed > 0 { report.stored.push(what) } else { report.unchanged.push(what) }
    } else {
        report.refused.push(format!("{label}: {}", failed.join("; ")));
    }
    for rkey in revoked {
        report.notes.push(format!("revoked at://{}/{}/{rkey}: the signed collection state proves the record is gone", entry.did, entry.collection));
    }
}

/// Imports every bundle of the read-only `bundle_dir` not imported yet (tracked by name, size
/// and modification time in the cache), so offline decisions see them.
pub fn sync_bundle_dir(config: &Config, cache: &Cache) -> Vec<String> {
    let Some(dir) = &config.bundle_dir else { return Vec::new() };
    let mut notes = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![format!("bundle_dir {} is not readable", dir.display())];
    };
    for path in entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()) {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let stamp = format!("{}:{}:{:?}", path.display(), meta.len(), meta.modified().ok());
        let marker = [stamp.as_str()];
        if cache.read::<String>(Kind::Imported, &marker).is_some() {
            continue;
        }
        match crate::input::read_capped(&path, MAX_BUNDLE).map_err(|e| e.to_string()).and_then(|b| parse(&b)) {
            Ok(bundle) => {
                let report = import(&bundle, cache, &path.display().to_string(), config, crate::input::now_micros(None).unwrap_or(0));
                notes.extend(report.refused.iter().map(|r| format!("{}: refused {r}", path.display())));
                cache.write(Kind::Imported, &marker, &stamp);
            }
            Err(e) => notes.push(format!("{}: {e}", path.display())),
        }
    }
    notes
}
