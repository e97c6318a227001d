#![no_main]
//! A firehose frame from anywhere (a PDS, a relay, or whoever answers the watcher's socket):
//! header and body decoded strictly, every field typed and bounded; a decoded `#commit` or
//! `#sync` has its CAR slice parsed too. Never a panic, never unbounded work.
use atproto_sig_core::car::Car;
use atproto_sig_core::firehose::{Frame, decode_frame};
use atproto_sig_core::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    match decode_frame(data, &limits) {
        Ok(Frame::Commit(event)) => {
            assert!(event.ops.len() <= atproto_sig_core::firehose::MAX_OPS);
            let _ = Car::parse(&event.blocks, &limits);
        }
        Ok(Frame::Sync(event)) => {
            let _ = Car::parse(&event.blocks, &limits);
        }
        _ => {}
    }
});
