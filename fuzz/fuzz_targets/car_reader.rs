#![no_main]
//! CAR v1 reader: any bytes must parse or fail, never panic or over-allocate.
use atproto_sig_core::{car::Car, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(car) = Car::parse(data, &Limits::default()) {
        for cid in car.cids() {
            assert!(car.block(cid).is_some_and(|b| cid.matches(b)));
        }
    }
});
