//! Class: time. Freshness rests only on signed time (a commit's rev) or this node's clock, and
//! what a node knows never moves backwards. Attacks: a bundle from the future, a freeze (an old
//! proof re-labelled as just fetched), a rollback (an old bundle replayed after a revocation),
//! and a rotated-out key brought back by an older audit log.

use atproto_sig_core::crypto::{Curve, PrivateKey};
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, TestRepo, digest_of, signed_plc_op};

use crate::node::{DAY, Node, did_bundle, did_entry, now_micros, record_bundle};

/// A repository with one signed image, committed `age` ago.
fn signed(seed: &str, age: i64) -> (TestRepo, String, String) {
    let mut repo = TestRepo::new(Identity::new(Curve::K256, seed));
    repo.now_micros = now_micros() - age;
    let digest = digest_of(seed);
    let rkey = repo.put_manifest(&digest, "app");
    repo.put_filler(40);
    (repo, digest, rkey)
}

#[test]
fn a_bundle_from_the_future_is_refused() {
    let (repo, digest, rkey) = signed("future", DAY);
    let node = Node::offline(&repo.identity.did, "");
    let out = node.import(&record_bundle(&repo, &rkey, Some(&digest), now_micros() + 365 * DAY));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("later than this node's clock"), "{out}");
    assert!(out.stdout.contains("imported 0 entries"), "{out}");
    let pull = node.pull("app", &digest);
    assert_ne!(pull.code, Some(0), "{pull}");
}

#[test]
fn a_frozen_proof_is_aged_by_its_signed_commit_not_its_claimed_fetch_time() {
    // Committed 30 days ago; the bundle claims it was fetched just now.
    let (repo, digest, rkey) = signed("frozen", 30 * DAY);
    let node = Node::offline(&repo.identity.did, "max_proof_age = \"1d\"\n");
    let out = node.import(&record_bundle(&repo, &rkey, Some(&digest), now_micros()));
    assert_eq!(out.code, Some(0), "{out}");
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "proof-too-old"), "{pull}");
    assert!(pull.stdout.contains("committed") && pull.stdout.contains("signed rev"), "{pull}");

    // The same proof within max_proof_age admits, and says what it rests on.
    let node = Node::offline(&repo.identity.did, "max_proof_age = \"60d\"\n");
    assert_eq!(node.import(&record_bundle(&repo, &rkey, Some(&digest), now_micros())).code, Some(0));
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{pull}");
    assert!(pull.stdout.contains("offline, from a cached proof committed"), "{pull}");
}

#[test]
fn an_old_bundle_cannot_undo_a_revocation() {
    let (mut repo, digest, rkey) = signed("rollback", 2 * DAY);
    let old = record_bundle(&repo, &rkey, Some(&digest), now_micros() - 2 * DAY);
    // The record is deleted a day later; the genuine bundle after that proves it is gone.
    repo.now_micros = now_micros() - DAY;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    let mut genuine = record_bundle(&repo, &rkey, None, now_micros() - DAY);
    genuine["locators"] = serde_json::json!([]);

    let node = Node::offline(&repo.identity.did, "");
    assert_eq!(node.import(&old).code, Some(0));
    assert_eq!(node.pull("app", &digest).code, Some(0), "admitted before the deletion is known");
    let out = node.import(&genuine);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("stored: proof"), "{out}");
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "{pull}");

    // The attacker replays the old bundle, its fetchedAt set to now: refused, and the image
    // stays revoked.
    let mut replay = old.clone();
    for section in ["dids", "proofs", "locators"] {
        for entry in replay[section].as_array_mut().unwrap() {
            entry["fetchedAt"] = serde_json::json!(now_micros());
        }
    }
    let out = node.import(&replay);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("older than what this node already holds"), "{out}");
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "{pull}");
}

#[test]
fn a_replayed_bundle_does_not_outrank_a_later_genuine_one() {
    let (mut repo, digest, rkey) = signed("outrank", 2 * DAY);
    // Taken before the deletion, its fetchedAt forged to "now": it must not look newer than
    // the genuine bundle made after the deletion.
    let forged = record_bundle(&repo, &rkey, Some(&digest), now_micros());
    repo.now_micros = now_micros() - DAY;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    let genuine = did_bundle(&repo, now_micros() - DAY);
    let node = Node::offline(&repo.identity.did, "");
    assert_eq!(node.import(&forged).code, Some(0));
    let out = node.import(&genuine);
    assert_eq!(out.code, Some(0), "{out}");
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "{pull}");
}

