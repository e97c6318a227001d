//! Bundles: DID documents (with did:plc audit logs), record locators and proofs in one
//! versioned JSON file, carried from a connected machine to air-gapped nodes.
//!
//! Creating one runs the ordinary online pipeline against a scratch cache (with `strict_plc`
//! forced on, so every did:plc audit log is fetched and verified) and exports that cache.
//! Importing verifies every entry before it enters the node's cache: a did:plc document must
//! agree with its audit log, which is checked from the genesis hash up, so a tampered bundle is
//! caught without trusting whoever carried it; every proof must verify under its DID's key.
//! did:web documents cannot be self-certified: they are trusted as delivered (said on import).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use atproto_sig_core::did::{did_method, DidDocument, DidMethod};
use atproto_sig_core::plc::verify_audit_log;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::verify::{verify, Expectation, KeySource, ProofInput};
use atproto_sig_core::{Limits, Reason};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::cache::{Cache, DidEntry, Kind, LocatorEntry, ProofEntry};
use crate::config::Config;
use crate::net::{Deadline, Http};

pub const FORMAT: &str = "atproto-verifier-bundle";
pub const VERSION: u32 = 1;
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
}

/// What an import accepted and refused, in words.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub accepted: Vec<String>,
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
    let dns = |name: &str| crate::dns::lookup_txt(name, config.connect_timeout.0);
    let empty = atproto_sig_core::policy::Policy::empty();
    let context = crate::pipeline::Context::new(&online, policy.unwrap_or(&empty), &cache, Some(&http), Some(&http), &dns, crate::input::now_micros(None).unwrap_or(0));
    for name in images {
        let image = atproto_sig_core::reference::ImageRef::parse(name).map_err(|e| e.to_string())?;
        if policy.is_none() {
            return Err("--image needs the trust policy (to know which DIDs sign it): install it, or use --did".into());
        }
        let digest = match &image.digest {
            Some(d) => d.clone(),
            None => crate::registry::resolve_tag(config, &image, Deadline::after(config.budget.0)).map_err(|e| format!("{name}: {e}"))?,
        };
        let decision = context.decide(&image, &digest);
        eprintln!("{name}: {} ({})", decision.message, decision.reason.code());
    }
    for did in dids {
        let (document, _) = context.document(did).map_err(|v| format!("{did}: {}", v.message))?;
        let pds = document.pds.clone().ok_or_else(|| format!("{did} names no PDS"))?;
        let records = crate::resolve::list_manifest_records(&http, &pds, did, MANIFEST_COLLECTION).map_err(|e| format!("{did}: {e}"))?;
        for (rkey, digest) in records {
            context.proof(did, Some(&pds), &rkey).map_err(|v| format!("{did}/{rkey}: {}", v.message))?;
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
    if bundle.format != FORMAT || bundle.version != VERSION {
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

/// Verifies every entry and writes the accepted ones to `cache` (never replacing newer data).
pub fn import(bundle: &Bundle, cache: &Cache, source: &str, config: &Config) -> ImportReport {
    let limits = Limits::default();
    let mut report = ImportReport::default();
    let mut documents: BTreeMap<String, DidDocument> = BTreeMap::new();
    for entry in &bundle.dids {
        match check_did_entry(entry, &limits) {
            Ok((document, note)) => {
                report.notes.extend(note);
                documents.insert(entry.did.clone(), document);
                let newer = cache.read::<DidEntry>(Kind::Did, &[&entry.did]).is_some_and(|e| e.fetched_at > entry.fetched_at);
                if !newer {
                    let mut stored = entry.clone();
                    stored.source = format!("bundle {source} ({})", entry.source);
                    cache.write(Kind::Did, &[&entry.did], &stored);
                }
                report.accepted.push(format!("DID document {}", entry.did));
            }
            Err(e) => report.refused.push(format!("DID document {}: {e}", entry.did)),
        }
    }
    // (did, rkey, digest) whose proof verified for exactly that digest: only these locators count.
    let mut proven: Vec<(String, String, String)> = Vec::new();
    for entry in &bundle.proofs {
        let label = format!("proof {}/{}/{}", entry.did, entry.collection, entry.rkey);
        let document = documents.get(&entry.did).cloned().or_else(|| {
            cache.read::<DidEntry>(Kind::Did, &[&entry.did]).and_then(|e| check_did_entry(&e, &limits).ok()).map(|(d, _)| d)
        });
        let Some(document) = document else {
            report.refused.push(format!("{label}: no verified DID document for {}", entry.did));
            continue;
        };
        let Ok(car) = base64::engine::general_purpose::STANDARD.decode(&entry.car) else {
            report.refused.push(format!("{label}: not base64"));
            continue;
        };
        let digest = bundle.locators.iter().find(|l| l.did == entry.did && l.rkey == entry.rkey).map_or_else(|| format!("sha256:{}", "0".repeat(64)), |l| l.digest.clone());
        let verdict = verify(&ProofInput {
            car: &car,
            key: KeySource::Document(&document),
            expect: Expectation { did: &entry.did, rkey: Some(&entry.rkey), digest: &digest, repository: None },
            // Judged as of when it was fetched: "in the future" means relative to that moment.
            now_micros: entry.fetched_at,
            max_clock_skew_micros: i64::try_from(config.clock_skew.0.as_micros()).unwrap_or(i64::MAX),
            limits: &limits,
        });
        // These outcomes are only reachable after the commit signature and the MST path verified.
        let authentic = matches!(verdict.reason, Reason::Verified | Reason::DigestMismatch | Reason::RecordDeleted | Reason::RecordInvalid);
        if entry.collection != MANIFEST_COLLECTION || !authentic {
            report.refused.push(format!("{label}: {} ({})", verdict.message, verdict.reason.code()));
            continue;
        }
        let newer = cache.read::<ProofEntry>(Kind::Proof, &[&entry.did, &entry.collection, &entry.rkey]).is_some_and(|e| e.fetched_at > entry.fetched_at);
        if !newer {
            cache.write(Kind::Proof, &[&entry.did, &entry.collection, &entry.rkey], entry);
        }
        if verdict.reason == Reason::Verified {
            proven.push((entry.did.clone(), entry.rkey.clone(), digest.clone()));
        }
        report.accepted.push(label);
    }
    for locator in &bundle.locators {
        if proven.iter().any(|(d, r, g)| *d == locator.did && *r == locator.rkey && *g == locator.digest) {
            cache.write(Kind::Locator, &[&locator.did, &locator.digest], locator);
        } else {
            // A locator must point at a record that names its digest; otherwise it could make a
            // good image look mismatched or revoked.
            report.refused.push(format!("locator {} -> {}/{}: its record does not verify for that digest", locator.digest, locator.did, locator.rkey));
        }
    }
    report
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
                let report = import(&bundle, cache, &path.display().to_string(), config);
                notes.extend(report.refused.iter().map(|r| format!("{}: refused {r}", path.display())));
                cache.write(Kind::Imported, &marker, &stamp);
            }
            Err(e) => notes.push(format!("{}: {e}", path.display())),
        }
    }
    notes
}
