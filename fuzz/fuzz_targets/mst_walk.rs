#![no_main]
//! The MST walk over arbitrary blocks, with and without a node memo this fuzzing process keeps
//! (so it holds nodes from earlier inputs): the same answer or the same error every time.
//! Input: blocks separated by `0xff 0xfe`; the first names the root, the last is the key.
use atproto_sig_core::{
    cid::Cid,
    mst::{walk, walk_known},
    KnownBlocks, Limits,
};
use libfuzzer_sys::fuzz_target;

static KNOWN: KnownBlocks = KnownBlocks::new(64);

fuzz_target!(|data: &[u8]| {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(2).position(|w| w == [0xff, 0xfe]) {
        parts.push(&rest[..at]);
        rest = &rest[at + 2..];
    }
    parts.push(rest);
    let Some((key, blocks)) = parts.split_last() else { return };
    let Some(first) = blocks.first() else { return };
    let blocks: Vec<(Cid, &[u8])> = blocks.iter().map(|b| (Cid::for_dag_cbor(b), *b)).collect();
    let get = |cid: &Cid| blocks.iter().find(|(c, _)| c == cid).map(|(_, b)| *b);
    let root = Cid::for_dag_cbor(first);
    let limits = Limits::default();
    let plain = walk(get, root, key, &limits);
    for _ in 0..2 {
        assert_eq!(walk_known(get, root, key, &limits, &KNOWN), plain);
    }
});
