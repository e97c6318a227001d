#![no_main]
//! MST node decoding: a node that decodes re-encodes canonically, and the walk's flat reader
//! gives the same node or the same error.
use atproto_sig_core::{
    mst::{FlatNode, Node},
    Limits,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = Node::decode(data, &Limits::default());
    if let Ok(node) = &decoded {
        assert_eq!(node.encode(), data);
    }
    let mut flat = FlatNode::default();
    let read = flat.decode_into(data, &Limits::default());
    assert_eq!(read.err(), decoded.as_ref().err().cloned());
    if let Ok(node) = decoded {
        assert_eq!(flat.to_node(), node);
    }
});
