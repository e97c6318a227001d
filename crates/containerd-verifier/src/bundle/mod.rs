//! Bundles: DID documents (with did:plc audit logs), record locators and proofs in one
//! versioned JSON file, carried from a connected machine to air-gapped nodes.
//!
//! Creating one runs the ordinary online engine against a scratch cache (with `strict_plc`
//! forced on, so every did:plc audit log is fetched and verified) and exports that cache.
//! Importing verifies every entry before it enters the node's cache: a did:plc document must
//! agree with its audit log, which is checked from the genesis hash up, so a tampered bundle is
//! caught without trusting whoever carried it; every proof must verify under its DID's key.
//! did:web documents cannot be self-certified: they are trusted as delivered (said on import).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::limits::NodeLimits;
use crate::lookup::atproto::LookupError;
use crate::lookup::registry::RegistryError;
use crate::material::store::{Cache, DidEntry, HandleEntry, Kind, LocatorEntry, ProofEntry};
use crate::remote::Deadline;

mod create;
pub(crate) mod import;

pub use create::{create, create_counted};
pub use import::{import, import_as, import_with};

pub const FORMAT: &str = "atproto-verifier-bundle";
/// Version 2 adds `collections` (the signed state of each DID's io.atcr.manifest collection);
/// version 3 adds `handles` (each DID's handle, resolved both ways when it was made); older
/// bundles are still read.
pub const VERSION: u32 = 3;

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
    /// Handle resolutions (`bundle create --did`: each DID's handle, checked both ways), so a
    /// node decides `host/<handle>/<repo>` images without resolving the handle itself. Only a
    /// signed publication's are imported (a resolution is nobody's signed word).
    #[serde(default)]
    pub handles: Vec<HandleEntry>,
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

/// Why a bundle cannot be made or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not a bundle: {0}")]
    NotABundle(String),
    #[error("bundle format {format:?} version {version} is not supported (expected {FORMAT} {VERSION})")]
    Unsupported { format: String, version: u32 },
    /// The file could not be read (callers name the file).
    #[error("{problem}")]
    Read { path: String, problem: String },
    #[error("cannot write {path}: {problem}")]
    Write { path: String, problem: String },
    #[error("--image needs the trust policy (to know which DIDs sign it): install it, or use --did")]
    NeedsPolicy,
    #[error("bundle create needs the network: run it on a connected machine")]
    Offline,
    #[error("{name}: {problem}")]
    Image { name: String, problem: String },
    #[error("{name}: {error}")]
    Tag { name: String, error: RegistryError },
    #[error("{did}: {message}")]
    Document { did: String, message: String },
    #[error("{did} names no PDS")]
    NoPds { did: String },
    #[error("{did}: {error}")]
    Lookup { did: String, error: LookupError },
    #[error("{did}: the repository export: {problem}")]
    Export { did: String, problem: String },
    #[error("{did}/{rkey}: {message}")]
    Proof { did: String, rkey: String, message: String },
}

/// What an import did with each entry, in words: only `stored` changed the cache.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub stored: Vec<String>,
    pub unchanged: Vec<String>,
    pub refused: Vec<String>,
    pub notes: Vec<String>,
}

/// Parses a bundle file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Bundle, BundleError> {
    let bundle: Bundle = serde_json::from_slice(bytes).map_err(|e| BundleError::NotABundle(e.to_string()))?;
    if bundle.format != FORMAT || !(1..=VERSION).contains(&bundle.version) {
        return Err(BundleError::Unsupported { format: crate::limits::short(&bundle.format, 100), version: bundle.version });
    }
    Ok(bundle)
}

/// Reads (capped) and parses a bundle file.
pub fn read(path: &Path) -> Result<Bundle, BundleError> {
    let bytes = crate::fsio::read_capped(path, crate::limits::NodeLimits::DEFAULT.bundle)
        .map_err(|e| BundleError::Read { path: path.display().to_string(), problem: e.to_string() })?;
    parse(&bytes)
}

