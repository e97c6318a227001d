//! A bounded memo of blocks this process has already hash-checked and decoded: MST nodes
//! (validated), signed commits (with the digest of their signed bytes) and manifest records.
//! Proofs that share blocks (every re-check of a cached proof, proofs of other records of the
//! same repository, later commits that left a subtree unchanged) neither hash those blocks
//! again nor decode and re-check them. `serve`, `watch` and the node's watcher keep one per
//! process and pass it in; nothing here reads a clock or does I/O. The signature is never
//! remembered: every check verifies it.
//!
//! Why it cannot change an answer: a block is remembered only after its bytes hashed to its
//! CID and it passed every check that depends on nothing but its bytes and the limits it was
//! read under (a node: strict decoding, keys sorted and maximally prefix-compressed, one height
//! for all keys, no links at layer 0, and for an empty node only its decoding; a commit: decoded, and its signature verified under some
//! key; a record: decoded and valid). A lookup answers only when the bytes offered now are
//! exactly the remembered bytes and, for what the limits decide, under the same limits; so the
//! remembered facts are the facts those bytes would give again. What depends on where a block
//! sits (the layer a node's parent expects, the key range it allows, the DID and key a commit
//! must have) is checked at every use.
//!
//! Bounded by construction: a fixed number of slots, each holding at most one block, and
//! blocks whose footprint is over [`KnownBlocks::MAX_BLOCK_FOOTPRINT`] are never kept. A slot is
//! chosen by the CID's digest; a newer block replaces an older one in its slot. Crafted blocks
//! can be aimed at a slot, but the worst they do is replace another, which costs its next user
//! the check they would have paid anyway; a lookup is one slot, whatever the contents.

use std::sync::{Arc, Mutex, PoisonError};

use crate::Limits;
use crate::cid::Cid;
use crate::commit::Commit;
use crate::mst::FlatNode;
use crate::record::ManifestRecord;

/// What a remembered block is.
#[derive(Debug)]
pub(crate) enum Known {
    /// A decoded MST node, with the height of all its keys: validated when it has keys; an
    /// empty node's layer is its parent's business, so only its decoding is remembered.
    Node {
        /// The decoded node.
        node: FlatNode,
        /// Its layer (`None` for an empty node).
        layer: Option<u32>,
    },
    /// A commit whose signature verified, and the SHA-256 of its signed bytes.
    Commit {
        /// The decoded commit.
        commit: Commit,
        /// SHA-256 of [`Commit::unsigned_bytes`].
        signed_digest: [u8; 32],
        /// The limits it was decoded under.
        limits: Limits,
    },
    /// A valid manifest record.
    Record {
        /// The decoded record.
        record: ManifestRecord,
        /// The limits it was decoded under.
        limits: Limits,
    },
}

/// A block as remembered: its CID and exact bytes, and what they were found to be.
#[derive(Debug)]
pub struct KnownBlock {
    cid: Cid,
    bytes: Box<[u8]>,
    pub(crate) what: Known,
}

impl KnownBlock {
    /// The node and its layer (`None` for an empty node), when this block is a node that the
    /// `limits` allow.
    pub(crate) fn node(&self, limits: &Limits) -> Option<(&FlatNode, Option<u32>)> {
        match &self.what {
            Known::Node { node, layer } if node.len() <= limits.max_mst_node_entries => Some((node, *layer)),
            _ => None,
        }
    }

    /// The commit and the digest of its signed bytes, when this block is a commit read under
    /// these `limits`.
    pub(crate) fn commit(&self, limits: &Limits) -> Option<(&Commit, &[u8; 32])> {
        match &self.what {
            Known::Commit { commit, signed_digest, limits: read_under } if read_under == limits => Some((commit, signed_digest)),
            _ => None,
        }
    }

    /// The record, when this block is a record read under these `limits`.
    pub(crate) fn record(&self, limits: &Limits) -> Option<&ManifestRecord> {
        match &self.what {
            Known::Record { record, limits: read_under } if read_under == limits => Some(record),
            _ => None,
        }
    }

