//! Edits on a tree known only in part: a root, the blocks at hand, every other subtree by its
//! CID. Puts and removes produce the root of the canonical tree of the edited key set (the
//! same tree [`super::build`] makes), loading only the nodes an edit touches; a node that is
//! needed and not at hand is [`MstError::MissingBlock`]. This is how a firehose consumer
//! checks a `#commit` (sync 1.1): the ops, inverted, applied to the new root with only the
//! blocks the frame carries, must give the previous root.
//!
//! The canonical tree for a set of keys: the node for a key range at layer `L` holds the keys
//! of height `L`, and each gap between them is the node of that sub-range at `L - 1` (none for
//! an empty range; a node with no entries when the range only has lower keys). So an edit of
//! key `k` changes only the nodes whose range holds `k`: inserting `k` at height `h` splits
//! the gap it lands in, at every layer below `h`, into the keys before and after it; removing
//! it merges the two gaps beside it back.

use super::{Entry, MstError, Node, key_height};
use crate::cid::Cid;
use crate::limits::Limits;

/// One edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Sets `key` to `value` (inserted, or replaced when present).
    Put(Vec<u8>, Cid),
    /// Removes `key`, which must be present.
    Remove(Vec<u8>),
}

/// A subtree: loaded, or known by its CID only.
enum Sub {
    Stub(Cid),
    Loaded(Box<Loaded>),
}

struct Loaded {
    left: Option<Sub>,
    entries: Vec<Item>,
}

struct Item {
    key: Vec<u8>,
    value: Cid,
    right: Option<Sub>,
}

struct Editor<'a, F: Fn(&Cid) -> Option<&'a [u8]>> {
    blocks: F,
    limits: &'a Limits,
}

/// The key is not where an edit needs it (removing an absent key).
fn absent() -> MstError {
    MstError::Shape("an edited key is not in the tree")
}

