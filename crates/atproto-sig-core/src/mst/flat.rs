//! A node decoded into buffers that one walk reuses from node to node: the walk's form of
//! [`Node`], with every full key in one byte buffer, so a proof check allocates nothing per
//! entry (issue #31's measure; BENCHMARKS.md).
//!
//! The bytes are read with the strict pull cursor in the one canonical shape a node has (`e`
//! then `l`; each entry `k`, `p`, `t`, `v`). Anything else, valid or not, is handed to
//! [`Node::decode`], which gives the error or the node: so this is a faster route to the same
//! answer, never a second set of rules (the `mst_node` fuzz target checks both agree).

use super::{MstError, Node, is_valid_key};
use crate::cbor::Cursor;
use crate::cid::{Cid, Codec};
use crate::limits::Limits;

/// One entry: where its full key lies in [`FlatNode::keys`], its record and its right subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlatEntry {
    start: usize,
    end: usize,
    value: Cid,
    right: Option<Cid>,
}

/// A decoded node in reusable buffers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlatNode {
    /// Subtree left of all entries.
    pub left: Option<Cid>,
    keys: Vec<u8>,
    entries: Vec<FlatEntry>,
}

impl FlatNode {
    /// Decodes `block` into this node's buffers (replacing what they held): the same node, or
    /// the same error, as [`Node::decode`].
    pub fn decode_into(&mut self, block: &[u8], limits: &Limits) -> Result<(), MstError> {
        if self.read_canonical(block, limits).is_some() {
            return Ok(());
        }
        let node = Node::decode(block, limits)?;
        self.fill(&node);
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the node has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The full key of entry `i`.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        let entry = self.entries.get(i)?;
        self.keys.get(entry.start..entry.end)
    }

    /// The record CID of entry `i`.
    pub fn value(&self, i: usize) -> Option<Cid> {
        self.entries.get(i).map(|e| e.value)
    }

