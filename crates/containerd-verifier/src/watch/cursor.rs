//! Where each source's stream was left, on disk (the cache's `cursor` entries, written
//! atomically), so a restarted watcher resumes there and misses nothing the source can replay.
//! An entry also names the watched set it covered (a digest): DIDs added since were not
//! followed, so they are re-checked.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::material::store::{Cache, Kind};

/// One source's position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CursorEntry {
    /// The source's address, without the cursor.
    pub source: String,
    /// The last position handled: a firehose `seq`, or Jetstream's `time_us`.
    pub cursor: i64,
    /// Digest of the watched DIDs this position covers.
    pub dids: String,
    /// When this node wrote it (microseconds since the epoch).
    pub updated_at: i64,
}

/// The digest of a watched set.
pub fn dids_digest(dids: &BTreeSet<String>) -> String {
    let mut hasher = Sha256::new();
    for did in dids {
        hasher.update(did.as_bytes());
        hasher.update([0]);
    }
    atproto_sig_core::encoding::hex_encode(&hasher.finalize())
}

/// The stored position of `source`.
pub fn load(cache: &Cache, source: &str) -> Option<CursorEntry> {
    cache.read::<CursorEntry>(Kind::Cursor, &[source]).filter(|e| e.source == source && e.cursor >= 0)
}

/// Stores the position of a source.
pub fn store(cache: &Cache, entry: &CursorEntry) {
    cache.write(Kind::Cursor, &[&entry.source], entry);
}

/// Forgets the position of a source (it reset its sequence).
pub fn forget(cache: &Cache, source: &str) {
    if let Some((path, _)) = cache.all::<CursorEntry>(Kind::Cursor).into_iter().find(|(_, e)| e.source == source) {
        cache.remove_path(&path);
    }
}
