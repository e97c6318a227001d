//! Walking a tree from its root: the inclusion or absence proof of one key, and the nodes
//! covering every key under a prefix (a whole collection).

use std::sync::Arc;

use super::{FlatNode, MstError, Node, key_height};
use crate::car::Car;
use crate::cid::Cid;
use crate::known::{KnownBlock, KnownBlocks};
use crate::limits::Limits;

/// Result of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The key maps to this record CID.
    Present(Cid),
    /// The tree provably does not contain the key.
    Absent,
}

/// A completed walk: the answer and the nodes visited (CID and layer), root first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    /// Present or absent.
    pub lookup: Lookup,
    /// Visited nodes, root first.
    pub path: Vec<(Cid, u32)>,
}

/// Walks from `root` to `key`, validating every node on the way.
/// `block` returns verified block bytes by CID (a proof CAR, or a whole repository).
/// Nodes are read into one reused [`FlatNode`] and the key range into two reused buffers: the
/// walk allocates per walk, never per node entry.
pub fn walk<'a>(block: impl Fn(&Cid) -> Option<&'a [u8]>, root: Cid, key: &[u8], limits: &Limits) -> Result<Walk, MstError> {
    static NONE: KnownBlocks = KnownBlocks::disabled();
    walk_known(block, root, key, limits, &NONE)
}

/// [`walk`], with the nodes `known` already holds (byte for byte, within these limits) taken as
/// validated instead of decoded and checked again, and every node it validates remembered
/// there. Same answer, same error, as [`walk`] (the `mst_walk` fuzz target walks both ways).
// One loop on purpose (~90 lines): each step of the descent checks the layer and key-range
// invariants against the step before it; split up, that state would travel between functions.
pub fn walk_known<'a>(block: impl Fn(&Cid) -> Option<&'a [u8]>, root: Cid, key: &[u8], limits: &Limits, known: &KnownBlocks) -> Result<Walk, MstError> {
    walk_with(block, |cid, bytes| known.get(cid, bytes), root, key, limits, known)
}

/// [`walk_known`] through a CAR read by [`Car::parse_known`] with the same memo: the nodes it
/// found there are taken from it, without looking them up again.
pub(crate) fn walk_car(car: &Car<'_>, root: Cid, key: &[u8], limits: &Limits, known: &KnownBlocks) -> Result<Walk, MstError> {
    walk_with(|cid| car.block(cid), |cid, _| car.known_block(cid), root, key, limits, known)
}

/// The walk itself: `held` gives the block `known` holds for a CID and its bytes, if any.
fn walk_with<'a>(
    block: impl Fn(&Cid) -> Option<&'a [u8]>,
    held: impl Fn(&Cid, &[u8]) -> Option<Arc<KnownBlock>>,
    root: Cid,
    key: &[u8],
    limits: &Limits,
    known: &KnownBlocks,
) -> Result<Walk, MstError> {
    let key_layer = key_height(key);
    // A proof is a handful of levels deep: one allocation for the whole path.
    let mut path = Vec::with_capacity(limits.max_mst_depth.min(16));
    let mut scratch = FlatNode::default();
    let mut cid = root;
    // Layer of the current node: unknown at the root, parent layer − 1 below it.
    let mut expected: Option<u32> = None;
    // Keys of the current node must lie strictly inside these bounds (the parent's gap).
    let (mut lower, mut upper) = (Bound::default(), Bound::default());
    loop {
        if path.len() >= limits.max_mst_depth {
            return Err(MstError::TooLarge);
        }
        let bytes = block(&cid).ok_or(MstError::MissingBlock(cid))?;
        let held = held(&cid, bytes);
        let remembered = held.as_deref().and_then(|known| known.node(limits));
        // A remembered node passed its own checks when it was remembered (an empty one was only
        // decoded: its layer is the parent's); only where it sits is left to check.
        let node = match remembered {
            Some((node, _)) => node,
            None => {
                scratch.decode_into(bytes, limits)?;
                &scratch
            }
        };
        let layer = match remembered.and_then(|(_, layer)| layer) {
            Some(layer) => layer,
            None => match own_layer(node, expected)? {
                Some(layer) => layer,
                None => {
                    path.push((cid, 0));
                    return Ok(Walk { lookup: Lookup::Absent, path });
                }
            },
        };
        if let Some(expected) = expected
            && layer != expected
        {
            return Err(MstError::Height { expected, found: layer });
        }
        if node.is_empty() && node.left.is_none() {
            return Err(MstError::EmptyNode);
        }
        for (i, entry_key) in node.keys().enumerate() {
            // The first key's height is the layer itself; a remembered node's keys all have it.
            let found = if i == 0 || remembered.is_some() { layer } else { key_height(entry_key) };
            if found != layer {
                return Err(MstError::Height { expected: layer, found });
            }
            if lower.get().is_some_and(|l| entry_key <= l) || upper.get().is_some_and(|u| entry_key >= u) {
                return Err(MstError::KeyOrder);
            }
        }
        if layer == 0 && (node.left.is_some() || node.has_right_links()) {
            return Err(MstError::EmptyNode);
        }
        if remembered.is_none() {
            known.remember_node(&cid, bytes, node, layer);
        }
        path.push((cid, layer));
        if key_layer > layer {
            return Ok(Walk { lookup: Lookup::Absent, path });
        }
        if key_layer == layer {
            let lookup = (0..node.len()).find(|&i| node.key(i) == Some(key)).and_then(|i| node.value(i)).map_or(Lookup::Absent, Lookup::Present);
            return Ok(Walk { lookup, path });
        }
        // Descend into the gap that would hold `key`: it lies between the entry before it (or
        // the parent's lower bound) and the entry after it (or the parent's upper bound).
        let index = node.keys().take_while(|k| *k < key).count();
        let link = match index.checked_sub(1) {
            None => node.left,
            Some(before) => {
                lower.set(node.key(before));
                node.right(before)
            }
        };
        if let Some(after) = node.key(index) {
            upper.set(Some(after));
        }
        let Some(next) = link else {
            return Ok(Walk { lookup: Lookup::Absent, path });
        };
        cid = next;
        expected = Some(layer - 1);
    }
}

