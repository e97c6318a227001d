#![no_main]
//! The signed state of a collection (a bundle's `collections` CAR): cutting it and cutting
//! per-record proofs out of it, on arbitrary bytes.
use atproto_sig_core::{collection, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok((car, rkeys)) = collection::extract(data, "io.atcr.manifest", &limits) {
        for rkey in rkeys.iter().take(4) {
            let _ = collection::record_proof(&car, "io.atcr.manifest", rkey, &limits);
        }
    }
    let _ = collection::record_proof(data, "io.atcr.manifest", "3jzfcijpj2z2a", &limits);
});