    /// Bytes this entry holds, roughly (what the per-block bound counts).
    fn footprint(&self) -> usize {
        let decoded = match &self.what {
            Known::Node { node, .. } => node.footprint(),
            Known::Commit { commit, .. } => commit.did.len() + commit.rev.as_ref().map_or(0, String::len) + commit.sig.len(),
            Known::Record { record, .. } => {
                record.repository.len()
                    + record.digest.len()
                    + record.media_type.len()
                    + record.created_at.len()
                    + record.hold_did.as_ref().map_or(0, String::len)
            }
        };
        self.bytes.len().saturating_add(decoded)
    }
}

/// Checked blocks by CID, in a fixed number of slots.
pub struct KnownBlocks {
    slots: Mutex<Vec<Option<Arc<KnownBlock>>>>,
    slot_count: usize,
}

impl Default for KnownBlocks {
    fn default() -> KnownBlocks {
        KnownBlocks::new(KnownBlocks::DEFAULT_SLOTS)
    }
}

impl std::fmt::Debug for KnownBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KnownBlocks({} of {})", self.len(), self.slot_count)
    }
}

impl KnownBlocks {
    /// Slots of the default memo: with blocks of 0.2–3 KB (bytes and decoded form), a few MiB
    /// in use; never more than `DEFAULT_SLOTS × MAX_BLOCK_FOOTPRINT` (16 MiB).
    pub const DEFAULT_SLOTS: usize = 2048;

    /// Blocks whose bytes and decoded form take more than this are not kept (real nodes,
    /// commits and records take a few KB at most; a block built to be large only costs its own
    /// check).
    pub const MAX_BLOCK_FOOTPRINT: usize = 8 << 10;

    /// An empty memo of `slots` slots (0 keeps nothing).
    pub const fn new(slots: usize) -> KnownBlocks {
        KnownBlocks { slots: Mutex::new(Vec::new()), slot_count: slots }
    }

    /// A memo that keeps nothing: every block is checked at every use.
    pub const fn disabled() -> KnownBlocks {
        KnownBlocks::new(0)
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.lock().iter().filter(|slot| slot.is_some()).count()
    }

    /// True when no block is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the memo keeps anything (a disabled one is never consulted).
    pub fn is_enabled(&self) -> bool {
        self.slot_count > 0
    }

    /// True when `bytes` are exactly the bytes of a block remembered under `cid` (so they hash
    /// to it: the CAR reader need not hash them again).
    pub fn holds(&self, cid: &Cid, bytes: &[u8]) -> bool {
        self.get(cid, bytes).is_some()
    }

    /// The block remembered under `cid`, when `bytes` are exactly its bytes.
    pub(crate) fn get(&self, cid: &Cid, bytes: &[u8]) -> Option<Arc<KnownBlock>> {
        let index = self.slot(cid)?;
        let slots = self.lock();
        let known = slots.get(index)?.as_ref()?;
        (known.cid == *cid && *known.bytes == *bytes).then(|| Arc::clone(known))
    }

    /// Remembers a node whose `bytes` hashed to `cid` and passed every check that depends on its
    /// bytes alone, at `layer` (an empty node's layer is not kept: its parent decides it).
    pub(crate) fn remember_node(&self, cid: &Cid, bytes: &[u8], node: &FlatNode, layer: u32) {
        if self.is_enabled() && bytes.len().saturating_add(node.footprint()) <= KnownBlocks::MAX_BLOCK_FOOTPRINT {
            let layer = (!node.is_empty()).then_some(layer);
            self.remember(cid, bytes, Known::Node { node: node.clone(), layer });
        }
    }

    /// Remembers a commit whose `bytes` hashed to `cid`, decoded under `limits`, whose signature
    /// verified over `signed_digest`.
    pub(crate) fn remember_commit(&self, cid: &Cid, bytes: &[u8], commit: &Commit, signed_digest: [u8; 32], limits: &Limits) {
        if self.is_enabled() {
            self.remember(cid, bytes, Known::Commit { commit: commit.clone(), signed_digest, limits: *limits });
        }
    }

    /// Remembers a valid record whose `bytes` hashed to `cid`, decoded under `limits`.
    pub(crate) fn remember_record(&self, cid: &Cid, bytes: &[u8], record: &ManifestRecord, limits: &Limits) {
        if self.is_enabled() {
            self.remember(cid, bytes, Known::Record { record: record.clone(), limits: *limits });
        }
    }

