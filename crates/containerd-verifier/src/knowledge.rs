//! What this node knows never moves backwards, and never looks fresher than it is.
//!
//! Freshness rests only on time that is signed (a commit's `rev`) or that this node measured
//! itself (its own clock at fetch or import). A `fetchedAt` inside a bundle is a claim by
//! whoever made the bundle: it can make an entry look older, never newer.

use atproto_sig_core::Limits;
use atproto_sig_core::car::Car;
use atproto_sig_core::commit::Commit;
use atproto_sig_core::syntax::tid_timestamp_micros;
use base64::Engine;

use crate::cache::{Cache, Kind, ProofEntry};

/// The signed commit rev of a proof CAR and its time in microseconds. Meaningful only for a
/// proof whose signature was (or will be) checked: the rev is covered by it.
pub fn commit_rev(car: &[u8]) -> Option<(String, i64)> {
    let limits = Limits::collection();
    let parsed = Car::parse(car, &limits).ok()?;
    let commit = Commit::decode(parsed.block(&parsed.root)?, &limits).ok()?;
    let rev = commit.rev?;
    let micros = tid_timestamp_micros(&rev).and_then(|t| i64::try_from(t).ok())?;
    Some((rev, micros))
}

/// The signed rev of a proof CAR whose commit signature verifies under `key`; `None` when it
/// does not (such a proof is never stored, so a forged rev can never block a genuine proof).
pub fn authentic_rev(car: &[u8], key: &atproto_sig_core::crypto::PublicKey) -> Option<(String, i64)> {
    let limits = Limits::collection();
    let parsed = Car::parse(car, &limits).ok()?;
    let commit = Commit::decode(parsed.block(&parsed.root)?, &limits).ok()?;
    commit.verify_signature(key).ok()?;
    let rev = commit.rev?;
    let micros = tid_timestamp_micros(&rev).and_then(|t| i64::try_from(t).ok())?;
    Some((rev, micros))
}

/// The rev of a cached proof entry, if its CAR is readable.
pub fn entry_rev(entry: &ProofEntry) -> Option<(String, i64)> {
    base64::engine::general_purpose::STANDARD.decode(&entry.car).ok().as_deref().and_then(commit_rev)
}

/// The rev of the proof this node holds for `did`/`collection`/`rkey` when it is newer than
/// `rev` (TIDs sort in time order): a proof at `rev` would be a rollback.
pub fn newer_held(cache: &Cache, did: &str, collection: &str, rkey: &str, rev: &str) -> Option<String> {
    let held: ProofEntry = cache.read(Kind::Proof, &[did, collection, rkey])?;
    entry_rev(&held).map(|(r, _)| r).filter(|held| held.as_str() > rev)
}

/// The message for a refused rollback.
pub fn rollback_message(what: &str, rev: &str, held: &str) -> String {
    format!(
        "{what} is at commit rev {rev}, older than what this node already holds (rev {held}) — refusing to move backwards (a replayed old proof could undo a revocation)"
    )
}

/// The time to store for material fetched at `claimed` (someone else's word), imported at
/// `now` (this node's clock), whose content was signed at `signed` (if known): never later
/// than any of them, so it can only look older than it is.
pub fn stored_fetch_time(claimed: i64, now: i64, signed: Option<i64>) -> i64 {
    claimed.min(now).min(signed.unwrap_or(i64::MAX))
}

/// The operation CIDs of a did:plc audit log (in order), if it is a JSON array of entries.
fn operation_cids(log: &str) -> Option<Vec<String>> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(log).ok()?;
    entries.iter().map(|e| e.get("cid").and_then(serde_json::Value::as_str).map(str::to_owned)).collect()
}

/// True when `new` is a strict prefix of `held`: an older view of the same DID history.
pub fn is_older_audit_log(new: &str, held: &str) -> bool {
    match (operation_cids(new), operation_cids(held)) {
        (Some(new), Some(held)) => new.len() < held.len() && held.starts_with(&new),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_times_only_move_older() {
        assert_eq!(stored_fetch_time(100, 50, None), 50);
        assert_eq!(stored_fetch_time(10, 50, Some(5)), 5);
        assert_eq!(stored_fetch_time(10, 50, Some(20)), 10);
    }

    #[test]
    fn audit_log_prefixes() {
        let log = |cids: &[&str]| serde_json::to_string(&cids.iter().map(|c| serde_json::json!({"cid": c})).collect::<Vec<_>>()).unwrap();
        assert!(is_older_audit_log(&log(&["a"]), &log(&["a", "b"])));
        assert!(!is_older_audit_log(&log(&["a", "b"]), &log(&["a", "b"])));
        assert!(!is_older_audit_log(&log(&["a", "c"]), &log(&["a", "b", "d"])));
        assert!(!is_older_audit_log(&log(&["a", "b", "c"]), &log(&["a", "b"])));
        assert!(!is_older_audit_log("not json", &log(&["a"])));
    }
}
