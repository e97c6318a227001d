#![no_main]
//! Key parsing: Multikey, did:key, legacy types, and signature checks on any bytes; the
//! parsed-key memo answers as the parser does, first time and from memory.
use atproto_sig_core::crypto::{Curve, PublicKey};
use atproto_sig_core::ParsedKeys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = PublicKey::from_multikey(&text);
    let _ = PublicKey::from_did_key(&text);
    let _ = PublicKey::from_legacy("EcdsaSecp256k1VerificationKey2019", &text);
    let _ = PublicKey::from_legacy("EcdsaSecp256r1VerificationKey2019", &text);
    let memo = ParsedKeys::new(2);
    for kind in ["Multikey", "EcdsaSecp256k1VerificationKey2019", "EcdsaSecp256r1VerificationKey2019", "Multikey"] {
        assert_eq!(memo.from_verification_method(kind, &text), PublicKey::from_verification_method(kind, &text));
    }
    assert_eq!(memo.from_did_key(&text), PublicKey::from_did_key(&text));
    for curve in [Curve::K256, Curve::P256] {
        if let Ok(key) = PublicKey::from_sec1(curve, data) {
            let _ = key.verify(data, data);
        }
    }
});
