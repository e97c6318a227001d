//! The on-disk cache: DID documents (with did:plc audit logs), digest -> record locators, and
//! proofs. Every entry is one JSON file written atomically (temp file, fsync, rename, fsync of
//! the directory), so concurrent verifier processes only ever see whole entries. Refreshes take
//! an exclusive lock on the entry's lock file so parallel pulls of one image fetch once; the
//! lock is waited for until the decision's deadline at most, never longer.
//! Unreadable or corrupt entries are treated as missing. Nothing from the cache is trusted
//! beyond what it is: proofs are re-verified by the core on every use.
//!
//! Only this node writes what this node trusts: a cache directory that is a symlink, owned by
//! another user (root excepted) or writable by its group or everyone is refused whole (read as
//! empty, never written, said once in the notes and red in `doctor`); entries and locks are
//! opened without following symlinks, and directories are created private (0700).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::fsio::{Unsafe, check_private, check_private_target, nofollow, read_capped_nofollow};
use crate::limits::NodeLimits;
use crate::log::Notes;
use crate::remote::Deadline;

/// An entry that says when this node fetched it (its own clock).
pub trait Dated {
    /// Microseconds since the epoch.
    fn fetched_at(&self) -> i64;
}

/// Entry kinds, each in its own directory.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Did,
    Locator,
    Proof,
    /// Bundles of `bundle_dir` already imported.
    Imported,
    /// Handle -> DID resolutions (still checked against the DID document on every use).
    Handle,
    /// Signature-artifact hints found through referrers, per image digest.
    Referrers,
    /// Per DID: the newest verified commit seen and the newest signed collection state.
    Repo,
    /// Per `watch` source: the position in its stream to resume from after a restart.
    Cursor,
    /// Per DID, rev and shard: a part of a large signed collection state ([`StateShard`]).
    StateShard,
}

impl Kind {
    const ALL: [Kind; 9] = [Kind::Did, Kind::Locator, Kind::Proof, Kind::Imported, Kind::Handle, Kind::Referrers, Kind::Repo, Kind::Cursor, Kind::StateShard];

    fn dir(self) -> &'static str {
        match self {
            Kind::Did => "did",
            Kind::Locator => "locator",
            Kind::Proof => "proof",
            Kind::Imported => "imported",
            Kind::Handle => "handle",
            Kind::Referrers => "referrers",
            Kind::Repo => "repo",
            Kind::Cursor => "cursor",
            Kind::StateShard => "state",
        }
    }
}

/// A cached DID document (and, for did:plc, the audit log it was checked against).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DidEntry {
    pub did: String,
    /// Microseconds since the epoch.
    pub fetched_at: i64,
    /// Where it came from: a URL, `bundle:<file>`, …
    pub source: String,
    /// The document JSON as served.
    pub document: String,
    /// The did:plc audit log, when one was fetched.
    #[serde(default)]
    pub audit_log: Option<String>,
}

/// Where the record for a digest lives.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocatorEntry {
    pub did: String,
    pub digest: String,
    pub rkey: String,
    pub fetched_at: i64,
}

/// A proof CAR as fetched (or a note that the PDS had no record).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProofEntry {
    pub did: String,
    pub collection: String,
    pub rkey: String,
    pub fetched_at: i64,
    pub source: String,
    /// Base64 of the CAR bytes.
    pub car: String,
}

/// What this node knows of one repository, from verified material only: the newest commit
/// whose signature it checked, and the newest signed state of the `io.atcr.manifest`
/// collection (from a bundle's collection CAR, or the watcher).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RepoEntry {
    pub did: String,
    /// The newest verified commit seen, by rev.
    #[serde(default)]
    pub newest: Option<CommitSeen>,
    /// The newest signed collection state.
    #[serde(default)]
    pub state: Option<StateSeen>,
}

/// A verified commit: its rev (signed) and CID.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CommitSeen {
    pub rev: String,
    pub commit: String,
}

/// A signed collection state: at commit `commit` (rev `rev`), exactly these records. A small
/// state holds its records inline; a large one (more than fit one cache entry comfortably) is
/// cut into `shards` [`StateShard`] entries by a hash of the record key, so any size of state
/// is stored, and checking one record reads one shard.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateSeen {
    pub rev: String,
    pub commit: String,
    /// rkey → record CID (inline states only).
    #[serde(default)]
    pub records: std::collections::BTreeMap<String, String>,
    /// How many shards hold the records (0: inline).
    #[serde(default)]
    pub shards: u32,
    /// How many records the state holds.
    #[serde(default)]
    pub count: usize,
}

/// The records of one shard of a large signed collection state: every record of the state
/// whose key hashes to `shard` (of the state's `shards`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateShard {
    pub did: String,
    pub rev: String,
    pub shard: u32,
    /// rkey → record CID.
    pub records: std::collections::BTreeMap<String, String>,
}

