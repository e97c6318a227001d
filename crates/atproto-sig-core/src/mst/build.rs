//! The canonical tree for a set of entries (test repositories, differential checks).

use std::collections::BTreeMap;

use super::{Entry, Node, key_height};
use crate::cid::Cid;

/// Builds the canonical MST for `entries`; returns the root CID and every node block.
pub fn build(entries: &BTreeMap<Vec<u8>, Cid>) -> (Cid, Vec<(Cid, Vec<u8>)>) {
    let keyed: Vec<(&[u8], Cid, u32)> = entries.iter().map(|(k, v)| (k.as_slice(), *v, key_height(k))).collect();
    let mut blocks = Vec::new();
    let root_layer = keyed.iter().map(|e| e.2).max().unwrap_or(0);
    let root = build_layer(&keyed, root_layer, &mut blocks).unwrap_or_else(|| {
        let empty = Node::default().encode();
        let cid = Cid::for_dag_cbor(&empty);
        blocks.push((cid, empty));
        cid
    });
    (root, blocks)
}

fn build_layer(keys: &[(&[u8], Cid, u32)], layer: u32, blocks: &mut Vec<(Cid, Vec<u8>)>) -> Option<Cid> {
    if keys.is_empty() {
        return None;
    }
    let mut node = Node::default();
    let mut gap_start = 0;
    let subtree = |range: &[(&[u8], Cid, u32)], blocks: &mut Vec<(Cid, Vec<u8>)>| layer.checked_sub(1).and_then(|below| build_layer(range, below, blocks));
    for (index, (key, value, height)) in keys.iter().enumerate() {
        if *height == layer {
            let gap = subtree(keys.get(gap_start..index).unwrap_or_default(), blocks);
            match node.entries.last_mut() {
                Some(last) => last.right = gap,
                None => node.left = gap,
            }
            node.entries.push(Entry { key: key.to_vec(), value: *value, right: None });
            gap_start = index + 1;
        }
    }
    let gap = subtree(keys.get(gap_start..).unwrap_or_default(), blocks);
    match node.entries.last_mut() {
        Some(last) => last.right = gap,
        None => node.left = gap,
    }
    let bytes = node.encode();
    let cid = Cid::for_dag_cbor(&bytes);
    blocks.push((cid, bytes));
    Some(cid)
}
