#![no_main]
//! did:plc audit-log verification on arbitrary JSON.
use atproto_sig_core::{plc::verify_audit_log, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = verify_audit_log("did:plc:ewvi7nxzyoun6zhxrhs64oiz", data, &Limits::default());
});
