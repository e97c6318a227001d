#![no_main]
//! The signed state of a collection (a bundle's `collections` CAR): cutting it, checking it
//! (`signed_state`: signature first, then the covering walk) and cutting per-record proofs out
//! of it in one pass, on arbitrary bytes. A genuine state keeps verifying once re-cut.
use std::sync::OnceLock;

use atproto_sig_core::crypto::{Curve, PublicKey};
use atproto_sig_core::testkit::{Identity, T0_MICROS};
use atproto_sig_core::{Limits, collection};
use libfuzzer_sys::fuzz_target;

fn signer() -> &'static (String, PublicKey) {
    static SIGNER: OnceLock<(String, PublicKey)> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let identity = Identity::new(Curve::K256, "fuzz-collection");
        (identity.did.clone(), identity.public_key())
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let (did, key) = signer();
    let _ = collection::signed_state(data, did, key, "io.atcr.manifest", T0_MICROS, 300_000_000, &limits);
    if let Ok((car, rkeys)) = collection::extract(data, "io.atcr.manifest", &limits) {
        let some: Vec<String> = rkeys.iter().take(4).cloned().collect();
        let _ = collection::record_proofs(&car, "io.atcr.manifest", &some, &limits);
        let _ = collection::signed_state(&car, did, key, "io.atcr.manifest", T0_MICROS, 300_000_000, &limits);
    }
    let _ = collection::record_proof(data, "io.atcr.manifest", "3jzfcijpj2z2a", &limits);
});