/// A handle resolution.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HandleEntry {
    pub handle: String,
    pub did: String,
    pub fetched_at: i64,
}

/// The (DID, rkey) hints of an image's signature artifacts (possibly none).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReferrersEntry {
    pub digest: String,
    pub hints: Vec<(String, String)>,
    pub fetched_at: i64,
}

impl Dated for DidEntry {
    fn fetched_at(&self) -> i64 {
        self.fetched_at
    }
}

impl Dated for LocatorEntry {
    fn fetched_at(&self) -> i64 {
        self.fetched_at
    }
}

impl Dated for ProofEntry {
    fn fetched_at(&self) -> i64 {
        self.fetched_at
    }
}

impl Dated for HandleEntry {
    fn fetched_at(&self) -> i64 {
        self.fetched_at
    }
}

impl Dated for ReferrersEntry {
    fn fetched_at(&self) -> i64 {
        self.fetched_at
    }
}

/// The cache rooted at a directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    /// Where problems with entries are said (the decision's notes, or stderr).
    notes: Notes,
    /// Why the whole cache is not trusted, if it is not (then it reads as empty).
    refused: Option<Unsafe>,
    /// Whether the refusal was said already (once per cache value and its clones).
    said: Arc<AtomicBool>,
}

fn key_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    atproto_sig_core::encoding::hex_encode(&hasher.finalize())
}

impl Cache {
    /// The cache at `root`, its problems said on stderr.
    pub fn new(root: &Path) -> Cache {
        let v1 = root.join("v1");
        // The configured directory may be a link the operator made; nothing inside it may be.
        let refused = check_private_target(root)
            .err()
            .or_else(|| std::iter::once(v1.clone()).chain(Kind::ALL.iter().map(|k| v1.join(k.dir()))).find_map(|dir| check_private(&dir).err()));
        Cache { root: v1, notes: Notes::stderr(), refused, said: Arc::default() }
    }

    /// The same cache, its problems said in `notes` (a decision's own).
    pub fn with_notes(&self, notes: Notes) -> Cache {
        Cache { notes, ..self.clone() }
    }

    /// Why this cache is not trusted, if it is not.
    pub fn refusal(&self) -> Option<&Unsafe> {
        self.refused.as_ref()
    }

    /// True when the cache may be used; else says why, once.
    fn usable(&self) -> bool {
        let Some(why) = &self.refused else { return true };
        if !self.said.swap(true, Ordering::Relaxed) {
            self.notes
                .warn(format!("cache: not used: {why} — make it this user's own and private (chown, chmod 700), then check with `atproto-verifier doctor`"));
        }
        false
    }

    fn path(&self, kind: Kind, parts: &[&str]) -> PathBuf {
        self.root.join(kind.dir()).join(format!("{}.json", key_hash(parts)))
    }

    /// Reads an entry; missing, unreadable or corrupt entries are `None` (and reported on stderr).
    pub fn read<T: DeserializeOwned>(&self, kind: Kind, parts: &[&str]) -> Option<T> {
        if !self.usable() {
            return None;
        }
        let path = self.path(kind, parts);
        let bytes = match read_capped_nofollow(&path, NodeLimits::DEFAULT.cache_entry) {
            Ok(bytes) => bytes,
            Err(_) => return None,
        };
        match serde_json::from_slice(&bytes) {
            Ok(entry) => Some(entry),
            Err(e) => {
                self.notes.warn(format!("cache: ignoring corrupt entry {}: {e}", path.display()));
                None
            }
        }
    }

    /// Writes an entry atomically. Failures are reported, not fatal: the cache is an optimization.
    pub fn write<T: Serialize>(&self, kind: Kind, parts: &[&str], entry: &T) {
        if !self.usable() {
            return;
        }
        if let Err(e) = self.try_write(kind, parts, entry) {
            self.notes.warn(format!("cache: cannot write to {}: {e}", self.root.display()));
        }
    }

