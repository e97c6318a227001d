//! CAR v1 reader with limits. Every block is hash-checked against its CID as it is read,
//! so a [`Car`] only ever holds blocks whose bytes match their names.
//! CARv2, CIDv0, identity hashes and non-blessed CIDs are rejected.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::cbor::{self, CborError, Value};
use crate::cid::{Cid, CidError};
use crate::encoding::read_varint;
use crate::known::{KnownBlock, KnownBlocks};
use crate::limits::Limits;

/// A parsed CAR: its first root and its verified blocks, borrowed from the input.
#[derive(Debug)]
pub struct Car<'a> {
    /// First header root (for a proof: the commit).
    pub root: Cid,
    /// Number of roots in the header.
    pub root_count: usize,
    /// Block CIDs in file order (the first of identical duplicates), and their bytes.
    order: Vec<Cid>,
    data: Vec<&'a [u8]>,
    /// Position by CID, built only past [`Car::SCANNED_BLOCKS`]: a proof has a handful of
    /// blocks, where comparing CIDs beats hashing them.
    index: HashMap<Cid, usize>,
    /// For [`Car::parse_known`]: the held block each block is, by position (empty otherwise).
    known: Vec<Option<Arc<KnownBlock>>>,
}

/// Why bytes are not an acceptable CAR v1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CarError {
    /// Larger than `max_car_bytes`.
    TooLarge(usize),
    /// Header length varint is missing or malformed.
    HeaderLength,
    /// Header longer than `max_car_header_bytes` or than the input.
    HeaderTooLarge(u64),
    /// Header is not strict DAG-CBOR.
    HeaderCbor(CborError),
    /// Header is not a map with `version` and `roots`.
    HeaderShape(&'static str),
    /// `version` is not 1 (2 means CARv2).
    UnsupportedVersion(i64),
    /// `roots` is empty.
    NoRoots,
    /// A section length varint is malformed, or longer than the input.
    SectionLength {
        /// Byte offset of the section.
        offset: usize,
    },
    /// A section larger than `max_block_bytes`.
    BlockTooLarge {
        /// Byte offset of the section.
        offset: usize,
        /// Declared size.
        size: u64,
    },
    /// A section CID that is not blessed.
    BlockCid {
        /// Byte offset of the section.
        offset: usize,
        /// What is wrong with it.
        error: CidError,
    },
    /// Block bytes that do not hash to their CID.
    HashMismatch(Cid),
    /// More than `max_blocks` blocks.
    TooManyBlocks(usize),
}

impl fmt::Display for CarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CarError::TooLarge(n) => write!(f, "CAR is {n} bytes, over the limit"),
            CarError::HeaderLength => write!(f, "CAR header length is malformed"),
            CarError::HeaderTooLarge(n) => write!(f, "CAR header of {n} bytes is too large or truncated"),
            CarError::HeaderCbor(e) => write!(f, "CAR header: {e}"),
            CarError::HeaderShape(what) => write!(f, "CAR header: {what}"),
            CarError::UnsupportedVersion(2) => write!(f, "CARv2 is not supported (atproto uses CAR v1)"),
            CarError::UnsupportedVersion(v) => write!(f, "CAR version {v} is not supported"),
            CarError::NoRoots => write!(f, "CAR header has no roots"),
            CarError::SectionLength { offset } => write!(f, "CAR section at byte {offset} has a bad length"),
            CarError::BlockTooLarge { offset, size } => write!(f, "CAR block at byte {offset} is {size} bytes, over the limit"),
            CarError::BlockCid { offset, error } => write!(f, "CAR block at byte {offset}: {error}"),
            CarError::HashMismatch(cid) => write!(f, "block {cid} does not hash to its CID"),
            CarError::TooManyBlocks(n) => write!(f, "CAR has more than {n} blocks"),
        }
    }
}

impl std::error::Error for CarError {}

