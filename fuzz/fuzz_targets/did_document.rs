#![no_main]
//! DID document parsing (both key forms, services, handle claims).
use atproto_sig_core::{did::DidDocument, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = DidDocument::parse(data, "did:plc:ewvi7nxzyoun6zhxrhs64oiz", &Limits::default());
    let _ = DidDocument::parse(data, "did:web:example.com", &Limits::default());
});
