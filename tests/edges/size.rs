//! Class: size of state. No size of a signed collection state escapes revocation: a state far
//! over one cache entry (the old 8 MiB limit held about 65,000 records) is stored in shards and
//! revokes what it lacks; a state that is verified but cannot be stored at all still revokes
//! every record the node holds, record by record, from the verified commit.

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, TestRepo, digest_of};

use crate::node::{DAY, Node, did_bundle, now_micros, record_bundle};

/// A repository of `n` images committed a day ago; the node holds the proof of the first.
fn held(seed: &str, n: usize) -> (TestRepo, Node, String, String) {
    let mut repo = TestRepo::new(Identity::new(Curve::K256, seed));
    repo.now_micros = now_micros() - 2 * DAY;
    let digest = digest_of(seed);
    let rkey = repo.put_manifest(&digest, "app");
    for i in 1..n {
        repo.put_manifest(&digest_of(&format!("{seed}-{i}")), "app");
    }
    let node = Node::offline(&repo.identity.did, "");
    let out = node.import(&record_bundle(&repo, &rkey, Some(&digest), now_micros() - 2 * DAY));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(node.pull("app", &digest).code, Some(0));
    (repo, node, digest, rkey)
}

#[test]
fn a_state_of_seventy_thousand_records_is_stored_in_shards_and_revokes() {
    let (mut repo, node, digest, rkey) = held("size-big", 70_000);
    repo.now_micros = now_micros() - DAY;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    let out = node.import(&did_bundle(&repo, now_micros() - DAY));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("69999 records"), "{out}");
    let shards = std::fs::read_dir(node.dir.path().join("cache/v1/state")).map(|d| d.count()).unwrap_or(0);
    assert!(shards >= 68, "{shards} shard files");
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "{pull}");
}

#[test]
fn a_state_that_cannot_be_stored_still_revokes_what_the_node_holds() {
    let (mut repo, node, digest, rkey) = held("size-unstorable", 1_500);
    repo.now_micros = now_micros() - DAY;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    // Where the state's shards go, a file: the state cannot be written.
    std::fs::write(node.dir.path().join("cache/v1/state"), "in the way").unwrap();
    let out = node.import(&did_bundle(&repo, now_micros() - DAY));
    assert_eq!(out.code, Some(1), "the refusal is said: {out}");
    assert!(out.stdout.contains("could not be written") && out.stdout.contains("still checked against it"), "{out}");
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "the held record is revoked all the same: {pull}");
}
