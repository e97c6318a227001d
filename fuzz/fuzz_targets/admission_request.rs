#![no_main]
//! What an admission client sends `serve` (an AdmissionReview from the API server, a
//! ProviderRequest from Gatekeeper): parsed, its images found, answers built for them, with a
//! decision of each class. Never a panic; never more images or keys than the caps.
use std::sync::Arc;

use atproto_sig_core::policy::{Decision, Outcome};
use atproto_sig_core::Reason;
use containerd_verifier::serve::admission::{self, MAX_IMAGES};
use containerd_verifier::serve::decisions::Decided;
use containerd_verifier::serve::gatekeeper::{self, MAX_KEYS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = admission::parse_review(data) {
        if let Ok(images) = admission::requested_images(&request) {
            assert!(images.len() <= MAX_IMAGES);
            let outcomes = [Outcome::Admit, Outcome::AuditAdmit, Outcome::Reject];
            let answers: Vec<_> = images
                .into_iter()
                .enumerate()
                .map(|(i, image)| {
                    let decision = Decision { outcome: outcomes[i % 3], reason: Reason::Verified, message: image.image.clone(), rule: None, signers: vec![] };
                    (image, Arc::new(Decided::of(&decision, None, Some("sha256:00".into()), "", i % 2 == 0)))
                })
                .collect();
            let _ = admission::validating_response(&request.uid, &answers);
            let _ = admission::mutating_response(&request.uid, &answers);
        }
    }
    if let Ok(keys) = gatekeeper::parse_request(data) {
        assert!(keys.len() <= MAX_KEYS);
    }
});