impl<'a, F: Fn(&Cid) -> Option<&'a [u8]>> Editor<'a, F> {
    /// The node of `sub`, decoded and checked to be a layer-`layer` node.
    fn load(&self, sub: Sub, layer: u32) -> Result<Loaded, MstError> {
        let cid = match sub {
            Sub::Loaded(node) => return Ok(*node),
            Sub::Stub(cid) => cid,
        };
        let block = (self.blocks)(&cid).ok_or(MstError::MissingBlock(cid))?;
        let node = Node::decode(block, self.limits)?;
        for entry in &node.entries {
            let found = key_height(&entry.key);
            if found != layer {
                return Err(MstError::Height { expected: layer, found });
            }
        }
        if layer == 0 && (node.left.is_some() || node.entries.iter().any(|e| e.right.is_some())) {
            return Err(MstError::EmptyNode);
        }
        Ok(Loaded {
            left: node.left.map(Sub::Stub),
            entries: node.entries.into_iter().map(|e| Item { key: e.key, value: e.value, right: e.right.map(Sub::Stub) }).collect(),
        })
    }

    /// The gap of `node` that holds keys before entry `index` (after the one before it).
    fn gap(node: &mut Loaded, index: usize) -> &mut Option<Sub> {
        match index.checked_sub(1).and_then(|i| node.entries.get_mut(i)) {
            Some(previous) => &mut previous.right,
            None => &mut node.left,
        }
    }

    fn below(layer: u32) -> Result<u32, MstError> {
        layer.checked_sub(1).ok_or(MstError::EmptyNode)
    }

    fn finish(node: Loaded) -> Option<Sub> {
        if node.entries.is_empty() && node.left.is_none() { None } else { Some(Sub::Loaded(Box::new(node))) }
    }

    /// The keys of `sub` (a layer-`layer` subtree) before and after `key` (which it lacks).
    fn split(&self, sub: Option<Sub>, key: &[u8], layer: u32) -> Result<(Option<Sub>, Option<Sub>), MstError> {
        let Some(sub) = sub else { return Ok((None, None)) };
        let mut node = self.load(sub, layer)?;
        let index = node.entries.partition_point(|e| e.key.as_slice() < key);
        if node.entries.get(index).is_some_and(|e| e.key == key) {
            return Err(MstError::Shape("a key to insert is already in the tree"));
        }
        let gap = Self::gap(&mut node, index).take();
        let (before, after) = if gap.is_some() { self.split(gap, key, Self::below(layer)?)? } else { (None, None) };
        let right_entries = node.entries.split_off(index);
        *Self::gap(&mut node, index) = before;
        let right = Loaded { left: after, entries: right_entries };
        Ok((Self::finish(node), Self::finish(right)))
    }

    /// One layer-`layer` subtree of the keys of `a` then those of `b` (all of `a` before `b`).
    fn merge(&self, a: Option<Sub>, b: Option<Sub>, layer: u32) -> Result<Option<Sub>, MstError> {
        let (a, b) = match (a, b) {
            (None, b) => return Ok(b),
            (a, None) => return Ok(a),
            (Some(a), Some(b)) => (self.load(a, layer)?, self.load(b, layer)?),
        };
        let mut a = a;
        let mut b = b;
        let end = a.entries.len();
        let boundary = Self::gap(&mut a, end).take();
        let start = b.left.take();
        let joined = if boundary.is_some() || start.is_some() { self.merge(boundary, start, Self::below(layer)?)? } else { None };
        *Self::gap(&mut a, end) = joined;
        a.entries.append(&mut b.entries);
        Ok(Self::finish(a))
    }

    /// Inserts or replaces `key` in a layer-`layer` subtree (`height` ≤ `layer`).
    fn put(&self, sub: Option<Sub>, key: &[u8], value: Cid, height: u32, layer: u32) -> Result<Option<Sub>, MstError> {
        let Some(sub) = sub else { return single(key, value, height, layer).map(Some) };
        let mut node = self.load(sub, layer)?;
        let index = node.entries.partition_point(|e| e.key.as_slice() < key);
        if let Some(entry) = node.entries.get_mut(index).filter(|e| e.key == key) {
            entry.value = value;
            return Ok(Self::finish(node));
        }
        let gap = Self::gap(&mut node, index).take();
        if height == layer {
            let (before, after) = if gap.is_some() { self.split(gap, key, Self::below(layer)?)? } else { (None, None) };
            *Self::gap(&mut node, index) = before;
            node.entries.insert(index, Item { key: key.to_vec(), value, right: after });
        } else {
            *Self::gap(&mut node, index) = self.put(gap, key, value, height, Self::below(layer)?)?;
        }
        Ok(Self::finish(node))
    }

    /// Removes `key` (of `height`) from a layer-`layer` subtree.
    fn remove(&self, sub: Option<Sub>, key: &[u8], height: u32, layer: u32) -> Result<Option<Sub>, MstError> {
        let mut node = self.load(sub.ok_or_else(absent)?, layer)?;
        let index = node.entries.partition_point(|e| e.key.as_slice() < key);
        if height == layer {
            if node.entries.get(index).is_none_or(|e| e.key != key) {
                return Err(absent());
            }
            let removed = node.entries.remove(index);
            let before = Self::gap(&mut node, index).take();
            let merged = if before.is_some() || removed.right.is_some() { self.merge(before, removed.right, Self::below(layer)?)? } else { None };
            *Self::gap(&mut node, index) = merged;
        } else {
            let gap = Self::gap(&mut node, index).take();
            *Self::gap(&mut node, index) = self.remove(gap, key, height, Self::below(layer)?)?;
        }
        Ok(Self::finish(node))
    }

    /// Whether `key` is in a layer-`layer` subtree (loading the nodes on its path).
    fn contains(&self, sub: &mut Option<Sub>, key: &[u8], layer: u32) -> Result<bool, MstError> {
        let Some(taken) = sub.take() else { return Ok(false) };
        let mut node = self.load(taken, layer)?;
        let index = node.entries.partition_point(|e| e.key.as_slice() < key);
        let found = if node.entries.get(index).is_some_and(|e| e.key == key) {
            true
        } else {
            match layer.checked_sub(1) {
                Some(below) => self.contains(Self::gap(&mut node, index), key, below)?,
                None => false,
            }
        };
        *sub = Some(Sub::Loaded(Box::new(node)));
        Ok(found)
    }

    /// The root subtree and its layer: `None` for the empty tree.
    fn root(&self, root: Cid) -> Result<(Option<Sub>, u32), MstError> {
        let block = (self.blocks)(&root).ok_or(MstError::MissingBlock(root))?;
        let node = Node::decode(block, self.limits)?;
        match node.entries.first() {
            None if node.left.is_none() => Ok((None, 0)),
            // The root is the node of the highest key: one without keys is not canonical.
            None => Err(MstError::EmptyNode),
            Some(first) => Ok((Some(Sub::Stub(root)), key_height(&first.key))),
        }
    }
}

