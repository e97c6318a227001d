//! A bounded memo of MST nodes this process has already hash-checked and validated, so proofs
//! that share nodes (every re-check of a cached proof, proofs of other records of the same
//! repository, later commits that left a subtree unchanged) neither hash those blocks again nor
//! decode and re-validate them. `serve`, `watch` and the node's watcher keep one per process and
//! pass it in; nothing here reads a clock or does I/O.
//!
//! Why it cannot change an answer: a node is remembered only after its bytes hashed to its CID
//! and it passed every check that depends on nothing but its bytes (strict decoding, keys sorted
//! and maximally prefix-compressed, one height for all keys, no links at layer 0). A lookup
//! answers only when the bytes offered now are exactly the remembered bytes, so the remembered
//! facts are the facts those bytes would give again. What depends on where the node sits (the
//! layer its parent expects, the key range its parent allows) is checked at every visit.
//!
//! Bounded by construction: a fixed number of slots, each holding at most one node, and nodes
//! whose footprint is over [`KnownNodes::MAX_NODE_FOOTPRINT`] are never kept. A slot is chosen by
//! the CID's digest; a newer node replaces an older one in its slot. Whoever fills slots (a
//! hostile repository's crafted nodes) costs others only the check they would have paid anyway,
//! and a lookup is one slot, whatever the contents.

use std::sync::{Arc, Mutex, PoisonError};

use super::FlatNode;
use crate::cid::Cid;

/// A node as remembered: its CID and exact bytes, decoded, with its layer.
#[derive(Debug)]
pub struct KnownNode {
    cid: Cid,
    bytes: Box<[u8]>,
    /// The decoded node (never empty: an empty node's layer depends on its parent).
    pub(crate) node: FlatNode,
    /// The height of every key of the node.
    pub(crate) layer: u32,
}

/// Validated MST nodes by CID, in a fixed number of slots.
pub struct KnownNodes {
    slots: Mutex<Vec<Option<Arc<KnownNode>>>>,
    slot_count: usize,
}

impl Default for KnownNodes {
    fn default() -> KnownNodes {
        KnownNodes::new(KnownNodes::DEFAULT_SLOTS)
    }
}

impl std::fmt::Debug for KnownNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KnownNodes({} of {})", self.len(), self.slot_count)
    }
}

impl KnownNodes {
    /// Slots of the default memo: with nodes of 0.5–3 KB (block, decoded keys and entries),
    /// about 2–6 MiB in use; never more than `DEFAULT_SLOTS × MAX_NODE_FOOTPRINT` (16 MiB).
    pub const DEFAULT_SLOTS: usize = 2048;

    /// Nodes whose bytes, decoded keys and entries take more than this are not kept (real nodes
    /// take a few KB; a node built to be large only costs its own check).
    pub const MAX_NODE_FOOTPRINT: usize = 8 << 10;

    /// An empty memo of `slots` slots (0 keeps nothing).
    pub const fn new(slots: usize) -> KnownNodes {
        KnownNodes { slots: Mutex::new(Vec::new()), slot_count: slots }
    }

    /// A memo that keeps nothing: every node is checked at every visit.
    pub const fn disabled() -> KnownNodes {
        KnownNodes::new(0)
    }

    /// Number of nodes held.
    pub fn len(&self) -> usize {
        self.lock().iter().filter(|slot| slot.is_some()).count()
    }

    /// True when no node is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the memo keeps anything (a disabled one is never consulted).
    pub fn is_enabled(&self) -> bool {
        self.slot_count > 0
    }

    /// True when `bytes` are exactly the bytes of a node remembered under `cid` (so they hash
    /// to it: the CAR reader need not hash them again).
    pub fn holds(&self, cid: &Cid, bytes: &[u8]) -> bool {
        self.get(cid, bytes).is_some()
    }

