//! Merkle Search Tree: key heights, node decoding with full validation, the inclusion /
//! absence walk, and a builder that produces the canonical tree for a set of keys.
//!
//! Every node visited is checked: entries sorted and unique, one height per node equal to the
//! expected layer, maximal prefix compression, keys inside the parent's gap, links only above
//! layer 0. Absence proofs are only sound with all of this checked.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::cbor::{self, CborError, Map, Value};
use crate::cid::{Cid, Codec};
use crate::limits::Limits;

mod build;
mod edit;
mod flat;
mod walk;

pub use build::build;
pub use edit::{Edit, apply};
pub use flat::FlatNode;
pub(crate) use walk::walk_car;
pub use walk::{Covering, Lookup, Walk, covering, walk, walk_known};

/// Maximum MST key length (both reference implementations).
pub const MAX_KEY_BYTES: usize = 1024;

/// The layer of a key: leading zero bits of SHA-256(key), divided by 2 (fanout 4).
/// Every entry of every node a walk visits is hashed, so keys that fit one SHA-256 block (all
/// record paths of 55 bytes or less) are padded here and compressed once, without the
/// streaming hasher's buffering; longer ones take the usual route.
pub fn key_height(key: &[u8]) -> u32 {
    let Some(state) = one_block_sha256(key) else {
        return leading_zero_bits(Sha256::digest(key).as_slice()) / 2;
    };
    // The digest is the state words, big-endian: count zeros word by word.
    let mut zeros = 0;
    for word in state {
        zeros += word.leading_zeros();
        if word != 0 {
            break;
        }
    }
    zeros / 2
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// The final state of SHA-256 over `message` when it fits one padded block (≤ 55 bytes).
fn one_block_sha256(message: &[u8]) -> Option<[u32; 8]> {
    let mut block = [0u8; 64];
    block.get_mut(..message.len()).filter(|_| message.len() <= 55)?.copy_from_slice(message);
    *block.get_mut(message.len())? = 0x80;
    let bits = (message.len() as u64 * 8).to_be_bytes();
    block.get_mut(56..)?.copy_from_slice(&bits);
    let mut state = SHA256_IV;
    sha2::block_api::compress256(&mut state, &[block]);
    Some(state)
}

fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut zeros = 0;
    for byte in digest {
        zeros += byte.leading_zeros();
        if *byte != 0 {
            break;
        }
    }
    zeros
}

/// Length of the common prefix of two keys, in bytes.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// True when `key` is a valid repository path: `collection/rkey`, both non-empty, allowed
/// characters only, at most [`MAX_KEY_BYTES`]. One pass over the bytes: every entry of
/// every node a walk visits is checked.
pub fn is_valid_key(key: &[u8]) -> bool {
    if key.len() > MAX_KEY_BYTES {
        return false;
    }
    let mut slash = None;
    for (i, byte) in key.iter().enumerate() {
        match key_byte(*byte) {
            KeyByte::Allowed => {}
            KeyByte::Slash if slash.is_none() => slash = Some(i),
            _ => return false,
        }
    }
    // Both parts non-empty.
    slash.is_some_and(|i| i > 0 && i + 1 < key.len())
}

/// What a byte may be in a repository path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyByte {
    Refused,
    Allowed,
    Slash,
}

/// ASCII letters and digits and `_~-:.` are allowed; `/` separates the two parts. (A match on
/// byte ranges, which the compiler turns into a table lookup.)
fn key_byte(byte: u8) -> KeyByte {
    match byte {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'~' | b'-' | b':' | b'.' => KeyByte::Allowed,
        b'/' => KeyByte::Slash,
        _ => KeyByte::Refused,
    }
}

/// One entry of a node, with its full key reconstructed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Full key.
    pub key: Vec<u8>,
    /// Record CID.
    pub value: Cid,
    /// Subtree between this entry and the next.
    pub right: Option<Cid>,
}

/// A decoded node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Node {
    /// Subtree left of all entries.
    pub left: Option<Cid>,
    /// Entries in key order.
    pub entries: Vec<Entry>,
}

/// Why an MST node or walk is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MstError {
    /// Not strict DAG-CBOR.
    Cbor(CborError),
    /// Not the `{e, l}` / `{k, p, t, v}` shape.
    Shape(&'static str),
    /// `p` larger than the previous key, or not the maximal common prefix.
    PrefixCompression,
    /// Key empty, too long, or not `collection/rkey`.
    InvalidKey,
    /// Keys not strictly ascending, or outside the parent's gap.
    KeyOrder,
    /// An entry's height differs from its node's layer.
    Height {
        /// Layer the node must be at.
        expected: u32,
        /// Height of the offending key.
        found: u32,
    },
    /// An entry-less node where one is not allowed, or links below layer 0.
    EmptyNode,
    /// A subtree link or record value that is not dag-cbor.
    LinkCodec,
    /// A node needed by the walk is not in the proof.
    MissingBlock(Cid),
    /// Deeper than `max_mst_depth`, or wider than `max_mst_node_entries`.
    TooLarge,
}

