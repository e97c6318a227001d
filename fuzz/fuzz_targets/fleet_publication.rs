#![no_main]
//! What a fleet's registry serves a node: the index it polls (which DIDs' artifacts to fetch)
//! and a publication envelope (DSSE), checked against a bundle and a configured publisher key.
//! Must never panic or run unbounded; a forged envelope never verifies.
use std::collections::BTreeSet;
use std::sync::OnceLock;

use atproto_sig_core::crypto::{Curve, PrivateKey};
use containerd_verifier::testkit::{fleet_index_entries, verify_publication};
use libfuzzer_sys::fuzz_target;

fn publisher() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| PrivateKey::from_seed(Curve::P256, "fuzz-publisher"))
}

fuzz_target!(|data: &[u8]| {
    let wanted: BTreeSet<String> = ["did:plc:fuzz".to_owned()].into();
    let (entries, _) = fleet_index_entries(data, &wanted);
    assert!(entries.iter().all(|(did, _)| wanted.contains(did)));
    let key = publisher().public_key();
    // Arbitrary bytes as the envelope: only a genuine signature of the publisher verifies, and
    // the fuzzer cannot make one.
    assert!(verify_publication(data, b"bundle", "did:plc:fuzz", std::slice::from_ref(&key), i64::MAX, 0).is_err());
});
