//! Class: identity history. did:plc history can only be extended, never forked; a recovery
//! (a log nullifying held operations) is taken only from the PLC directory or by the
//! operator's word, since its 72-hour window rests on unsigned `createdAt` dates; a did:web key
//! (no history to check) is replaced from a bundle only when the operator says so. Attacks: a
//! bundle carrying a log that diverges from the held one, signed by a rotation key the owner
//! already removed (an operation the directory refused), to swap in the attacker's signing
//! key; the same, backdated into the recovery window.

use atproto_sig_core::crypto::{Curve, PrivateKey};
use atproto_sig_core::did::render_multikey_document;
use atproto_sig_core::testkit::{Identity, plc_log_entry, signed_plc_op};
use serde_json::{Value as Json, json};

use crate::node::{DAY, Node, did_entry, now_micros};

/// An operation after `prev` (a log entry) setting the signing key (and, if given, the
/// rotation keys), signed by `signer`.
fn op_after(identity: &Identity, prev: &Json, signing: &PrivateKey, rotation_keys: Option<Vec<String>>, signer: &PrivateKey) -> Json {
    let mut op = prev["operation"].clone();
    op.as_object_mut().unwrap().remove("sig");
    op["verificationMethods"]["atproto"] = json!(signing.public_key().to_did_key());
    if let Some(keys) = rotation_keys {
        op["rotationKeys"] = json!(keys);
    }
    op["prev"] = prev["cid"].clone();
    let _ = identity;
    signed_plc_op(signer, op)
}

fn bundle_of(entry: Json) -> Json {
    json!({"format": "atproto-verifier-bundle", "version": 2, "createdAt": "2026-01-01T00:00:00Z", "dids": [entry], "locators": [], "proofs": []})
}

fn doc(identity: &Identity, key: &PrivateKey) -> String {
    render_multikey_document(&identity.did, &key.public_key(), Some(&identity.handle), Some(&identity.pds)).to_string()
}

#[test]
fn a_forked_plc_log_signed_by_a_removed_rotation_key_is_refused() {
    let (identity, recovery) = Identity::with_recovery_key(Curve::K256, "forked");
    let genesis = plc_log_entry(&identity.did, &identity.genesis, now_micros() - 10 * DAY, false);
    // The owner rotates: a new signing key, and the old rotation key removed (it leaked).
    let owners = PrivateKey::from_seed(Curve::K256, "forked/owners-new-signing");
    let rotated = op_after(&identity, &genesis, &owners, Some(vec![recovery.public_key().to_did_key()]), &identity.rotation);
    let rotated = plc_log_entry(&identity.did, &rotated, now_micros() - 5 * DAY, false);
    let held_log = json!([genesis, rotated]).to_string();
    let node = Node::offline(&identity.did, "");
    assert_eq!(node.import(&bundle_of(did_entry(&identity, &doc(&identity, &owners), &held_log, now_micros() - DAY))).code, Some(0));

    // The attacker still holds the removed rotation key and signs a fork after genesis.
    let attackers = PrivateKey::from_seed(Curve::K256, "forked/attacker");
    let fork = op_after(&identity, &genesis, &attackers, None, &identity.rotation);
    let fork = plc_log_entry(&identity.did, &fork, now_micros() - DAY, false);
    let forked_log = json!([genesis, fork]).to_string();
    let attack = bundle_of(did_entry(&identity, &doc(&identity, &attackers), &forked_log, now_micros()));
    let out = node.import(&attack);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains(&format!("nullifies operation {}", rotated["cid"].as_str().unwrap())), "the refusal names the held operation: {out}");
    // Even with the operator's word it is no valid recovery (the removed key ranks below nothing).
    let path = node.dir.path().join("attack.bundle");
    std::fs::write(&path, serde_json::to_vec(&attack).unwrap()).unwrap();
    let out = node.run(&["bundle", "import", "--accept-plc-recovery", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("forks from the one this node holds at operation"), "{out}");
    assert!(out.stdout.contains(fork["cid"].as_str().unwrap()), "the refusal names the diverging operation: {out}");
    let cached = cache_text(&node);
    assert!(!cached.contains(&multikey(&attackers)), "the attacker's key never entered the cache");
    assert!(cached.contains(&multikey(&owners)), "the owner's document is still the one held");
}

