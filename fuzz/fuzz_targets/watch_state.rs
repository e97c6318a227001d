#![no_main]
//! What the watcher and the state store read that nobody signs: a Jetstream message (its DID
//! and the position it may move the cursor to: never past the clock bound, never for a DID not
//! watched), and the cache's collection-state entries (a repository entry naming shards, and a
//! shard) read back for the check on use. Never a panic, never a position past the bound.
use std::collections::BTreeSet;

use containerd_verifier::material::knowledge;
use containerd_verifier::material::store::{Cache, Kind, RepoEntry, StateShard};
use containerd_verifier::testkit::jetstream_event_position;
use libfuzzer_sys::fuzz_target;

const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let watched: BTreeSet<String> = [DID.to_owned()].into();
        if let Some((did, at)) = jetstream_event_position(text, &watched, 1_000_000) {
            assert!(at.is_none_or(|t| t <= 1_000_000 && t > 0 && did == DID));
        }
    }
    // The bytes as a repository entry, and as the shard it may name.
    let (Ok(repo), shard) = (serde_json::from_slice::<RepoEntry>(data), serde_json::from_slice::<StateShard>(data)) else { return };
    let Ok(dir) = tempfile::tempdir() else { return };
    let cache = Cache::new(dir.path());
    let repo = RepoEntry { did: DID.to_owned(), ..repo };
    cache.write(Kind::Repo, &[DID], &repo);
    if let (Ok(shard), Some(state)) = (shard, repo.state.as_ref()) {
        cache.write(Kind::StateShard, &[DID, &state.rev, &shard.shard.to_string()], &shard);
    }
    for rkey in ["3kaaaaaaaaaaa", "", "self"] {
        let _ = knowledge::superseded(&cache, DID, rkey, "2aaaaaaaaaaaa", None);
    }
});