#[test]
fn a_did_bundle_revokes_every_record_that_is_gone() {
    let (mut repo, digest, rkey) = signed("didbundle", 3 * DAY);
    let other = digest_of("didbundle-other");
    let other_rkey = repo.put_manifest(&other, "app");
    let node = Node::offline(&repo.identity.did, "");
    // Both images admitted from a DID bundle.
    let first = did_bundle(&repo, now_micros() - 3 * DAY);
    let out = node.import(&first);
    assert_eq!(out.code, Some(0), "{out}");
    let mut with_locators = record_bundle(&repo, &rkey, Some(&digest), now_micros() - 3 * DAY);
    with_locators["proofs"].as_array_mut().unwrap().push(serde_json::json!({"did": repo.identity.did, "collection": MANIFEST_COLLECTION, "rkey": other_rkey, "fetchedAt": now_micros() - 3 * DAY, "source": "test", "car": base64_proof(&repo, &other_rkey)}));
    with_locators["locators"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"did": repo.identity.did, "digest": other, "rkey": other_rkey, "fetchedAt": now_micros() - 3 * DAY}));
    assert_eq!(node.import(&with_locators).code, Some(0));
    assert_eq!(node.pull("app", &digest).code, Some(0));
    assert_eq!(node.pull("app", &other).code, Some(0));

    // One record is deleted; the next DID bundle names no record, yet revokes it.
    repo.now_micros = now_micros() - DAY;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    let out = node.import(&did_bundle(&repo, now_micros() - DAY));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains(&format!("revoked at://{}/{MANIFEST_COLLECTION}/{rkey}", repo.identity.did)), "{out}");
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-deleted"), "{pull}");
    let pull = node.pull("app", &other);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "the record still present stays admitted: {pull}");
}

fn base64_proof(repo: &TestRepo, rkey: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(repo.proof(MANIFEST_COLLECTION, rkey))
}

#[test]
fn an_older_audit_log_cannot_bring_back_a_rotated_out_key() {
    let identity = Identity::new(Curve::K256, "rotated");
    // The DID rotates its signing key (the old one may be compromised).
    let new_key = PrivateKey::from_seed(Curve::K256, "rotated/new-signing");
    let genesis_log: serde_json::Value = serde_json::from_str(&identity.audit_log()).unwrap();
    let prev = genesis_log[0]["cid"].as_str().unwrap().to_owned();
    let mut op = identity.genesis.clone();
    op.as_object_mut().unwrap().remove("sig");
    op["verificationMethods"]["atproto"] = serde_json::json!(new_key.public_key().to_did_key());
    op["prev"] = serde_json::json!(prev);
    let op = signed_plc_op(&identity.rotation, op);
    let cid = atproto_sig_core::cid::Cid::for_dag_cbor(&atproto_sig_core::cbor::encode(&atproto_sig_core::cbor::from_json(&op, 16).unwrap())).to_string();
    let mut rotated_log = genesis_log.clone();
    rotated_log
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"did": identity.did, "operation": op, "cid": cid, "nullified": false, "createdAt": "2026-06-01T00:00:00.000Z"}));
    let rotated_doc =
        atproto_sig_core::did::render_multikey_document(&identity.did, &new_key.public_key(), Some(&identity.handle), Some(&identity.pds)).to_string();

    let bundle = |entry: serde_json::Value| serde_json::json!({"format": "atproto-verifier-bundle", "version": 2, "createdAt": "2026-01-01T00:00:00Z", "dids": [entry], "locators": [], "proofs": []});
    let node = Node::offline(&identity.did, "");
    let out = node.import(&bundle(did_entry(&identity, &rotated_doc, &rotated_log.to_string(), now_micros() - DAY)));
    assert_eq!(out.code, Some(0), "{out}");
    let out = node.import(&bundle(did_entry(&identity, &identity.did_document_multikey(), &identity.audit_log(), now_micros())));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("older than what this node already holds"), "{out}");
    // Importing the same log again changes nothing and is said so.
    let out = node.import(&bundle(did_entry(&identity, &rotated_doc, &rotated_log.to_string(), now_micros())));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("imported 0 entries, 1 unchanged"), "{out}");
}