#[test]
fn a_valid_nullification_is_taken_from_a_bundle_only_by_the_operators_word() {
    let (identity, recovery) = Identity::with_recovery_key(Curve::K256, "recovered");
    let genesis = plc_log_entry(&identity.did, &identity.genesis, now_micros() - 10 * DAY, false);
    // The lower-priority rotation key (compromised) swaps the signing key...
    let stolen = PrivateKey::from_seed(Curve::K256, "recovered/stolen");
    let theft = op_after(&identity, &genesis, &stolen, None, &identity.rotation);
    let theft = plc_log_entry(&identity.did, &theft, now_micros() - 2 * DAY, false);
    let node = Node::offline(&identity.did, "");
    let held_log = json!([genesis, theft]).to_string();
    assert_eq!(node.import(&bundle_of(did_entry(&identity, &doc(&identity, &stolen), &held_log, now_micros() - DAY))).code, Some(0));
    // ...and within 72 hours the owner's recovery key nullifies it.
    let owners = PrivateKey::from_seed(Curve::K256, "recovered/owners");
    let recovery_op = op_after(&identity, &genesis, &owners, None, &recovery);
    let recovery_op = plc_log_entry(&identity.did, &recovery_op, now_micros() - 2 * DAY + 3_600_000_000, false);
    let recovered = bundle_of(did_entry(&identity, &doc(&identity, &owners), &json!([genesis, recovery_op]).to_string(), now_micros()));
    // A bundle alone cannot vouch for createdAt: refused, naming the held operation it nullifies.
    let out = node.import(&recovered);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains(&format!("nullifies operation {}", theft["cid"].as_str().unwrap())) && out.stdout.contains("--accept-plc-recovery"), "{out}");
    assert!(cache_text(&node).contains(&multikey(&stolen)), "the held document is unchanged");
    // The operator's word: accepted, and said in the summary.
    let path = node.dir.path().join("recovered.bundle");
    std::fs::write(&path, serde_json::to_vec(&recovered).unwrap()).unwrap();
    let out = node.run(&["bundle", "import", "--accept-plc-recovery", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("a did:plc recovery (allowed by --accept-plc-recovery)"), "said in the summary: {out}");
    assert!(cache_text(&node).contains(&multikey(&owners)), "the recovered document is held");

    // The same recovery signed by the same low-priority key is no nullification: refused even so.
    let node = Node::offline(&identity.did, "");
    assert_eq!(node.import(&bundle_of(did_entry(&identity, &doc(&identity, &stolen), &held_log, now_micros() - DAY))).code, Some(0));
    let not_higher = op_after(&identity, &genesis, &owners, None, &identity.rotation);
    let not_higher = plc_log_entry(&identity.did, &not_higher, now_micros() - 2 * DAY + 3_600_000_000, false);
    let path = node.dir.path().join("not-higher.bundle");
    std::fs::write(
        &path,
        serde_json::to_vec(&bundle_of(did_entry(&identity, &doc(&identity, &owners), &json!([genesis, not_higher]).to_string(), now_micros()))).unwrap(),
    )
    .unwrap();
    let out = node.run(&["bundle", "import", "--accept-plc-recovery", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("higher-priority rotation key"), "{out}");
}

/// The attack the directory refuses (LateRecoveryError): a rotation key the owner removed days
/// ago signs a nullification of the owner's operation, dated inside the 72-hour window. Its
/// signature is valid and its date a lie no signature covers: a bundle carrying it (as a fork,
/// or as the held log with the owner's operation marked nullified) changes nothing, and
/// `bundle_dir` never takes it.
#[test]
fn a_backdated_nullification_by_a_removed_rotation_key_is_refused_offline() {
    let (identity, recovery) = Identity::with_recovery_key(Curve::K256, "backdated");
    let genesis = plc_log_entry(&identity.did, &identity.genesis, now_micros() - 30 * DAY, false);
    // Five days ago the owner removed the recovery key (it leaked), with the other rotation key.
    let owners = PrivateKey::from_seed(Curve::K256, "backdated/owners");
    let removal = op_after(&identity, &genesis, &owners, Some(vec![identity.rotation.public_key().to_did_key()]), &identity.rotation);
    let removal = plc_log_entry(&identity.did, &removal, now_micros() - 5 * DAY, false);
    let held_log = json!([genesis, removal]).to_string();
    // The attacker, with the removed key, nullifies the removal and dates it an hour after it.
    let attackers = PrivateKey::from_seed(Curve::K256, "backdated/attacker");
    let forged = op_after(&identity, &genesis, &attackers, None, &recovery);
    let forged = plc_log_entry(&identity.did, &forged, now_micros() - 5 * DAY + 3_600_000_000, false);
    let mut marked = removal.clone();
    marked["nullified"] = json!(true);
    for log in [json!([genesis, forged]), json!([genesis, marked, forged])] {
        let node = Node::offline(&identity.did, "");
        assert_eq!(node.import(&bundle_of(did_entry(&identity, &doc(&identity, &owners), &held_log, now_micros() - DAY))).code, Some(0));
        let out = node.import(&bundle_of(did_entry(&identity, &doc(&identity, &attackers), &log.to_string(), now_micros())));
        assert_eq!(out.code, Some(1), "{out}");
        assert!(out.stdout.contains(&format!("nullifies operation {}", removal["cid"].as_str().unwrap())), "{out}");
        let cached = cache_text(&node);
        assert!(!cached.contains(&multikey(&attackers)) && cached.contains(&multikey(&owners)), "the attacker's key entered the cache");
    }
    // bundle_dir: never, whatever the bundle says.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::offline(&identity.did, &format!("bundle_dir = {:?}\n", dir.path()));
    assert_eq!(node.import(&bundle_of(did_entry(&identity, &doc(&identity, &owners), &held_log, now_micros() - DAY))).code, Some(0));
    let attack = bundle_of(did_entry(&identity, &doc(&identity, &attackers), &json!([genesis, forged]).to_string(), now_micros()));
    std::fs::write(dir.path().join("attack.bundle"), serde_json::to_vec(&attack).unwrap()).unwrap();
    let refresh = node.run(&["cache", "refresh"]);
    assert!(refresh.stdout.contains("nullifies operation") || refresh.stderr.contains("nullifies operation"), "{refresh}");
    assert!(!cache_text(&node).contains(&multikey(&attackers)));
}

/// Every file of the node's cache, as text.
fn cache_text(node: &Node) -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    walk(&node.dir.path().join("cache"), &mut out);
    out
}

