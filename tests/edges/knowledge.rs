//! Class: what a node knows. The newest signed state of each repository decides, whatever
//! order material arrives in; an unsigned claim never outranks a verified proof. Attacks (and
//! ordinary mirrors, with no attacker at all): a revoked image brought back by an older bundle
//! imported after the signed state that revokes it, by the file-name order of `bundle_dir`,
//! by a forged newer rev, or by a proof refused as `rev-in-future` kept to block genuine ones.

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, Tamper, TestRepo, digest_of};
use base64::Engine;

use crate::node::{DAY, Node, did_bundle, now_micros, record_bundle};

/// A repository with one signed image committed `age` ago, the record bundle of that moment,
/// and the DID bundle (signed collection state) of a day later, after the record was deleted.
fn revoked(seed: &str) -> (TestRepo, String, serde_json::Value, serde_json::Value) {
    let mut repo = TestRepo::new(Identity::new(Curve::K256, seed));
    repo.now_micros = now_micros() - 3 * DAY;
    let digest = digest_of(seed);
    let rkey = repo.put_manifest(&digest, "app");
    repo.put_filler(30);
    let old = record_bundle(&repo, &rkey, Some(&digest), now_micros() - 3 * DAY);
    repo.now_micros = now_micros() - DAY;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    let state = did_bundle(&repo, now_micros() - DAY);
    (repo, digest, old, state)
}

#[test]
fn the_newest_signed_state_revokes_in_either_order() {
    let (repo, digest, old, state) = revoked("order");
    for (name, first, second) in [("state, then the old bundle", &state, &old), ("the old bundle, then the state", &old, &state)] {
        let node = Node::offline(&repo.identity.did, "");
        for bundle in [first, second] {
            let out = node.import(bundle);
            assert_eq!(out.code, Some(0), "{name}: {out}");
        }
        let pull = node.pull("app", &digest);
        assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "{name}: {pull}");
        assert!(pull.stdout.contains("gone from the signed state") || pull.stdout.contains("proves it is gone"), "{name}: {pull}");
    }
    // A fresh node that only ever saw the old bundle admits: it cannot know of the deletion
    // (max_proof_age bounds how long).
    let node = Node::offline(&repo.identity.did, "");
    assert_eq!(node.import(&old).code, Some(0));
    assert_eq!(node.pull("app", &digest).code, Some(0));
}

#[test]
fn bundle_dir_gives_the_same_answer_whatever_the_file_names() {
    let (repo, digest, old, state) = revoked("bundle-dir");
    for (newest_first, oldest_last) in [("a-state.bundle", "z-old.bundle"), ("z-state.bundle", "a-old.bundle")] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(newest_first), serde_json::to_vec(&state).unwrap()).unwrap();
        std::fs::write(dir.path().join(oldest_last), serde_json::to_vec(&old).unwrap()).unwrap();
        let node = Node::offline(&repo.identity.did, &format!("bundle_dir = {:?}\n", dir.path()));
        let refresh = node.run(&["cache", "refresh"]);
        assert_eq!(refresh.code, Some(0), "{newest_first}/{oldest_last}: {refresh}");
        let pull = node.pull("app", &digest);
        assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "{newest_first}/{oldest_last}: {pull}");
    }
}

#[test]
fn an_older_signed_state_never_replaces_a_newer_one() {
    let mut repo = TestRepo::new(Identity::new(Curve::K256, "older-state"));
    repo.now_micros = now_micros() - 3 * DAY;
    let digest = digest_of("older-state");
    let rkey = repo.put_manifest(&digest, "app");
    let present = did_bundle(&repo, now_micros() - 3 * DAY);
    let old = record_bundle(&repo, &rkey, Some(&digest), now_micros() - 3 * DAY);
    repo.now_micros = now_micros() - DAY;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    let gone = did_bundle(&repo, now_micros() - DAY);
    let node = Node::offline(&repo.identity.did, "");
    assert_eq!(node.import(&gone).code, Some(0));
    let out = node.import(&present);
    assert_eq!(out.code, Some(1), "an older state is refused: {out}");
    assert!(out.stdout.contains("older than the one this node already holds"), "{out}");
    node.import(&old);
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "{pull}");
}

/// A bundle whose one proof is `tamper`ed, made otherwise as [`record_bundle`].
fn tampered_bundle(repo: &TestRepo, rkey: &str, digest: &str, tamper: &Tamper) -> serde_json::Value {
    let mut bundle = record_bundle(repo, rkey, Some(digest), now_micros() - DAY);
    bundle["proofs"][0]["car"] = base64::engine::general_purpose::STANDARD.encode(repo.proof_with(MANIFEST_COLLECTION, rkey, tamper)).into();
    bundle
}

#[test]
fn unsigned_or_future_claims_are_never_stored_and_never_outrank_a_genuine_proof() {
    // Committed a minute ago: a rev an hour after that is in this node's future.
    let mut repo = TestRepo::new(Identity::new(Curve::K256, "forged-rev"));
    repo.now_micros = now_micros() - 60_000_000;
    let digest = digest_of("forged-rev");
    let rkey = repo.put_manifest(&digest, "app");
    for (name, tamper) in [("a forged newer rev (unsigned)", Tamper::ForgedRev), ("a signed rev in the future", Tamper::FutureRev)] {
        let node = Node::offline(&repo.identity.did, "");
        // The claim first: refused, nothing stored.
        let out = node.import(&tampered_bundle(&repo, &rkey, &digest, &tamper));
        assert_eq!(out.code, Some(1), "{name}: {out}");
        // The genuine proof after it imports and admits: the refused claim left no trace.
        let out = node.import(&record_bundle(&repo, &rkey, Some(&digest), now_micros() - DAY));
        assert_eq!(out.code, Some(0), "{name}: {out}");
        let pull = node.pull("app", &digest);
        assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{name}: {pull}");
        // And after it, the claim still cannot block.
        node.import(&tampered_bundle(&repo, &rkey, &digest, &tamper));
        let pull = node.pull("app", &digest);
        assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{name}: {pull}");
    }
}