/// The layer of a freshly decoded node: its first key's height, or the expected layer for an
/// empty node. `None` for the empty root of an empty repository (no entries, no subtree).
fn own_layer(node: &FlatNode, expected: Option<u32>) -> Result<Option<u32>, MstError> {
    match (node.key(0).map(key_height), expected) {
        (Some(height), _) => Ok(Some(height)),
        (None, Some(layer)) => Ok(Some(layer)),
        (None, None) if node.left.is_none() => Ok(None),
        (None, None) => Err(MstError::EmptyNode),
    }
}

/// One end of the walk's key range, in a buffer reused from level to level.
#[derive(Default)]
struct Bound {
    key: Vec<u8>,
    set: bool,
}

impl Bound {
    fn get(&self) -> Option<&[u8]> {
        self.set.then_some(self.key.as_slice())
    }

    /// Replaces the bound with `key` (`None` leaves it as it is).
    fn set(&mut self, key: Option<&[u8]>) {
        if let Some(key) = key {
            self.key.clear();
            self.key.extend_from_slice(key);
            self.set = true;
        }
    }
}

/// Nodes (root first) and the `(key, record CID)` entries with the prefix, in key order.
pub type Covering = (Vec<Cid>, Vec<(Vec<u8>, Cid)>);

/// The nodes that cover every key starting with `prefix` (a collection's `io.atcr.manifest/`):
/// each node whose key range meets the prefix's range, root first, and the entries found
/// there. A CAR holding the commit, these nodes and the records is a proof for every key of
/// the collection at once: [`walk`] finds each record present, and proves each other key
/// absent. Bounded by `max_mst_depth` and `max_blocks` nodes.
pub fn covering<'a>(block: impl Fn(&Cid) -> Option<&'a [u8]>, root: Cid, prefix: &[u8], limits: &Limits) -> Result<Covering, MstError> {
    // Keys with the prefix lie in [prefix, end): the prefix with its last byte incremented.
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    let meets = |low: &Option<Vec<u8>>, high: &Option<Vec<u8>>| low.as_deref().is_none_or(|l| l < end.as_slice()) && high.as_deref().is_none_or(|h| h > prefix);
    let mut nodes = Vec::new();
    let mut entries = Vec::new();
    /// A node still to visit: its CID, depth, and the gap of keys it may hold.
    struct Pending {
        cid: Cid,
        depth: usize,
        low: Option<Vec<u8>>,
        high: Option<Vec<u8>>,
    }
    let mut stack = vec![Pending { cid: root, depth: 0, low: None, high: None }];
    while let Some(Pending { cid, depth, low, high }) = stack.pop() {
        if depth >= limits.max_mst_depth || nodes.len() >= limits.max_blocks {
            return Err(MstError::TooLarge);
        }
        let node = Node::decode(block(&cid).ok_or(MstError::MissingBlock(cid))?, limits)?;
        nodes.push(cid);
        let mut gap_low = low;
        let mut link = node.left;
        for entry in node.entries.iter().map(Some).chain(std::iter::once(None)) {
            let gap_high = entry.map_or(high.clone(), |e| Some(e.key.clone()));
            if let Some(child) = link
                && meets(&gap_low, &gap_high)
            {
                stack.push(Pending { cid: child, depth: depth + 1, low: gap_low.clone(), high: gap_high.clone() });
            }
            let Some(entry) = entry else { break };
            if entry.key.starts_with(prefix) {
                entries.push((entry.key.clone(), entry.value));
            }
            gap_low = Some(entry.key.clone());
            link = entry.right;
        }
    }
    entries.sort();
    Ok((nodes, entries))
}