/// Imports every bundle of `bundle_dir` not imported yet (the refresh timer's job, never a
/// pull's), oldest name first, within the timer's budget: a bundle whose import was started by
/// an earlier run that never finished it (the timer was killed: too big, too slow) is set
/// aside with a message, never retried in a loop; bundles left when the budget runs out wait
/// for the next run. Returns the problems, for the refresh report.
pub fn sync_bundle_dir(config: &Config, cache: &Cache) -> Vec<String> {
    sync_bundle_dir_within(config, cache, Deadline::after(NodeLimits::DEFAULT.bundle_dir_budget))
}

fn sync_bundle_dir_within(config: &Config, cache: &Cache, deadline: Deadline) -> Vec<String> {
    let Some(dir) = &config.bundle_dir else { return Vec::new() };
    // Only what this node's user (or root) could have put there is imported.
    if let Err(why) = crate::fsio::check_private_target(dir) {
        return vec![format!("bundle_dir not imported: {why} — make it writable only by this user or root (chmod go-w)")];
    }
    let mut notes = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![format!("bundle_dir {} is not readable", dir.display())];
    };
    let mut paths: Vec<std::path::PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    let mut left = paths.len();
    for path in paths {
        left -= 1;
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if let Err(why) = crate::fsio::check_private(&path) {
            notes.push(format!("{}: not imported: {why}", path.display()));
            continue;
        }
        let stamp = format!("{}:{}:{:?}", path.display(), meta.len(), meta.modified().ok());
        let (done, started) = ([stamp.as_str()], [stamp.as_str(), "started"]);
        if cache.read::<String>(Kind::Imported, &done).is_some() {
            continue;
        }
        if cache.read::<String>(Kind::Imported, &started).is_some() {
            notes.push(format!(
                "{}: set aside: an earlier refresh started importing it and never finished (it did not fit the refresh budget) — import it by hand to see why: atproto-verifier bundle import {}",
                path.display(),
                path.display()
            ));
            cache.write(Kind::Imported, &done, &stamp);
            continue;
        }
        if deadline.expired() {
            notes.push(format!("bundle_dir: the refresh budget ran out; {} bundles wait for the next run", left + 1));
            break;
        }
        cache.write(Kind::Imported, &started, &stamp);
        match read(&path) {
            Ok(bundle) => {
                let report = import(&bundle, cache, &path.display().to_string(), config, crate::clock::now_micros(None).unwrap_or(0));
                notes.extend(report.refused.iter().map(|r| format!("{}: refused {r}", path.display())));
            }
            Err(e) => notes.push(format!("{}: {e}", path.display())),
        }
        cache.write(Kind::Imported, &done, &stamp);
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle whose import an earlier (killed) refresh started is set aside once, with a
    /// message, and never retried.
    #[test]
    fn a_bundle_that_did_not_fit_the_refresh_budget_is_set_aside_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let bundles = dir.path().join("bundles");
        std::fs::create_dir(&bundles).unwrap();
        let path = bundles.join("huge.bundle");
        std::fs::write(&path, "{}").unwrap();
        let config = Config { bundle_dir: Some(bundles.clone()), ..Config::default() };
        let cache = Cache::new(&dir.path().join("cache"));
        let meta = std::fs::metadata(&path).unwrap();
        let stamp = format!("{}:{}:{:?}", path.display(), meta.len(), meta.modified().ok());
        // What a refresh killed mid-import leaves behind.
        cache.write(Kind::Imported, &[stamp.as_str(), "started"], &stamp);
        let notes = sync_bundle_dir(&config, &cache);
        assert!(notes.iter().any(|n| n.contains("set aside")), "{notes:?}");
        assert!(sync_bundle_dir(&config, &cache).is_empty(), "not retried");
        // With no budget left, nothing is started, and the rest waits for the next run.
        std::fs::write(bundles.join("next.bundle"), "{}").unwrap();
        let notes = sync_bundle_dir_within(&config, &cache, Deadline::after(std::time::Duration::ZERO));
        assert!(notes.iter().any(|n| n.contains("wait for the next run")), "{notes:?}");
    }
}
