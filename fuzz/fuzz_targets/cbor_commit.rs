#![no_main]
//! Strict DAG-CBOR decoding and commit decoding; a decoded value re-encodes to the same bytes
//! (strictness means there is exactly one encoding).
use atproto_sig_core::{cbor, commit::Commit, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = cbor::decode(data, cbor::DEFAULT_MAX_DEPTH) {
        assert_eq!(cbor::encode(&value), data, "strict decoding must be canonical");
    }
    let _ = Commit::decode(data, &Limits::default());
});
