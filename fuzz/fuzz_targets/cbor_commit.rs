#![no_main]
//! Strict DAG-CBOR decoding and commit decoding; a decoded value re-encodes to the same bytes
//! (strictness means there is exactly one encoding), and the commit's canonical read gives
//! what decoding the value and reading it gives; so does a manifest record's.
use atproto_sig_core::{cbor, commit::Commit, record::ManifestRecord, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = cbor::decode(data, cbor::DEFAULT_MAX_DEPTH) {
        assert_eq!(cbor::encode(&value), data, "strict decoding must be canonical");
    }
    let general = cbor::decode(data, Limits::default().max_cbor_depth).map_err(atproto_sig_core::commit::CommitError::Cbor).and_then(|v| Commit::from_value(&v));
    assert_eq!(Commit::decode(data, &Limits::default()), general);
    let record = cbor::decode(data, Limits::default().max_cbor_depth)
        .map_err(atproto_sig_core::record::RecordError::Cbor)
        .and_then(|v| ManifestRecord::from_value(&v));
    assert_eq!(ManifestRecord::decode(data, &Limits::default()), record);
});