impl<'a> Car<'a> {
    /// Parses and hash-checks a whole CAR v1.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Car<'a>, CarError> {
        static NONE: KnownBlocks = KnownBlocks::disabled();
        Car::parse_known(bytes, limits, &NONE)
    }

    /// [`Car::parse`], except that a block whose bytes are exactly those of a block `known`
    /// holds under the same CID is not hashed again (those bytes hashed to it before). Same CAR,
    /// same error.
    pub fn parse_known(bytes: &'a [u8], limits: &Limits, known: &KnownBlocks) -> Result<Car<'a>, CarError> {
        if bytes.len() > limits.max_car_bytes {
            return Err(CarError::TooLarge(bytes.len()));
        }
        let (header_len, used) = read_varint(bytes).ok_or(CarError::HeaderLength)?;
        if header_len > limits.max_car_header_bytes as u64 {
            return Err(CarError::HeaderTooLarge(header_len));
        }
        let header_end = used.saturating_add(header_len as usize);
        let header_bytes = bytes.get(used..header_end).ok_or(CarError::HeaderTooLarge(header_len))?;
        let (root, root_count) = match one_root_header(header_bytes) {
            Some(root) => (root, 1),
            None => header_roots(header_bytes)?,
        };
        // Room for a proof's blocks up front; a repository's grow as read.
        let room = Car::SCANNED_BLOCKS;
        let mut car = Car { root, root_count, order: Vec::with_capacity(room), data: Vec::with_capacity(room), index: HashMap::new(), known: Vec::new() };
        let mut offset = header_end;
        while offset < bytes.len() {
            let rest = bytes.get(offset..).unwrap_or_default();
            let (section_len, used) = read_varint(rest).ok_or(CarError::SectionLength { offset })?;
            if section_len > (limits.max_block_bytes + Cid::LEN) as u64 {
                return Err(CarError::BlockTooLarge { offset, size: section_len });
            }
            let section = rest.get(used..used.saturating_add(section_len as usize)).ok_or(CarError::SectionLength { offset })?;
            let (cid, cid_len) = Cid::read_prefix(section).map_err(|error| CarError::BlockCid { offset, error })?;
            let data = section.get(cid_len..).ok_or(CarError::SectionLength { offset })?;
            let held = known.get(&cid, data);
            if held.is_none() && !cid.matches(data) {
                return Err(CarError::HashMismatch(cid));
            }
            // Identical duplicates are harmless (the hash matched); keep the first.
            if car.position(&cid).is_none() {
                car.push(cid, data);
                if known.is_enabled() {
                    if car.known.is_empty() {
                        car.known.reserve(room);
                    }
                    car.known.push(held);
                }
                if car.order.len() > limits.max_blocks {
                    return Err(CarError::TooManyBlocks(limits.max_blocks));
                }
            }
            offset += used + section.len();
        }
        Ok(car)
    }

    /// Up to this many blocks, lookups scan; beyond it, they go through the index.
    const SCANNED_BLOCKS: usize = 16;

    fn position(&self, cid: &Cid) -> Option<usize> {
        if self.order.len() <= Car::SCANNED_BLOCKS { self.order.iter().position(|c| c == cid) } else { self.index.get(cid).copied() }
    }

    fn push(&mut self, cid: Cid, data: &'a [u8]) {
        self.order.push(cid);
        self.data.push(data);
        match self.order.len() {
            n if n <= Car::SCANNED_BLOCKS => {}
            n if n == Car::SCANNED_BLOCKS + 1 => self.index = self.order.iter().enumerate().map(|(i, c)| (*c, i)).collect(),
            n => {
                self.index.insert(cid, n - 1);
            }
        }
    }

    /// The verified bytes of block `cid`, if present.
    pub fn block(&self, cid: &Cid) -> Option<&'a [u8]> {
        self.position(cid).and_then(|i| self.data.get(i).copied())
    }

    /// The held block `cid` is, when [`Car::parse_known`] found it in its memo.
    pub(crate) fn known_block(&self, cid: &Cid) -> Option<Arc<KnownBlock>> {
        self.position(cid).and_then(|i| self.known.get(i)?.clone())
    }

    /// Number of distinct blocks.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when the CAR has no blocks.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Block CIDs in file order.
    pub fn cids(&self) -> &[Cid] {
        &self.order
    }
}

/// The root of the usual header, `{roots: [cid], version: 1}` in canonical form, read without
/// a value tree; `None` for any other header, which [`header_roots`] then reads in full (so
/// both give the same root or the same error).
fn one_root_header(header: &[u8]) -> Option<Cid> {
    let mut cursor = cbor::Cursor::new(header);
    if cursor.map_len()? != 2 {
        return None;
    }
    cursor.key(b"roots")?;
    if cursor.array_len()? != 1 {
        return None;
    }
    let root = cursor.link()?;
    cursor.key(b"version")?;
    (cursor.unsigned()? == 1 && cursor.is_done()).then_some(root)
}

/// The first root and the number of roots of any header (the general route).
fn header_roots(header: &[u8]) -> Result<(Cid, usize), CarError> {
    let header = cbor::decode(header, 4).map_err(CarError::HeaderCbor)?;
    let map = header.as_map().ok_or(CarError::HeaderShape("not a map"))?;
    match map.get("version") {
        Some(Value::Integer(1)) => {}
        Some(Value::Integer(v)) => return Err(CarError::UnsupportedVersion(*v)),
        _ => return Err(CarError::HeaderShape("version is missing or not an integer")),
    }
    let roots = map.get("roots").and_then(Value::as_array).ok_or(CarError::HeaderShape("roots is missing or not an array"))?;
    let root_cids: Vec<Cid> = roots.iter().map(|r| r.as_link().ok_or(CarError::HeaderShape("a root is not a CID link"))).collect::<Result<_, _>>()?;
    Ok((*root_cids.first().ok_or(CarError::NoRoots)?, root_cids.len()))
}