/// The key as a DID document names it (`publicKeyMultibase`).
fn multikey(key: &PrivateKey) -> String {
    key.public_key().to_multikey()
}

/// A did:web bundle entry (no audit log: did:web has no history).
fn web_entry(did: &str, key: &PrivateKey) -> Json {
    let document = render_multikey_document(did, &key.public_key(), None, Some("https://pds.example.com")).to_string();
    json!({"did": did, "fetchedAt": now_micros(), "source": "test", "document": document})
}

#[test]
fn a_did_web_key_is_replaced_from_a_bundle_only_when_the_operator_says_so() {
    let did = "did:web:signer.example.com";
    let (first, second) = (PrivateKey::from_seed(Curve::K256, "web/first"), PrivateKey::from_seed(Curve::K256, "web/second"));
    let node = Node::offline(did, "");
    assert_eq!(node.import(&bundle_of(web_entry(did, &first))).code, Some(0));
    let path = node.dir.path().join("second.bundle");
    std::fs::write(&path, serde_json::to_vec(&bundle_of(web_entry(did, &second))).unwrap()).unwrap();
    let out = node.run(&["bundle", "import", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("--allow-did-web-key-change"), "{out}");
    let out = node.run(&["bundle", "import", "--allow-did-web-key-change", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("replaces the one this node held"), "said in the summary: {out}");

    // bundle_dir never replaces it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("first.bundle"), serde_json::to_vec(&bundle_of(web_entry(did, &first))).unwrap()).unwrap();
    let node = Node::offline(did, &format!("bundle_dir = {:?}\n", dir.path()));
    assert_eq!(node.import(&bundle_of(web_entry(did, &second))).code, Some(0));
    let refresh = node.run(&["cache", "refresh"]);
    assert!(refresh.stdout.contains("--allow-did-web-key-change"), "{refresh}");
}