    fn remember(&self, cid: &Cid, bytes: &[u8], what: Known) {
        let Some(index) = self.slot(cid) else { return };
        // Most oversized blocks are refused before anything is copied.
        if bytes.len() > KnownBlocks::MAX_BLOCK_FOOTPRINT {
            return;
        }
        let known = KnownBlock { cid: *cid, bytes: Box::from(bytes), what };
        if known.footprint() > KnownBlocks::MAX_BLOCK_FOOTPRINT {
            return;
        }
        let mut slots = self.lock();
        if slots.len() < self.slot_count {
            slots.resize(self.slot_count, None);
        }
        if let Some(slot) = slots.get_mut(index) {
            *slot = Some(Arc::new(known));
        }
    }

    /// The slot for `cid`, from its digest's first bytes.
    fn slot(&self, cid: &Cid) -> Option<usize> {
        let count = u64::try_from(self.slot_count).ok().filter(|&n| n > 0)?;
        let mut first = [0u8; 8];
        first.copy_from_slice(cid.digest().get(..8)?);
        usize::try_from(u64::from_le_bytes(first) % count).ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Arc<KnownBlock>>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let known = KnownBlocks::default();
        let car = Car::parse_known(&bytes, &limits, &known).unwrap();
        let root = Commit::of_car(&car, &limits).unwrap().data;
        let plain = walk(|c| car.block(c), root, path.as_bytes(), &limits).unwrap();
        assert_eq!(walk_known(|c| car.block(c), root, path.as_bytes(), &limits, &known).unwrap(), plain);
        let non_empty = plain.path.iter().filter(|(cid, _)| Node::decode(car.block(cid).unwrap(), &limits).is_ok_and(|n| !n.entries.is_empty())).count();
        assert!(non_empty >= 3, "{non_empty} non-empty nodes on the path");
        assert_eq!(known.len(), plain.path.len(), "every node on the path is held");
        let again = Car::parse_known(&bytes, &limits, &known).unwrap();
        let layered = plain.path.iter().filter(|(cid, _)| again.known_block(cid).and_then(|k| k.node(&limits).and_then(|(_, layer)| layer)).is_some()).count();
        assert_eq!(layered, non_empty, "the CAR reader found every remembered node, with a layer for each non-empty one");
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
        let known = KnownBlocks::default();
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

    /// The memo never holds more nodes than its slots, nor oversized nodes, nor an empty node's
    /// layer, and a disabled one holds nothing.
    #[test]
    fn the_memo_is_bounded_by_its_slots_and_keeps_no_oversized_node_nor_an_empty_node_s_layer() {
        // A node of `count` entries with keys `a/<i>`, `i` written `width` digits wide.
        let node = |first: usize, count: usize, width: usize| {
            let entries = (first..first + count)
                .map(|i| crate::mst::Entry { key: format!("a/{i:0>width$}").into_bytes(), value: Cid::for_dag_cbor(b"v"), right: None })
                .collect();
            let encoded = Node { left: None, entries }.encode();
            let mut flat = FlatNode::default();
            flat.decode_into(&encoded, &Limits::default()).unwrap();
            (Cid::for_dag_cbor(&encoded), encoded, flat)
        };
        let known = KnownBlocks::new(8);
        for i in 0..100 {
            let (cid, bytes, flat) = node(i, 1, 4);
            known.remember_node(&cid, &bytes, &flat, 0);
            assert!(known.holds(&cid, &bytes), "the newest node has its slot");
        }
        assert!(known.len() <= 8, "{} nodes in 8 slots", known.len());
        let (cid, bytes, flat) = node(0, 100, 40);
        assert!(bytes.len() < KnownBlocks::MAX_BLOCK_FOOTPRINT, "the block alone fits: {} bytes", bytes.len());
        assert!(bytes.len() + flat.footprint() > KnownBlocks::MAX_BLOCK_FOOTPRINT, "with its decoded keys it does not");
        known.remember_node(&cid, &bytes, &flat, 0);
        assert!(!known.holds(&cid, &bytes), "an oversized node is kept");
        let empty = Node { left: Some(Cid::for_dag_cbor(b"l")), entries: Vec::new() }.encode();
        let mut flat = FlatNode::default();
        flat.decode_into(&empty, &Limits::default()).unwrap();
        known.remember_node(&Cid::for_dag_cbor(&empty), &empty, &flat, 1);
        let held = known.get(&Cid::for_dag_cbor(&empty), &empty).expect("an empty node's decoding is kept");
        assert!(held.node(&Limits::default()).is_some_and(|(node, layer)| node.is_empty() && layer.is_none()), "its layer is its parent's");
        let disabled = KnownBlocks::disabled();
        let (cid, bytes, flat) = node(1, 1, 4);
        disabled.remember_node(&cid, &bytes, &flat, 0);
        assert!(disabled.is_empty() && !disabled.is_enabled());
    }

    fn check(car: &[u8], repo: &TestRepo, key: &crate::crypto::PublicKey, limits: &Limits, known: &KnownBlocks) -> crate::Verdict {
        crate::verify(&crate::ProofInput { known_blocks: Some(known), ..input_of(car, repo, key, limits) })
    }

    /// A verified proof leaves its commit (with its signed digest), its nodes and its record in
    /// the memo, and the next check of it uses them with the same verdict; a commit whose
    /// signature fails is never kept, and nothing is answered under other limits.
    #[test]
    fn a_check_remembers_its_commit_nodes_and_record_only_once_signed_and_only_for_its_limits() {
        use sha2::Digest as _;
        let limits = Limits::default();
        let mut repo = TestRepo::new(Identity::new(Curve::K256, "known"));
        repo.put_filler(500);
        let rkey = repo.put_manifest(&digest_of("known"), "app");
        let car = repo.proof(MANIFEST_COLLECTION, &rkey);
        let parsed = Car::parse(&car, &limits).unwrap();
        let root = parsed.root;
        let commit = Commit::of_car(&parsed, &limits).unwrap();

        let wrong = Identity::new(Curve::K256, "someone else").public_key();
        let known = KnownBlocks::default();
        let forged = check(&car, &repo, &wrong, &limits, &known);
        assert_eq!(forged.reason, crate::Reason::SignatureInvalid);
        assert!(known.is_empty(), "nothing from a proof whose signature failed");

        let key = repo.identity.public_key();
        let first = check(&car, &repo, &key, &limits, &known);
        assert!(first.is_verified(), "{}", first.message);
        let held = known.get(&root, parsed.block(&root).unwrap()).expect("the commit is held");
        let (held_commit, digest) = held.commit(&limits).unwrap();
        assert_eq!(held_commit, &commit);
        assert_eq!(digest, &<[u8; 32]>::from(sha2::Sha256::digest(commit.unsigned_bytes())));
        let record_cid = first.facts.record_cid.unwrap();
        assert_eq!(known.get(&record_cid, parsed.block(&record_cid).unwrap()).unwrap().record(&limits), first.facts.record.as_ref());
        assert_eq!(check(&car, &repo, &key, &limits, &known), first, "from the memo");
        assert_eq!(check(&car, &repo, &wrong, &limits, &known), forged, "a held commit still has its signature checked");

        // Other limits: the commit and record are read again, and a node over the entry limit is
        // refused as a fresh read refuses it.
        let deeper = Limits { max_cbor_depth: limits.max_cbor_depth + 1, ..limits };
        assert!(held.commit(&deeper).is_none() && known.get(&record_cid, parsed.block(&record_cid).unwrap()).unwrap().record(&deeper).is_none());
        let narrow = Limits { max_mst_node_entries: 1, ..limits };
        let without = crate::verify(&crate::ProofInput { known_blocks: None, ..input_of(&car, &repo, &key, &narrow) });
        assert_eq!(check(&car, &repo, &key, &narrow, &known), without);
        assert_eq!(without.reason, crate::Reason::ProofMalformed, "{}", without.message);
    }

    fn input_of<'a>(car: &'a [u8], repo: &'a TestRepo, key: &'a crate::crypto::PublicKey, limits: &'a Limits) -> crate::ProofInput<'a> {
        crate::ProofInput {
            car,
            key: crate::KeySource::Key(key),
            expect: crate::Expectation {
                did: &repo.identity.did,
                rkey: None,
                digest: Some(DIGEST.get_or_init(|| digest_of("known"))),
                repository: Some("app"),
            },
            now_micros: crate::testkit::T0_MICROS,
            max_clock_skew_micros: 0,
            limits,
            known_blocks: None,
        }
    }

    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
}