/// Writes a CAR v1 with one root (for the test kit, bundles and attached proofs).
pub fn write_car<'b>(root: &Cid, blocks: impl IntoIterator<Item = (Cid, &'b [u8])>) -> Vec<u8> {
    let mut header = cbor::Map::default();
    header.insert("roots", Value::Array(vec![Value::Link(*root)]));
    header.insert("version", Value::Integer(1));
    let header = cbor::encode(&Value::Map(header));
    let mut out = Vec::new();
    crate::encoding::write_varint(header.len() as u64, &mut out);
    out.extend_from_slice(&header);
    for (cid, data) in blocks {
        crate::encoding::write_varint((Cid::LEN + data.len()) as u64, &mut out);
        out.extend_from_slice(&cid.to_bytes());
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_is_59_bytes() {
        let block = cbor::encode(&Value::Text("hi".into()));
        let cid = Cid::for_dag_cbor(&block);
        let car = write_car(&cid, [(cid, block.as_slice())]);
        assert_eq!(car.first(), Some(&0x3a), "header length 58 for one root");
        let parsed = Car::parse(&car, &Limits::default()).unwrap();
        assert_eq!(parsed.root, cid);
        assert_eq!(parsed.block(&cid), Some(block.as_slice()));
    }

    #[test]
    fn every_block_is_found_below_and_above_the_scanned_size_and_duplicates_keep_the_first() {
        for count in [1, Car::SCANNED_BLOCKS, Car::SCANNED_BLOCKS + 1, 200] {
            let blocks: Vec<Vec<u8>> = (0..count).map(|i| cbor::encode(&Value::Integer(i as i64))).collect();
            let cids: Vec<Cid> = blocks.iter().map(|b| Cid::for_dag_cbor(b)).collect();
            let mut listed: Vec<(Cid, &[u8])> = cids.iter().copied().zip(blocks.iter().map(Vec::as_slice)).collect();
            listed.push(listed[0]);
            let bytes = write_car(&cids[0], listed);
            let car = Car::parse(&bytes, &Limits::default()).unwrap();
            assert_eq!((car.len(), car.cids()), (count, cids.as_slice()));
            for (cid, block) in cids.iter().zip(&blocks) {
                assert_eq!(car.block(cid), Some(block.as_slice()), "{count} blocks");
            }
            assert_eq!(car.block(&Cid::for_dag_cbor(b"absent")), None);
        }
    }

    #[test]
    fn the_usual_header_read_with_the_cursor_equals_the_general_read() {
        let cid = Cid::for_dag_cbor(b"root");
        let header = |roots: Vec<Value>, version: i64| {
            let mut map = cbor::Map::default();
            map.insert("roots", Value::Array(roots));
            map.insert("version", Value::Integer(version));
            cbor::encode(&Value::Map(map))
        };
        let usual = header(vec![Value::Link(cid)], 1);
        assert_eq!(one_root_header(&usual), Some(cid));
        assert_eq!(header_roots(&usual), Ok((cid, 1)));
        for other in [header(vec![Value::Link(cid), Value::Link(cid)], 1), header(vec![], 1), header(vec![Value::Link(cid)], 2), header(vec![Value::Null], 1)] {
            assert_eq!(one_root_header(&other), None);
        }
        assert_eq!(header_roots(&header(vec![Value::Link(cid), Value::Link(cid)], 1)), Ok((cid, 2)));
        assert_eq!(header_roots(&header(vec![], 1)), Err(CarError::NoRoots));
        assert_eq!(header_roots(&header(vec![Value::Link(cid)], 2)), Err(CarError::UnsupportedVersion(2)));
    }

    #[test]
    fn rejects_carv2_pragma() {
        let pragma = [0x0a, 0xa1, 0x67, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x02];
        assert_eq!(Car::parse(&pragma, &Limits::default()).unwrap_err(), CarError::UnsupportedVersion(2));
    }

    #[test]
    fn rejects_tampered_block_and_truncation() {
        let block = cbor::encode(&Value::Text("hi".into()));
        let cid = Cid::for_dag_cbor(&block);
        let mut car = write_car(&cid, [(cid, block.as_slice())]);
        let last = car.len() - 1;
        car[last] ^= 1;
        assert_eq!(Car::parse(&car, &Limits::default()).unwrap_err(), CarError::HashMismatch(cid));
        car.truncate(last);
        assert!(matches!(Car::parse(&car, &Limits::default()).unwrap_err(), CarError::SectionLength { .. }));
    }
}