impl fmt::Display for MstError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MstError::Cbor(e) => write!(f, "MST node: {e}"),
            MstError::Shape(what) => write!(f, "MST node: {what}"),
            MstError::PrefixCompression => write!(f, "MST node: prefix compression is not canonical"),
            MstError::InvalidKey => write!(f, "MST node: invalid key"),
            MstError::KeyOrder => write!(f, "MST node: keys out of order or outside the parent's range"),
            MstError::Height { expected, found } => write!(f, "MST node: key of height {found} in a layer-{expected} node"),
            MstError::EmptyNode => write!(f, "MST node: empty node or link below layer 0"),
            MstError::LinkCodec => write!(f, "MST node: link is not dag-cbor"),
            MstError::MissingBlock(cid) => write!(f, "MST node {cid} is missing from the proof"),
            MstError::TooLarge => write!(f, "MST too deep or node too wide"),
        }
    }
}

impl std::error::Error for MstError {}

fn optional_link(value: Option<&Value>, what: &'static str) -> Result<Option<Cid>, MstError> {
    match value {
        Some(Value::Null) => Ok(None),
        Some(Value::Link(c)) if c.codec() == Codec::DagCbor => Ok(Some(*c)),
        Some(Value::Link(_)) => Err(MstError::LinkCodec),
        _ => Err(MstError::Shape(what)),
    }
}

impl Node {
    /// Decodes a node block, reconstructing keys and checking compression, key syntax and order.
    pub fn decode(block: &[u8], limits: &Limits) -> Result<Node, MstError> {
        let value = cbor::decode(block, 8).map_err(MstError::Cbor)?;
        let map = value.as_map().ok_or(MstError::Shape("not a map"))?;
        if map.0.len() != 2 {
            return Err(MstError::Shape("node must have exactly 'e' and 'l'"));
        }
        let left = optional_link(map.get("l"), "'l' must be a link or null")?;
        let raw_entries = map.get("e").and_then(Value::as_array).ok_or(MstError::Shape("'e' must be an array"))?;
        if raw_entries.len() > limits.max_mst_node_entries {
            return Err(MstError::TooLarge);
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(raw_entries.len());
        for raw in raw_entries {
            let entry = raw.as_map().ok_or(MstError::Shape("entry is not a map"))?;
            if entry.0.len() != 4 {
                return Err(MstError::Shape("entry must have exactly 'k', 'p', 't', 'v'"));
            }
            let prefix = entry.get("p").and_then(Value::as_integer).ok_or(MstError::Shape("'p' must be an integer"))?;
            let suffix = entry.get("k").and_then(Value::as_bytes).ok_or(MstError::Shape("'k' must be bytes"))?;
            let right = optional_link(entry.get("t"), "'t' must be a link or null")?;
            let value = match entry.get("v") {
                Some(Value::Link(c)) if c.codec() == Codec::DagCbor => *c,
                Some(Value::Link(_)) => return Err(MstError::LinkCodec),
                _ => return Err(MstError::Shape("'v' must be a link")),
            };
            let previous: &[u8] = entries.last().map_or(&[], |e| e.key.as_slice());
            let prefix = usize::try_from(prefix).map_err(|_| MstError::PrefixCompression)?;
            let shared = previous.get(..prefix).ok_or(MstError::PrefixCompression)?;
            let mut key = Vec::with_capacity(prefix + suffix.len());
            key.extend_from_slice(shared);
            key.extend_from_slice(suffix);
            if !is_valid_key(&key) {
                return Err(MstError::InvalidKey);
            }
            // Canonical form: `p` is the full common prefix with the previous key.
            if common_prefix_len(previous, &key) != prefix {
                return Err(MstError::PrefixCompression);
            }
            if previous >= key.as_slice() && !entries.is_empty() {
                return Err(MstError::KeyOrder);
            }
            entries.push(Entry { key, value, right });
        }
        Ok(Node { left, entries })
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut previous: &[u8] = &[];
        let mut entries = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let prefix = common_prefix_len(previous, &entry.key);
            let mut map = Map::default();
            map.insert("k", Value::Bytes(entry.key.get(prefix..).unwrap_or_default().to_vec()));
            map.insert("p", Value::Integer(prefix as i64));
            map.insert("t", entry.right.map_or(Value::Null, Value::Link));
            map.insert("v", Value::Link(entry.value));
            entries.push(Value::Map(map));
            previous = &entry.key;
        }
        let mut map = Map::default();
        map.insert("e", Value::Array(entries));
        map.insert("l", self.left.map_or(Value::Null, Value::Link));
        cbor::encode(&Value::Map(map))
    }
}