    /// Writes an entry atomically, saying why not (for writers whose later steps depend on it).
    pub fn try_write<T: Serialize>(&self, kind: Kind, parts: &[&str], entry: &T) -> std::io::Result<()> {
        if !self.usable() {
            return Err(std::io::Error::other(format!("the cache at {} is not usable", self.root.display())));
        }
        let path = self.path(kind, parts);
        let dir = path.parent().unwrap_or(&self.root);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        temp.write_all(&bytes)?;
        temp.as_file().sync_all()?;
        temp.persist(&path).map_err(|e| e.error)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Every entry of a kind, parsed; corrupt ones are skipped (and reported).
    pub fn all<T: DeserializeOwned>(&self, kind: Kind) -> Vec<(PathBuf, T)> {
        if !self.usable() {
            return Vec::new();
        }
        let mut paths: Vec<PathBuf> = fs::read_dir(self.root.join(kind.dir()))
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
            .unwrap_or_default();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|path| {
                let bytes = read_capped_nofollow(&path, NodeLimits::DEFAULT.cache_entry).ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(entry) => Some((path, entry)),
                    Err(e) => {
                        self.notes.warn(format!("cache: ignoring corrupt entry {}: {e}", path.display()));
                        None
                    }
                }
            })
            .collect()
    }

    /// Removes an entry.
    pub fn remove(&self, kind: Kind, parts: &[&str]) -> bool {
        self.remove_path(&self.path(kind, parts))
    }

    /// Removes an entry file.
    pub fn remove_path(&self, path: &Path) -> bool {
        self.usable() && fs::remove_file(path).is_ok()
    }

    /// Takes the refresh lock of an entry, waiting while another refresher holds it (so that
    /// parallel pulls fetch once and the others read what it wrote), but only until
    /// `deadline`: then `None`, and the caller goes ahead unlocked (a stuck holder costs a
    /// duplicate fetch, never a missed deadline). `None` too if locking fails.
    pub fn lock(&self, kind: Kind, parts: &[&str], deadline: Deadline) -> Option<File> {
        if !self.usable() {
            return None;
        }
        let path = self.path(kind, parts).with_extension("lock");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(path.parent()?).ok()?;
        // A lock is never followed through a symlink (one planted there could point anywhere).
        let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).custom_flags(nofollow()).open(&path).ok()?;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Some(file),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(_)) => return None,
            }
            // Leave the last moments of the budget to the fetch itself.
            let left = deadline.remaining().saturating_sub(std::time::Duration::from_millis(20));
            if left.is_zero() {
                self.notes.warn(format!("cache: {} is held by another refresher past this decision's deadline: going ahead unlocked", path.display()));
                return None;
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(std::time::Duration::from_millis(25));
        }
    }
}

/// Freshness of an entry fetched at `fetched_at`, at `now`, given its TTL and stale allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Past its TTL but within `max_stale`: usable only when a refresh fails.
    Stale,
    Expired,
}

/// How far "in the future" an entry may have been written and still count as just fetched:
/// another verifier process on this node may have written it a moment after this one read the
/// clock (parallel pulls share one fetch). Beyond it, a clock jumped: refresh.
const CONCURRENT_WRITE_MICROS: i64 = 60_000_000;

pub fn freshness(fetched_at: i64, now: i64, ttl_micros: i64, max_stale_micros: i64) -> Freshness {
    let age = now.saturating_sub(fetched_at);
    if age < -CONCURRENT_WRITE_MICROS {
        Freshness::Stale
    } else if age < ttl_micros {
        Freshness::Fresh
    } else if age < ttl_micros.saturating_add(max_stale_micros) {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let entry = LocatorEntry { did: "did:plc:x".into(), digest: "sha256:1".into(), rkey: "r".into(), fetched_at: 5 };
        cache.write(Kind::Locator, &["did:plc:x", "sha256:1"], &entry);
        assert_eq!(cache.read::<LocatorEntry>(Kind::Locator, &["did:plc:x", "sha256:1"]), Some(entry));
        let path =
            std::fs::read_dir(dir.path().join("v1/locator")).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "json")).unwrap();
        fs::write(&path, b"{\"did\": tru").unwrap();
        assert_eq!(cache.read::<LocatorEntry>(Kind::Locator, &["did:plc:x", "sha256:1"]), None);
        assert!(cache.lock(Kind::Locator, &["did:plc:x", "sha256:1"], Deadline::after(std::time::Duration::from_secs(1))).is_some());
    }

    #[test]
    fn a_planted_lock_symlink_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let lock = cache.path(Kind::Did, &["did:plc:x"]).with_extension("lock");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(lock.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        assert!(cache.lock(Kind::Did, &["did:plc:x"], Deadline::after(std::time::Duration::from_millis(100))).is_none());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        // And a symlinked entry reads as missing.
        let entry = cache.path(Kind::Did, &["did:plc:y"]);
        std::fs::write(&target, "{}").unwrap();
        std::os::unix::fs::symlink(&target, &entry).unwrap();
        assert!(cache.read::<serde_json::Value>(Kind::Did, &["did:plc:y"]).is_none());
    }

    #[test]
    fn freshness_windows() {
        assert_eq!(freshness(0, 5, 10, 10), Freshness::Fresh);
        assert_eq!(freshness(0, 10, 10, 10), Freshness::Stale);
        assert_eq!(freshness(0, 19, 10, 10), Freshness::Stale);
        assert_eq!(freshness(0, 20, 10, 10), Freshness::Expired);
        // Written by a parallel process a moment after this one read the clock: fresh.
        assert_eq!(freshness(100, 5, 10, 10), Freshness::Fresh);
        // Written far "in the future" (a clock jumped): refresh.
        assert_eq!(freshness(CONCURRENT_WRITE_MICROS + 10, 5, 10, 10), Freshness::Stale);
    }
}
