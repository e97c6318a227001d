#![no_main]
//! DID document parsing (both key forms, services, handle claims): the borrowed fast route,
//! the `serde_json::Value` route and the parsed-key memo (its keys, and its whole documents on
//! the second parse) give the same document.
use std::sync::OnceLock;

use atproto_sig_core::{did::DidDocument, Limits, ParsedKeys};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static ParsedKeys {
    static KEYS: OnceLock<ParsedKeys> = OnceLock::new();
    KEYS.get_or_init(|| ParsedKeys::new(64))
}

fuzz_target!(|data: &[u8]| {
    for did in ["did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:web:example.com"] {
        let parsed = DidDocument::parse(data, did, &Limits::default());
        assert_eq!(DidDocument::parse_with_keys(data, did, &Limits::default(), keys()), parsed);
        assert_eq!(DidDocument::parse_with_keys(data, did, &Limits::default(), keys()), parsed, "from the memo");
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
            if json.is_object() && data.len() <= Limits::default().max_json_bytes {
                assert_eq!(DidDocument::from_json(&json, did), parsed);
            }
        }
    }
});