/// The subtree holding only `key` at layer `layer` (a chain of empty nodes down to its height).
fn single(key: &[u8], value: Cid, height: u32, layer: u32) -> Result<Sub, MstError> {
    let mut sub = Sub::Loaded(Box::new(Loaded { left: None, entries: vec![Item { key: key.to_vec(), value, right: None }] }));
    for _ in height..layer {
        sub = Sub::Loaded(Box::new(Loaded { left: Some(sub), entries: Vec::new() }));
    }
    Ok(sub)
}

/// The CID of `sub` (loaded nodes encoded, bottom up; stubs as they are).
fn encode(sub: Sub) -> Cid {
    match sub {
        Sub::Stub(cid) => cid,
        Sub::Loaded(node) => {
            let node = *node;
            let left = node.left.map(encode);
            let entries = node.entries.into_iter().map(|e| Entry { key: e.key, value: e.value, right: e.right.map(encode) }).collect();
            Cid::for_dag_cbor(&Node { left, entries }.encode())
        }
    }
}

/// The root of the tree at `root` after `edits`, in order, using only the blocks `blocks`
/// finds (the nodes an edit touches must be among them). Work is bounded by the edits: each
/// loads only the nodes on its key's path and on the two spines beside it, a few per
/// layer, and a layer is a key height (at most 128).
pub fn apply<'a>(blocks: impl Fn(&Cid) -> Option<&'a [u8]>, root: Cid, edits: &[Edit], limits: &'a Limits) -> Result<Cid, MstError> {
    let editor = Editor { blocks, limits };
    let (mut tree, mut layer) = editor.root(root)?;
    for edit in edits {
        match edit {
            Edit::Put(key, value) => {
                if !super::is_valid_key(key) {
                    return Err(MstError::InvalidKey);
                }
                let height = key_height(key);
                if tree.is_none() {
                    tree = Some(single(key, *value, height, height)?);
                    layer = height;
                } else if height > layer && !editor.contains(&mut tree, key, layer)? {
                    // A key above the root: the tree grows, the old root split around it.
                    let (mut before, mut after) = editor.split(tree.take(), key, layer)?;
                    for _ in layer + 1..height {
                        before = before.map(|s| Sub::Loaded(Box::new(Loaded { left: Some(s), entries: Vec::new() })));
                        after = after.map(|s| Sub::Loaded(Box::new(Loaded { left: Some(s), entries: Vec::new() })));
                    }
                    tree = Some(Sub::Loaded(Box::new(Loaded { left: before, entries: vec![Item { key: key.clone(), value: *value, right: after }] })));
                    layer = height;
                } else {
                    tree = editor.put(tree.take(), key, *value, height, layer)?;
                }
            }
            Edit::Remove(key) => {
                let height = key_height(key);
                if height > layer {
                    return Err(absent());
                }
                tree = editor.remove(tree.take(), key, height, layer)?;
                // The root is the highest node with keys: empty ones above it go.
                while let Some(sub) = tree.take() {
                    let node = editor.load(sub, layer)?;
                    match (node.entries.is_empty(), layer.checked_sub(1)) {
                        (true, Some(below)) => {
                            tree = node.left;
                            layer = below;
                        }
                        (true, None) => break,
                        (false, _) => {
                            tree = Some(Sub::Loaded(Box::new(node)));
                            break;
                        }
                    }
                }
                if tree.is_none() {
                    layer = 0;
                }
            }
        }
    }
    Ok(match tree {
        Some(sub) => encode(sub),
        None => Cid::for_dag_cbor(&Node::default().encode()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn value() -> Cid {
        Cid::for_dag_cbor(b"\xa0")
    }

    fn other() -> Cid {
        Cid::for_dag_cbor(b"\xa1\x61a\x01")
    }

    fn tree(keys: &[String]) -> (Cid, HashMap<Cid, Vec<u8>>) {
        let entries: BTreeMap<Vec<u8>, Cid> = keys.iter().map(|k| (k.as_bytes().to_vec(), value())).collect();
        let (root, blocks) = super::super::build(&entries);
        (root, blocks.into_iter().collect())
    }

    /// A small deterministic generator (no dependency for tests).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn edits_on_the_whole_tree_give_the_canonical_tree_of_the_edited_set() {
        let limits = Limits::default();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..2000 {
            let size = (rng.next() % 60) as usize;
            let mut keys: Vec<String> = (0..size).map(|_| format!("app.bsky.feed.post/{:08}", rng.next() % 100_000)).collect();
            keys.sort();
            keys.dedup();
            let (root, blocks) = tree(&keys);
            let mut edited: std::collections::BTreeSet<String> = keys.iter().cloned().collect();
            let mut edits = Vec::new();
            let mut replaced = std::collections::BTreeSet::new();
            for _ in 0..1 + rng.next() % 4 {
                if !edited.is_empty() && rng.next() % 2 == 0 {
                    let victim = edited.iter().nth((rng.next() as usize) % edited.len()).cloned().unwrap();
                    edited.remove(&victim);
                    edits.push(Edit::Remove(victim.into_bytes()));
                } else if !edited.is_empty() && rng.next() % 3 == 0 {
                    // A present key put again: its value changes, the shape does not.
                    let key = edited.iter().nth((rng.next() as usize) % edited.len()).cloned().unwrap();
                    replaced.insert(key.clone());
                    edits.push(Edit::Put(key.into_bytes(), other()));
                } else {
                    let key = format!("app.bsky.feed.post/{:08}", 100_000 + rng.next() % 100_000);
                    edited.insert(key.clone());
                    replaced.remove(&key);
                    edits.push(Edit::Put(key.into_bytes(), value()));
                }
            }
            let expected_entries: BTreeMap<Vec<u8>, Cid> =
                edited.iter().map(|k| (k.as_bytes().to_vec(), if replaced.contains(k) { other() } else { value() })).collect();
            let expected = super::super::build(&expected_entries).0;
            let got = apply(|c| blocks.get(c).map(Vec::as_slice), root, &edits, &limits).unwrap();
            assert_eq!(got, expected, "round {round}: {keys:?} {edits:?}");
        }
    }

    #[test]
    fn a_needed_block_that_is_missing_is_said() {
        let limits = Limits::default();
        let keys: Vec<String> = (0..40).map(|i| format!("app.bsky.feed.post/{i:04}")).collect();
        let (root, blocks) = tree(&keys);
        let only_root = |c: &Cid| if *c == root { blocks.get(c).map(Vec::as_slice) } else { None };
        let result = apply(only_root, root, &[Edit::Remove(b"app.bsky.feed.post/0001".to_vec())], &limits);
        assert!(matches!(result, Err(MstError::MissingBlock(_))), "{result:?}");
        let absent = apply(|c| blocks.get(c).map(Vec::as_slice), root, &[Edit::Remove(b"app.bsky.feed.post/9999".to_vec())], &limits);
        assert!(absent.is_err());
    }
}