    /// The subtree right of entry `i`.
    pub fn right(&self, i: usize) -> Option<Cid> {
        self.entries.get(i).and_then(|e| e.right)
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|e| self.keys.get(e.start..e.end).unwrap_or_default())
    }

    /// Bytes its buffers hold (what [`crate::known::KnownBlocks`] counts against its per-node bound).
    pub fn footprint(&self) -> usize {
        self.keys.len().saturating_add(self.entries.len().saturating_mul(std::mem::size_of::<FlatEntry>()))
    }

    /// True when some entry has a right subtree.
    pub fn has_right_links(&self) -> bool {
        self.entries.iter().any(|e| e.right.is_some())
    }

    /// The node as [`Node`] (for tests and the fuzz target's comparison).
    pub fn to_node(&self) -> Node {
        let entries = (0..self.len()).filter_map(|i| Some(super::Entry { key: self.key(i)?.to_vec(), value: self.value(i)?, right: self.right(i) })).collect();
        Node { left: self.left, entries }
    }

    fn fill(&mut self, node: &Node) {
        self.left = node.left;
        self.keys.clear();
        self.entries.clear();
        for entry in &node.entries {
            let start = self.keys.len();
            self.keys.extend_from_slice(&entry.key);
            self.entries.push(FlatEntry { start, end: self.keys.len(), value: entry.value, right: entry.right });
        }
    }

    /// The canonical shape read without a value tree; `None` for anything else (including
    /// everything [`Node::decode`] refuses).
    fn read_canonical(&mut self, block: &[u8], limits: &Limits) -> Option<()> {
        let dag_cbor = |cid: Cid| (cid.codec() == Codec::DagCbor).then_some(cid);
        self.keys.clear();
        self.entries.clear();
        let mut cursor = Cursor::new(block);
        if cursor.map_len()? != 2 {
            return None;
        }
        cursor.key(b"e")?;
        let count = cursor.array_len()?;
        if count > limits.max_mst_node_entries {
            return None;
        }
        for _ in 0..count {
            if cursor.map_len()? != 4 {
                return None;
            }
            cursor.key(b"k")?;
            let suffix = cursor.bytes()?;
            cursor.key(b"p")?;
            let prefix = usize::try_from(cursor.unsigned()?).ok()?;
            cursor.key(b"t")?;
            let right = match cursor.link_or_null()? {
                Some(cid) => Some(dag_cbor(cid)?),
                None => None,
            };
            cursor.key(b"v")?;
            let value = dag_cbor(cursor.link()?)?;
            let (previous_start, previous_end) = self.entries.last().map_or((0, 0), |e| (e.start, e.end));
            if prefix > previous_end - previous_start {
                return None;
            }
            let start = self.keys.len();
            self.keys.extend_from_within(previous_start..previous_start + prefix);
            self.keys.extend_from_slice(suffix);
            let (previous, key) = (self.keys.get(previous_start..previous_end)?, self.keys.get(start..)?);
            // The same checks as `Node::decode`. The key starts with `prefix` bytes of the
            // previous one by construction, so their common prefix is exactly `prefix` unless
            // both go on with the same byte.
            let maximal = previous.get(prefix).is_none_or(|next| key.get(prefix) != Some(next));
            if !is_valid_key(key) || !maximal || (!self.entries.is_empty() && previous >= key) {
                return None;
            }
            self.entries.push(FlatEntry { start, end: self.keys.len(), value, right });
        }
        cursor.key(b"l")?;
        self.left = match cursor.link_or_null()? {
            Some(cid) => Some(dag_cbor(cid)?),
            None => None,
        };
        cursor.is_done().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::{self, Value};

    fn node_of(keys: &[&str]) -> Node {
        let value = Cid::for_dag_cbor(b"record");
        let entries = keys.iter().map(|k| super::super::Entry { key: k.as_bytes().to_vec(), value, right: None }).collect();
        Node { left: Some(Cid::for_dag_cbor(b"left")), entries }
    }

    /// Every node of a real proof is read by the fast route (a slow fallback would be correct
    /// and quietly slow).
    #[test]
    fn every_node_of_a_proof_takes_the_canonical_route() {
        use crate::testkit::{Identity, TestRepo, digest_of};
        let mut repo = TestRepo::new(Identity::new(crate::crypto::Curve::K256, "flat"));
        repo.put_filler(2_000);
        let rkey = repo.put_manifest(&digest_of("flat"), "app");
        let bytes = repo.proof(crate::record::MANIFEST_COLLECTION, &rkey);
        let car = crate::car::Car::parse(&bytes, &Limits::default()).unwrap();
        let mut flat = FlatNode::default();
        let mut nodes = 0;
        for cid in car.cids() {
            let block = car.block(cid).unwrap();
            if let Ok(node) = Node::decode(block, &Limits::default()) {
                assert!(flat.read_canonical(block, &Limits::default()).is_some(), "node {cid}");
                assert_eq!(flat.to_node(), node);
                nodes += 1;
            }
        }
        assert!(nodes >= 3, "{nodes} nodes");
    }

    #[test]
    fn the_canonical_read_gives_the_same_node_and_anything_else_the_same_error() {
        let limits = Limits::default();
        let mut flat = FlatNode::default();
        for keys in [&[][..], &["a/b"], &["app.bsky.feed.post/3k2", "app.bsky.feed.post/3k3", "io.atcr.manifest/abc"]] {
            let node = node_of(keys);
            let bytes = node.encode();
            assert!(flat.read_canonical(&bytes, &limits).is_some(), "{keys:?}");
            assert_eq!(flat.to_node(), node);
        }
        // Not canonical (prefix not maximal), unordered keys, trailing bytes, a non-map, a
        // non-dag-cbor link: the fast read declines and the slow decoder's error comes out.
        let good = node_of(&["a/aa", "a/ab"]).encode();
        let unordered = node_of(&["a/b", "a/a"]).encode();
        let mut trailing = good.clone();
        trailing.push(0);
        let raw_link = Node { left: Some(Cid::for_raw(b"x")), entries: Vec::new() }.encode();
        for bad in [super::super::short_prefix(&good), unordered, trailing, cbor::encode(&Value::Integer(1)), raw_link] {
            assert!(flat.read_canonical(&bad, &limits).is_none());
            assert_eq!(flat.decode_into(&bad, &limits).err(), Node::decode(&bad, &limits).err());
            assert!(flat.decode_into(&bad, &limits).is_err());
        }
    }
}
