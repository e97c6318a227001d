//! The strict decoder: canonical DAG-CBOR only, depth-bounded, allocation backed by input.

use std::fmt;

use super::{Map, Value};
use crate::cid::{Cid, CidError};

/// Why bytes are not strict DAG-CBOR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CborError {
    /// Input ended inside an item.
    Truncated,
    /// Bytes after the top-level item.
    TrailingBytes,
    /// A length or integer head longer than needed.
    NonMinimal,
    /// Indefinite-length item.
    Indefinite,
    /// Any floating-point number.
    Float,
    /// Simple value other than false/true/null, or a reserved additional-info value.
    UnsupportedSimple(u8),
    /// A tag other than 42.
    UnsupportedTag(u64),
    /// Tag 42 that does not wrap `0x00` + a blessed binary CID.
    BadLink(Option<CidError>),
    /// Integer outside the signed 64-bit range.
    IntegerRange,
    /// Map key that is not a text string.
    NonTextKey,
    /// Map keys out of canonical order, or duplicated.
    KeyOrder,
    /// Text string not valid UTF-8.
    Utf8,
    /// Nesting deeper than the limit.
    TooDeep,
    /// An array or map announcing more items than the input could hold.
    Length,
}

impl fmt::Display for CborError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CborError::Truncated => write!(f, "truncated CBOR"),
            CborError::TrailingBytes => write!(f, "bytes after the CBOR item"),
            CborError::NonMinimal => write!(f, "non-minimal CBOR integer or length"),
            CborError::Indefinite => write!(f, "indefinite-length CBOR item"),
            CborError::Float => write!(f, "floating-point number (not allowed in atproto)"),
            CborError::UnsupportedSimple(v) => write!(f, "unsupported CBOR simple value {v}"),
            CborError::UnsupportedTag(t) => write!(f, "unsupported CBOR tag {t}"),
            CborError::BadLink(Some(e)) => write!(f, "bad CID link: {e}"),
            CborError::BadLink(None) => write!(f, "bad CID link: missing 0x00 prefix"),
            CborError::IntegerRange => write!(f, "integer outside the 64-bit signed range"),
            CborError::NonTextKey => write!(f, "map key is not a text string"),
            CborError::KeyOrder => write!(f, "map keys not in canonical order or duplicated"),
            CborError::Utf8 => write!(f, "text is not UTF-8"),
            CborError::TooDeep => write!(f, "CBOR nesting too deep"),
            CborError::Length => write!(f, "CBOR length larger than the input"),
        }
    }
}

impl std::error::Error for CborError {}

/// Most items reserved up front for an array or map; beyond that, vectors grow with the items
/// actually decoded (each at least one input byte), so memory stays proportional to the input.
const PREALLOCATE_MAX: usize = 256;

/// Default nesting limit: atproto records are shallow; commits and MST nodes are depth 3.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Decodes exactly one strict DAG-CBOR item spanning all of `bytes`.
pub fn decode(bytes: &[u8], max_depth: usize) -> Result<Value, CborError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(max_depth)?;
    if reader.pos != bytes.len() {
        return Err(CborError::TrailingBytes);
    }
    Ok(value)
}

