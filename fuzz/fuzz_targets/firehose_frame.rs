#![no_main]
//! A firehose frame from anywhere (a PDS, a relay, or whoever answers the watcher's socket):
//! header and body decoded strictly, every field typed and bounded; a decoded `#commit` or
//! `#sync` has its CAR slice parsed too. Never a panic, never unbounded work.
use atproto_sig_core::car::Car;
use atproto_sig_core::firehose::{Frame, decode_frame};
use atproto_sig_core::Limits;
use libfuzzer_sys::fuzz_target;

fn key() -> atproto_sig_core::crypto::PublicKey {
    static KEY: std::sync::OnceLock<atproto_sig_core::crypto::PublicKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| atproto_sig_core::crypto::PrivateKey::from_seed(atproto_sig_core::crypto::Curve::K256, "fuzz").public_key()).clone()
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    match decode_frame(data, &limits) {
        Ok(Frame::Commit(event)) => {
            assert!(event.ops.len() <= atproto_sig_core::firehose::MAX_OPS);
            let _ = Car::parse(&event.blocks, &limits);
            // The inductive check on whatever the frame carries (any key: it must fail cleanly).
            let _ = atproto_sig_core::commit_proof::prove_commit(&event, &key(), &limits);
        }
        Ok(Frame::Sync(event)) => {
            let _ = Car::parse(&event.blocks, &limits);
        }
        _ => {}
    }
});
