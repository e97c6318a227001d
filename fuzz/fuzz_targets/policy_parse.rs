#![no_main]
//! Trust policy parsing (YAML and JSON) and reference normalization; a parsed policy must also
//! decide without panicking.
use atproto_sig_core::policy::Policy;
use atproto_sig_core::reference::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(image) = ImageRef::parse(text) {
        let _ = image.scope_name();
    }
    if let Ok(policy) = Policy::parse(text) {
        let image = ImageRef::parse("atcr.io/alice.test/prod-api").ok();
        if let Some(image) = image {
            let _ = policy.decide(&image, &[], 0);
        }
    }
});
