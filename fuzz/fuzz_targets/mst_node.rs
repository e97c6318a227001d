#![no_main]
//! MST node decoding: a node that decodes re-encodes canonically.
use atproto_sig_core::{mst::Node, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = Node::decode(data, &Limits::default()) {
        assert_eq!(node.encode(), data);
    }
});
