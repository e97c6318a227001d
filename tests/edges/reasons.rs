//! Class: honest reasons. The reason a pull gets is the most specific, actionable one: what the
//! signature covers is judged only after the signature; a failure to look is never "no
//! record"; an identity in the image path that cannot be resolved offline never hides the real
//! cause; a network failure (DNS included) is a network reason.

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, Tamper, TestRepo, digest_of};
use atproto_sig_core::{Expectation, KeySource, Limits, ProofInput, Reason, verify};

use crate::node::{DAY, HOST, Node, now_micros, record_bundle};

#[test]
fn a_tampered_rev_is_a_bad_signature_not_a_clock_problem() {
    let mut repo = TestRepo::new(Identity::new(Curve::P256, "forged-rev"));
    let digest = digest_of("forged-rev");
    let rkey = repo.put_manifest(&digest, "app");
    repo.put_filler(20);
    let car = repo.proof_with(MANIFEST_COLLECTION, &rkey, &Tamper::ForgedRev);
    let key = repo.identity.public_key();
    let verdict = verify(&ProofInput {
        car: &car,
        key: KeySource::Key(&key),
        expect: Expectation { did: &repo.identity.did, rkey: None, digest: Some(&digest), repository: Some("app") },
        now_micros: repo.now_micros,
        max_clock_skew_micros: 0,
        limits: &Limits::default(),
        known_blocks: None,
    });
    assert_eq!(verdict.reason, Reason::SignatureInvalid, "{}", verdict.message);
}

/// An offline node for an ATProto registry on [`HOST`]: the image path names a handle, which
/// cannot be resolved offline. The real cause must be the reason, not the handle.
fn atproto_node(repo: &TestRepo, extra: &str, action: &str) -> Node {
    Node::offline_with_action(&repo.identity.did, &format!("atproto_registries = [\"{HOST}\"]\n{extra}"), action)
}

#[test]
fn offline_the_real_cause_outranks_an_unresolvable_path_identity() {
    let mut repo = TestRepo::new(Identity::new(Curve::K256, "offline-reasons"));
    repo.now_micros = now_micros() - 30 * DAY;
    let digest = digest_of("offline-reasons");
    let rkey = repo.put_manifest(&digest, "app");
    let path = format!("{}/app", repo.identity.handle);

    // Nothing imported: the DID document is what is missing.
    let node = atproto_node(&repo, "", "enforce");
    let pull = node.pull(&path, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "did-unresolved"), "{pull}");

    // The proof is older than max_proof_age.
    let node = atproto_node(&repo, "max_proof_age = \"1d\"\n", "enforce");
    assert_eq!(node.import(&record_bundle(&repo, &rkey, Some(&digest), now_micros())).code, Some(0));
    let pull = node.pull(&path, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "proof-too-old"), "{pull}");

    // No record for this digest at all.
    let other = digest_of("offline-reasons-unsigned");
    let node = atproto_node(&repo, "", "enforce");
    assert_eq!(node.import(&record_bundle(&repo, &rkey, Some(&digest), now_micros())).code, Some(0));
    let pull = node.pull(&path, &other);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-not-found"), "{pull}");
}

#[test]
fn an_unsigned_image_under_an_audit_rule_is_record_not_found() {
    let repo = TestRepo::new(Identity::new(Curve::K256, "audit-reasons"));
    let node = atproto_node(&repo, "", "audit");
    let mut bundle = record_bundle(&repo, "3jzfcijpj2z2a", None, now_micros());
    bundle["proofs"] = serde_json::json!([]);
    assert_eq!(node.import(&bundle).code, Some(0));
    let pull = node.pull(&format!("{}/app", repo.identity.handle), &digest_of("never-signed"));
    assert_eq!(pull.code, Some(0), "audit admits: {pull}");
    assert!(pull.stdout.starts_with("audit:") && pull.stdout.contains("record-not-found"), "{pull}");
    assert!(!pull.stdout.contains("untrusted-signer"), "{pull}");
}

#[test]
fn a_dns_failure_is_a_network_reason() {
    let repo = TestRepo::new(Identity::new(Curve::K256, "dns-failure"));
    let node = Node::offline(&repo.identity.did, "");
    // Online, with a nameserver that does not answer (a closed loopback port).
    let online = node.dir.path().join("online.toml");
    let text = std::fs::read_to_string(&node.config).unwrap().replace("offline = true", "offline = false\nplc_directory = \"http://127.0.0.1:1\"");
    std::fs::write(&online, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["resolve", "alice.example.com", "--config", online.to_str().unwrap()])
        .env("ATPROTO_VERIFIER_DNS", "127.0.0.1:9")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "undecided, not rejected: {text}");
    assert!(text.contains("network failure"), "{text}");
}