/// `a/aa`, `a/ab` encoded as a node whose second entry shares 2 bytes instead of the maximal 3:
/// valid DAG-CBOR, not canonical (for the decoders' tests).
#[cfg(test)]
pub(crate) fn short_prefix(good: &[u8]) -> Vec<u8> {
    let mut value = cbor::decode(good, 8).unwrap_or(Value::Null);
    if let Value::Map(m) = &mut value
        && let Some(Value::Array(e)) = m.0.iter_mut().find(|(k, _)| k == "e").map(|(_, v)| v)
        && let Some(Value::Map(second)) = e.get_mut(1)
    {
        second.insert("p", Value::Integer(2));
        second.insert("k", Value::Bytes(b"ab".to_vec()));
    }
    cbor::encode(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn key_heights_from_one_block_equal_the_digest_s_for_every_length() {
        for len in 0..=130usize {
            for fill in [b'a', b'0', 0xff] {
                let key = vec![fill; len];
                assert_eq!(key_height(&key), leading_zero_bits(Sha256::digest(&key).as_slice()) / 2, "{len} bytes of {fill}");
            }
        }
        // The spec's examples (atproto repository spec, "Merkle Search Tree").
        for (key, height) in [("2653ae71", 0), ("blue", 1), ("app.bsky.feed.post/454397e440ec", 4), ("app.bsky.feed.post/9adeb165882c", 8)] {
            assert_eq!(key_height(key.as_bytes()), height, "{key}");
        }
        // The state words are SHA-256's own digest.
        let state = one_block_sha256(b"").unwrap();
        assert_eq!(state[0], 0xe3b0c442, "SHA-256 of nothing");
    }

    /// The table-driven check equals the definition (split on `/`, two non-empty parts of
    /// allowed characters) on every short key over a telling alphabet.
    #[test]
    fn key_validity_equals_the_definition() {
        let definition = |key: &[u8]| {
            let allowed = |c: &u8| c.is_ascii_alphanumeric() || b"_~-:.".contains(c);
            let parts: Vec<&[u8]> = key.split(|&c| c == b'/').collect();
            key.len() <= MAX_KEY_BYTES && parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && p.iter().all(allowed))
        };
        let alphabet = [b'a', b'Z', b'0', b'_', b'~', b'-', b':', b'.', b'/', b' ', b'@', 0x80, 0xff, 0];
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        let mut level: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..4 {
            level = level.iter().flat_map(|k| alphabet.iter().map(move |c| [k.as_slice(), &[*c]].concat())).collect();
            keys.extend(level.iter().cloned());
        }
        assert!(keys.len() > 30_000);
        for key in &keys {
            assert_eq!(is_valid_key(key), definition(key), "{key:?}");
        }
        let long = [b"a/".as_slice(), &[b'b'; MAX_KEY_BYTES]].concat();
        assert!(!is_valid_key(&long) && !definition(&long));
        assert!(is_valid_key(&long[..MAX_KEY_BYTES]));
    }

    #[test]
    fn empty_tree_root() {
        let (root, blocks) = build(&BTreeMap::new());
        assert_eq!(root.to_string(), "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm");
        assert_eq!(blocks.len(), 1);
    }

    #[test]
    fn walk_finds_every_key_and_proves_absence() {
        let value = Cid::for_dag_cbor(b"leaf");
        let entries: BTreeMap<Vec<u8>, Cid> = (0..500).map(|i| (format!("com.example.record/{i:05}").into_bytes(), value)).collect();
        let (root, blocks) = build(&entries);
        let map: std::collections::HashMap<Cid, Vec<u8>> = blocks.into_iter().collect();
        let get = |c: &Cid| map.get(c).map(Vec::as_slice);
        for key in entries.keys() {
            let walk = walk(get, root, key, &Limits::default()).unwrap();
            assert_eq!(walk.lookup, Lookup::Present(value));
        }
        for absent in ["com.example.record/00000a", "com.example.record/99999", "a/b", "zzz/z"] {
            let walk = walk(get, root, absent.as_bytes(), &Limits::default()).unwrap();
            assert_eq!(walk.lookup, Lookup::Absent, "{absent}");
        }
    }

    #[test]
    fn rejects_non_canonical_prefix() {
        let v = Cid::for_dag_cbor(b"x");
        let node =
            Node { left: None, entries: vec![Entry { key: b"a/aa".to_vec(), value: v, right: None }, Entry { key: b"a/ab".to_vec(), value: v, right: None }] };
        let good = node.encode();
        assert!(Node::decode(&good, &Limits::default()).is_ok());
        assert_eq!(Node::decode(&short_prefix(&good), &Limits::default()), Err(MstError::PrefixCompression));
    }
}