    /// The node remembered under `cid`, when `bytes` are exactly its bytes.
    pub(crate) fn get(&self, cid: &Cid, bytes: &[u8]) -> Option<Arc<KnownNode>> {
        let index = self.slot(cid)?;
        let slots = self.lock();
        let known = slots.get(index)?.as_ref()?;
        (known.cid == *cid && *known.bytes == *bytes).then(|| Arc::clone(known))
    }

    /// Remembers a node whose `bytes` hashed to `cid` and passed every check that depends on its
    /// bytes alone, at `layer`. Empty and oversized nodes are not kept.
    pub(crate) fn remember(&self, cid: &Cid, bytes: &[u8], node: &FlatNode, layer: u32) {
        let Some(index) = self.slot(cid) else { return };
        if node.is_empty() || bytes.len().saturating_add(node.footprint()) > KnownNodes::MAX_NODE_FOOTPRINT {
            return;
        }
        let known = Arc::new(KnownNode { cid: *cid, bytes: Box::from(bytes), node: node.clone(), layer });
        let mut slots = self.lock();
        if slots.len() < self.slot_count {
            slots.resize(self.slot_count, None);
        }
        if let Some(slot) = slots.get_mut(index) {
            *slot = Some(known);
        }
    }

    /// The slot for `cid`, from its digest's first bytes. Crafted blocks can be aimed at a slot,
    /// but a slot holds one node whatever is aimed at it: the worst they do is replace another.
    fn slot(&self, cid: &Cid) -> Option<usize> {
        let count = u64::try_from(self.slot_count).ok().filter(|&n| n > 0)?;
        let mut first = [0u8; 8];
        first.copy_from_slice(cid.digest().get(..8)?);
        usize::try_from(u64::from_le_bytes(first) % count).ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Arc<KnownNode>>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use crate::car::Car;
    use crate::commit::Commit;
    use crate::crypto::Curve;
    use crate::mst::{Node, walk, walk_car, walk_known};
    use crate::record::MANIFEST_COLLECTION;
    use crate::testkit::{Identity, TestRepo, digest_of};

    fn proof(records: usize) -> (Vec<u8>, String) {
        let mut repo = TestRepo::new(Identity::new(Curve::K256, "known"));
        repo.put_filler(records);
        let rkey = repo.put_manifest(&digest_of("known"), "app");
        (repo.proof(MANIFEST_COLLECTION, &rkey), format!("{MANIFEST_COLLECTION}/{rkey}"))
    }

    /// A walk remembers each non-empty node it validated; the next walk takes them from the memo
    /// (the CAR reader skips their hashes) and gives the same answer, and so does every walk to
    /// another key through the same nodes.
    #[test]
    fn a_walk_remembers_its_nodes_and_the_next_walk_takes_them_with_the_same_answer() {
        let limits = Limits::default();
        let (bytes, path) = proof(2_000);
        let known = KnownNodes::default();
        let car = Car::parse_known(&bytes, &limits, &known).unwrap();
        let root = Commit::of_car(&car, &limits).unwrap().data;
        let plain = walk(|c| car.block(c), root, path.as_bytes(), &limits).unwrap();
        assert_eq!(walk_known(|c| car.block(c), root, path.as_bytes(), &limits, &known).unwrap(), plain);
        let non_empty = plain.path.iter().filter(|(cid, _)| Node::decode(car.block(cid).unwrap(), &limits).is_ok_and(|n| !n.entries.is_empty())).count();
        assert!(non_empty >= 3, "{non_empty} non-empty nodes on the path");
        assert_eq!(known.len(), non_empty);
        let again = Car::parse_known(&bytes, &limits, &known).unwrap();
        let held = plain.path.iter().filter(|(cid, _)| again.known_node(cid).is_some()).count();
        assert_eq!(held, non_empty, "the CAR reader found every remembered node");
        assert_eq!(walk_car(&again, root, path.as_bytes(), &limits, &known).unwrap(), plain);
        for other in ["io.atcr.manifest/0", "io.atcr.manifest/zzzz", "a/b", "zzz/z", path.as_str()] {
            assert_eq!(walk_car(&again, root, other.as_bytes(), &limits, &known), walk(|c| again.block(c), root, other.as_bytes(), &limits), "{other}");
        }
    }

    /// Other bytes under a remembered CID are never answered for: the CAR reader hashes them
    /// (and refuses them), and a walk decodes them.
    #[test]
    fn other_bytes_under_a_remembered_cid_are_not_answered_for() {
        let limits = Limits::default();
        let (bytes, path) = proof(300);
        let known = KnownNodes::default();
        let car = Car::parse_known(&bytes, &limits, &known).unwrap();
        let root = Commit::of_car(&car, &limits).unwrap().data;
        walk_known(|c| car.block(c), root, path.as_bytes(), &limits, &known).unwrap();
        let block = car.block(&root).unwrap();
        assert!(known.holds(&root, block));
        let mut altered = block.to_vec();
        *altered.last_mut().unwrap() ^= 1;
        assert!(!known.holds(&root, &altered));
        assert!(!known.holds(&Cid::for_dag_cbor(b"other"), block), "the same bytes under another CID");
        let tampered = crate::car::write_car(&car.root, car.cids().iter().map(|c| (*c, if *c == root { altered.as_slice() } else { car.block(c).unwrap() })));
        assert_eq!(Car::parse_known(&tampered, &limits, &known).unwrap_err(), crate::car::CarError::HashMismatch(root));
    }

    /// The memo never holds more nodes than its slots, nor empty or oversized nodes, and a
    /// disabled one holds nothing.
    #[test]
    fn the_memo_is_bounded_by_its_slots_and_keeps_no_empty_or_oversized_node() {
        // A node of `count` entries with keys `a/<i>`, `i` written `width` digits wide.
        let node = |first: usize, count: usize, width: usize| {
            let entries = (first..first + count)
                .map(|i| super::super::Entry { key: format!("a/{i:0>width$}").into_bytes(), value: Cid::for_dag_cbor(b"v"), right: None })
                .collect();
            let encoded = Node { left: None, entries }.encode();
            let mut flat = FlatNode::default();
            flat.decode_into(&encoded, &Limits::default()).unwrap();
            (Cid::for_dag_cbor(&encoded), encoded, flat)
        };
        let known = KnownNodes::new(8);
        for i in 0..100 {
            let (cid, bytes, flat) = node(i, 1, 4);
            known.remember(&cid, &bytes, &flat, 0);
            assert!(known.holds(&cid, &bytes), "the newest node has its slot");
        }
        assert!(known.len() <= 8, "{} nodes in 8 slots", known.len());
        let (cid, bytes, flat) = node(0, 100, 40);
        assert!(bytes.len() < KnownNodes::MAX_NODE_FOOTPRINT, "the block alone fits: {} bytes", bytes.len());
        assert!(bytes.len() + flat.footprint() > KnownNodes::MAX_NODE_FOOTPRINT, "with its decoded keys it does not");
        known.remember(&cid, &bytes, &flat, 0);
        assert!(!known.holds(&cid, &bytes), "an oversized node is kept");
        let empty = Node { left: Some(Cid::for_dag_cbor(b"l")), entries: Vec::new() }.encode();
        let mut flat = FlatNode::default();
        flat.decode_into(&empty, &Limits::default()).unwrap();
        known.remember(&Cid::for_dag_cbor(&empty), &empty, &flat, 1);
        assert!(!known.holds(&Cid::for_dag_cbor(&empty), &empty), "an empty node is kept");
        let disabled = KnownNodes::disabled();
        let (cid, bytes, flat) = node(1, 1, 4);
        disabled.remember(&cid, &bytes, &flat, 0);
        assert!(disabled.is_empty() && !disabled.is_enabled());
    }
}
