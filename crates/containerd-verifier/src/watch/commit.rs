//! A firehose `#commit` of a watched DID: acted on only when it proves itself under the key
//! this node holds for the DID (`commit_proof::prove_commit`: signature, signed rev, record
//! state under the new root, ops inverted to `prevData`); then the frame's own blocks make the
//! proof stored for each cached record it deleted or changed. No network here (the socket
//! is never held up): a frame that does not prove itself, or a DID whose key this node does
//! not hold, becomes a queued signed re-check.

use atproto_sig_core::Limits;
use atproto_sig_core::commit_proof::{prove_commit, record_proof};
use atproto_sig_core::did::DidDocument;
use atproto_sig_core::firehose::CommitEvent;
use atproto_sig_core::record::MANIFEST_COLLECTION;

use super::Watcher;
use super::queue::{Depth, Job};
use crate::material::knowledge::{OfferedProof, accept_proof, document_of};
use crate::material::store::{Cache, DidEntry, Kind, ProofEntry};

const PREFIX: &str = "io.atcr.manifest/";

/// The DID document this node holds for `did`, read as the engine reads it (from the audit
/// log under `strict_plc`).
pub(super) fn held_document(watcher: &Watcher, cache: &Cache, did: &str) -> Option<DidDocument> {
    let entry = cache.read::<DidEntry>(Kind::Did, &[did])?;
    let strict = watcher.config.strict_plc && did.starts_with("did:plc:");
    document_of(&entry, strict, &Limits::default()).ok()
}

/// Handles one `#commit` from `source`.
pub(super) fn handle(watcher: &Watcher, event: &CommitEvent, source: &str) -> &'static str {
    let rkeys: Vec<String> = event.ops.iter().filter_map(|op| op.path.strip_prefix(PREFIX)).map(str::to_owned).collect();
    if rkeys.is_empty() {
        return "ignored";
    }
    // The publisher republishes on every change to the collection (what it publishes is
    // fetched and signed anew, whatever this frame proves).
    watcher.republish(&event.repo);
    let recheck = |why: &'static str| watcher.queue.push(Job::new(&event.repo, Depth::Records, why).records(rkeys.clone()).at(source, Some(event.seq)));
    let cache = watcher.cache();
    let Some(document) = held_document(watcher, &cache, &event.repo) else {
        recheck("no-key-held");
        return "hint";
    };
    let Ok(key) = &document.signing_key else {
        recheck("no-key-held");
        return "hint";
    };
    let proven = match prove_commit(event, key, &Limits::repository()) {
        Ok(proven) => proven,
        Err(e) => {
            crate::log::info(&format!("watch: a #commit of {} (seq {}) does not prove itself ({e}): re-checking from its PDS", event.repo, event.seq));
            recheck("unproven-commit");
            return "unproven";
        }
    };
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let mut changed = false;
    for (path, now_cid) in &proven.records {
        let Some(rkey) = path.strip_prefix(PREFIX) else { continue };
        if cache.read::<ProofEntry>(Kind::Proof, &[&event.repo, MANIFEST_COLLECTION, rkey]).is_none() {
            continue;
        }
        let car = match record_proof(event, path, &Limits::repository()) {
            Ok(car) => car,
            Err(e) => {
                crate::log::info(&format!("watch: {path}: {e}: re-checking"));
                watcher.queue.push(Job::new(&event.repo, Depth::Records, "no-proof-in-frame").records([rkey.to_owned()]).at(source, Some(event.seq)));
                continue;
            }
        };
        let offered = OfferedProof {
            document: &document,
            collection: MANIFEST_COLLECTION,
            rkey,
            car: &car,
            digest: None,
            source: format!("firehose {source} seq {}", event.seq),
            fetched_at: now,
            // A stream may replay old events: its word, capped by the commit's signed time.
            fetched_by: crate::material::knowledge::FetchedBy::Claim,
            now,
            clock_skew_micros: watcher.config.clock_skew.micros(),
        };
        match accept_proof(&cache, &offered) {
            Ok(accepted) if accepted.changed => {
                changed = true;
                if now_cid.is_none() {
                    watcher.health.revoked("proven-by-event");
                    crate::log::info(&format!(
                        "watch: at://{}/{path} revoked (the record is deleted) at rev {}, proven by the #commit itself",
                        event.repo, proven.rev
                    ));
                } else {
                    watcher.health.changed();
                    crate::log::info(&format!("watch: at://{}/{path} changed at rev {}, proven by the #commit itself", event.repo, proven.rev));
                }
            }
            Ok(_) => {}
            Err(refusal) => crate::log::info(&format!("watch: at://{}/{path}: the frame's proof is not stored: {refusal}", event.repo)),
        }
    }
    if changed {
        watcher.changed(&event.repo);
    }
    "proven"
}
