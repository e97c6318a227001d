#![no_main]
//! The inductive check of a firehose commit: MST edits (`mst::apply`) on a tree known only
//! from hostile blocks (a CAR from the frame) with hostile keys. Never a panic, never
//! unbounded work; any answer is a root or an error.
//!
//! Input: two bytes of CAR length, the CAR, then edits one per line: `+key` puts, `-key` removes.
use atproto_sig_core::car::Car;
use atproto_sig_core::cid::Cid;
use atproto_sig_core::mst::{self, Edit};
use atproto_sig_core::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (car, edits) = rest.split_at(len);
    let limits = Limits::default();
    let Ok(car) = Car::parse(car, &limits) else { return };
    let value = Cid::for_dag_cbor(b"\xa0");
    let edits: Vec<Edit> = edits
        .split(|b| *b == b'\n')
        .take(64)
        .filter_map(|line| match line.split_first() {
            Some((b'+', key)) => Some(Edit::Put(key.to_vec(), value)),
            Some((b'-', key)) => Some(Edit::Remove(key.to_vec())),
            _ => None,
        })
        .collect();
    let _ = mst::apply(|c| car.block(c), car.root, &edits, &limits);
});
