#![no_main]
//! The whole pipeline on arbitrary bytes as the proof CAR: never panics, and gives the same
//! verdict with a node memo this fuzzing process keeps (holding nodes of earlier inputs) as
//! without one. Seeds: fuzz/seeds/verify_proof.
use std::sync::OnceLock;

use atproto_sig_core::crypto::{Curve, PublicKey};
use atproto_sig_core::testkit::{digest_of, Identity, TestRepo, T0_MICROS};
use atproto_sig_core::{verify, Expectation, KeySource, KnownBlocks, Limits, ProofInput};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    did: String,
    key: PublicKey,
    digest: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut repo = TestRepo::new(Identity::new(Curve::K256, "fuzz"));
        repo.put_filler(30);
        let digest = digest_of("fuzz");
        repo.put_manifest(&digest, "app");
        Fixture { did: repo.identity.did.clone(), key: repo.identity.public_key(), digest }
    })
}

static KNOWN: KnownBlocks = KnownBlocks::new(64);

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let check = |known_blocks| {
        verify(&ProofInput {
            car: data,
            key: KeySource::Key(&f.key),
            expect: Expectation { did: &f.did, rkey: None, digest: Some(&f.digest), repository: Some("app") },
            now_micros: T0_MICROS,
            max_clock_skew_micros: 0,
            limits: &Limits::default(),
            known_blocks,
        })
    };
    let plain = check(None);
    for _ in 0..2 {
        assert_eq!(check(Some(&KNOWN)), plain);
    }
});