/// Decodes one item at the start of `bytes`, returning it and the bytes consumed
/// (for formats that embed CBOR, such as the CAR header).
pub fn decode_prefix(bytes: &[u8], max_depth: usize) -> Result<(Value, usize), CborError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(max_depth)?;
    Ok((value, reader.pos))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], CborError> {
        let end = self.pos.checked_add(n).ok_or(CborError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(CborError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, CborError> {
        let b = *self.bytes.get(self.pos).ok_or(CborError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads the argument of a head with additional info `info`, enforcing shortest form.
    #[inline]
    fn argument(&mut self, info: u8) -> Result<u64, CborError> {
        let (value, min) = match info {
            0..=23 => return Ok(u64::from(info)),
            24 => (u64::from(self.byte()?), 24),
            25 => (u64::from(u16::from_be_bytes(self.array()?)), 0x100),
            26 => (u64::from(u32::from_be_bytes(self.array()?)), 0x1_0000),
            27 => (u64::from_be_bytes(self.array()?), 0x1_0000_0000),
            31 => return Err(CborError::Indefinite),
            _ => return Err(CborError::UnsupportedSimple(info)),
        };
        if value < min {
            return Err(CborError::NonMinimal);
        }
        Ok(value)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CborError> {
        let slice = self.take(N)?;
        slice.try_into().map_err(|_| CborError::Truncated)
    }

    /// A length that must be backed by at least `length * min_item_bytes` remaining bytes.
    #[inline]
    fn length(&mut self, info: u8, min_item_bytes: usize) -> Result<usize, CborError> {
        let n = self.argument(info)?;
        let n = usize::try_from(n).map_err(|_| CborError::Length)?;
        if n.checked_mul(min_item_bytes).is_none_or(|need| need > self.remaining()) {
            return Err(if min_item_bytes == 1 { CborError::Truncated } else { CborError::Length });
        }
        Ok(n)
    }

    fn text(&mut self, info: u8) -> Result<String, CborError> {
        let n = self.length(info, 1)?;
        let raw = self.take(n)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| CborError::Utf8)
    }

    fn value(&mut self, depth: usize) -> Result<Value, CborError> {
        let head = self.byte()?;
        let (major, info) = (head >> 5, head & 0x1f);
        match major {
            0 => {
                let n = self.argument(info)?;
                i64::try_from(n).map(Value::Integer).map_err(|_| CborError::IntegerRange)
            }
            1 => {
                let n = self.argument(info)?;
                let n = i64::try_from(n).map_err(|_| CborError::IntegerRange)?;
                Ok(Value::Integer(-1 - n))
            }
            2 => {
                let n = self.length(info, 1)?;
                Ok(Value::Bytes(self.take(n)?.to_vec()))
            }
            3 => Ok(Value::Text(self.text(info)?)),
            4 => self.sequence(info, depth),
            5 => self.map(info, depth),
            6 => self.link(info),
            _ => match info {
                20 => Ok(Value::Bool(false)),
                21 => Ok(Value::Bool(true)),
                22 => Ok(Value::Null),
                25..=27 => Err(CborError::Float),
                31 => Err(CborError::Indefinite),
                other => Err(CborError::UnsupportedSimple(other)),
            },
        }
    }

    fn sequence(&mut self, info: u8, depth: usize) -> Result<Value, CborError> {
        let depth = depth.checked_sub(1).ok_or(CborError::TooDeep)?;
        let n = self.length(info, 1)?;
        // Capacity is capped: nested arrays could each claim the whole remaining input.
        let mut items = Vec::with_capacity(n.min(PREALLOCATE_MAX));
        for _ in 0..n {
            items.push(self.value(depth)?);
        }
        Ok(Value::Array(items))
    }

    /// A map: text keys only, in canonical order (which also rules out duplicates).
    fn map(&mut self, info: u8, depth: usize) -> Result<Value, CborError> {
        let depth = depth.checked_sub(1).ok_or(CborError::TooDeep)?;
        let n = self.length(info, 2)?;
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(n.min(PREALLOCATE_MAX));
        for _ in 0..n {
            let key_head = self.byte()?;
            if key_head >> 5 != 3 {
                return Err(CborError::NonTextKey);
            }
            let key = self.text(key_head & 0x1f)?;
            if let Some((previous, _)) = entries.last()
                && !key_precedes(previous, &key)
            {
                return Err(CborError::KeyOrder);
            }
            let value = self.value(depth)?;
            entries.push((key, value));
        }
        Ok(Value::Map(Map(entries)))
    }

    /// Tag 42 only: a byte string of 0x00 and a blessed CID.
    fn link(&mut self, info: u8) -> Result<Value, CborError> {
        self.cid(info).map(Value::Link)
    }

    /// The CID of a tag-42 link (returned bare: links are the most frequent item in MST nodes).
    #[inline]
    fn cid(&mut self, info: u8) -> Result<Cid, CborError> {
        let tag = self.argument(info)?;
        if tag != 42 {
            return Err(CborError::UnsupportedTag(tag));
        }
        let inner = self.byte()?;
        if inner >> 5 != 2 {
            return Err(CborError::BadLink(None));
        }
        let n = self.length(inner & 0x1f, 1)?;
        match self.take(n)? {
            [0x00, cid @ ..] => Cid::from_bytes(cid).map_err(|e| CborError::BadLink(Some(e))),
            _ => Err(CborError::BadLink(None)),
        }
    }
}

/// A strict pull reader for hot paths that know the shape they expect (MST nodes, commits, CAR
/// headers, manifest records): each
/// read applies the same rules as [`decode`] (shortest heads, definite lengths, lengths backed
/// by the input, blessed links) and borrows from the input instead of allocating. `None` means
/// "not strict, or not the expected shape"; callers then run [`decode`] for the precise error,
/// so the cursor can only ever accept what [`decode`] accepts.
pub(crate) struct Cursor<'a> {
    reader: Reader<'a>,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    #[inline]
    pub(crate) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { reader: Reader { bytes, pos: 0 } }
    }

    /// The next head, if its major type is `major`: its additional info.
    #[inline]
    fn head(&mut self, major: u8) -> Option<u8> {
        let head = *self.reader.bytes.get(self.reader.pos)?;
        (head >> 5 == major).then(|| {
            self.reader.pos += 1;
            head & 0x1f
        })
    }

    /// A map header: its number of entries.
    #[inline]
    pub(crate) fn map_len(&mut self) -> Option<usize> {
        let info = self.head(5)?;
        self.reader.length(info, 2).ok()
    }

    /// An array header: its number of items.
    #[inline]
    pub(crate) fn array_len(&mut self) -> Option<usize> {
        let info = self.head(4)?;
        self.reader.length(info, 1).ok()
    }

    /// A map key that must be exactly `expected` (ASCII).
    #[inline]
    pub(crate) fn key(&mut self, expected: &[u8]) -> Option<()> {
        let info = self.head(3)?;
        let n = self.reader.length(info, 1).ok()?;
        (self.reader.take(n).ok()? == expected).then_some(())
    }

    /// A text string, borrowed.
    #[inline]
    pub(crate) fn text(&mut self) -> Option<&'a str> {
        let info = self.head(3)?;
        let n = self.reader.length(info, 1).ok()?;
        std::str::from_utf8(self.reader.take(n).ok()?).ok()
    }

    /// A byte string, borrowed.
    #[inline]
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let info = self.head(2)?;
        let n = self.reader.length(info, 1).ok()?;
        self.reader.take(n).ok()
    }

    /// An integer in the signed 64-bit range.
    #[inline]
    pub(crate) fn integer(&mut self) -> Option<i64> {
        let head = *self.reader.bytes.get(self.reader.pos)?;
        let (major, info) = (head >> 5, head & 0x1f);
        if major > 1 {
            return None;
        }
        self.reader.pos += 1;
        let n = i64::try_from(self.reader.argument(info).ok()?).ok()?;
        Some(if major == 0 { n } else { -1 - n })
    }

    /// Reads past one item of any kind under the same rules and nesting limit as [`decode`]
    /// (`depth` as `decode`'s `max_depth` for that item), building nothing.
    pub(crate) fn skip(&mut self, depth: usize) -> Option<()> {
        let head = self.reader.byte().ok()?;
        let (major, info) = (head >> 5, head & 0x1f);
        match major {
            0 | 1 => i64::try_from(self.reader.argument(info).ok()?).ok().map(drop),
            2 => {
                let n = self.reader.length(info, 1).ok()?;
                self.reader.take(n).ok().map(drop)
            }
            3 => {
                let n = self.reader.length(info, 1).ok()?;
                std::str::from_utf8(self.reader.take(n).ok()?).ok().map(drop)
            }
            4 => {
                let depth = depth.checked_sub(1)?;
                let n = self.reader.length(info, 1).ok()?;
                (0..n).try_for_each(|_| self.skip(depth))
            }
            5 => {
                let depth = depth.checked_sub(1)?;
                let n = self.reader.length(info, 2).ok()?;
                let mut previous: Option<&str> = None;
                for _ in 0..n {
                    let key = self.text()?;
                    if previous.is_some_and(|p| !key_precedes(p, key)) {
                        return None;
                    }
                    previous = Some(key);
                    self.skip(depth)?;
                }
                Some(())
            }
            6 => self.reader.cid(info).ok().map(drop),
            _ => matches!(info, 20..=22).then_some(()),
        }
    }

    /// A non-negative integer in the signed 64-bit range.
    #[inline]
    pub(crate) fn unsigned(&mut self) -> Option<u64> {
        let info = self.head(0)?;
        self.reader.argument(info).ok().filter(|n| i64::try_from(*n).is_ok())
    }

    /// A tag-42 link.
    #[inline]
    pub(crate) fn link(&mut self) -> Option<Cid> {
        // The one canonical spelling of a link to a blessed CID: tag 42 (d8 2a), a 37-byte
        // string (58 25), 0x00, CIDv1, the codec, sha2-256 (12 20), the digest. Read in one
        // step; any other bytes go through the general reader (which refuses most of them).
        let rest = self.reader.bytes.get(self.reader.pos..).unwrap_or_default();
        if let [0xd8, 0x2a, 0x58, 0x25, 0x00, 0x01, codec @ (0x71 | 0x55), 0x12, 0x20, tail @ ..] = rest
            && let Some(digest) = tail.first_chunk::<32>()
        {
            self.reader.pos += 41;
            let codec = if *codec == 0x71 { crate::cid::Codec::DagCbor } else { crate::cid::Codec::Raw };
            return Some(Cid::new(codec, *digest));
        }
        let info = self.head(6)?;
        self.reader.cid(info).ok()
    }

    /// A link or `null`.
    #[inline]
    pub(crate) fn link_or_null(&mut self) -> Option<Option<Cid>> {
        if self.reader.bytes.get(self.reader.pos) == Some(&0xf6) {
            self.reader.pos += 1;
            return Some(None);
        }
        self.link().map(Some)
    }

    /// True when every byte was read (no trailing bytes).
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.reader.pos == self.reader.bytes.len()
    }
}

/// Canonical DAG-CBOR key order: shorter keys first, then bytewise.
pub(crate) fn key_precedes(a: &str, b: &str) -> bool {
    (a.len(), a.as_bytes()) < (b.len(), b.as_bytes())
}
