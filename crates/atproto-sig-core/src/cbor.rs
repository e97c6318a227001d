//! Strict DRISL / DAG-CBOR as atproto uses it.
//!
//! Decoding accepts exactly the canonical form: shortest integer and length heads, definite
//! lengths, text-string map keys in length-first then bytewise order with no duplicates, no
//! floats (atproto forbids them), only the simple values false/true/null, only tag 42 (CID links,
//! blessed form only), no trailing bytes. Nesting depth is bounded, and no allocation is sized
//! from a length the input cannot back. Hand-written because serde_ipld_dagcbor 0.7 has no
//! nesting limit (deep arrays overflow the stack) and accepts floats.

use std::fmt;

use crate::cid::{Cid, CidError};

/// A decoded DAG-CBOR value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// Signed 64-bit integer (atproto's integer range).
    Integer(i64),
    /// Byte string.
    Bytes(Vec<u8>),
    /// UTF-8 text.
    Text(String),
    /// Array.
    Array(Vec<Value>),
    /// Map with text keys, kept in canonical order.
    Map(Map),
    /// Tag-42 CID link.
    Link(Cid),
}

/// A map with text keys. Decoding yields canonical order; [`encode`] sorts regardless.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Map(pub Vec<(String, Value)>);

impl Map {
    /// The value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Adds or replaces `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let index = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(index).1)
    }

    /// Keys in stored order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

impl Value {
    /// The map inside, if this is a map.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    /// The text inside, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
    /// The integer inside, if this is an integer.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
    /// The bytes inside, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// The link inside, if this is a CID link.
    pub fn as_link(&self) -> Option<Cid> {
        match self {
            Value::Link(c) => Some(*c),
            _ => None,
        }
    }
    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// A short name of the type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Integer(_) => "integer",
            Value::Bytes(_) => "bytes",
            Value::Text(_) => "text",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Link(_) => "link",
        }
    }
}

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

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CborError> {
        let end = self.pos.checked_add(n).ok_or(CborError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(CborError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, CborError> {
        let b = *self.bytes.get(self.pos).ok_or(CborError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads the argument of a head with additional info `info`, enforcing shortest form.
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CborError> {
        let slice = self.take(N)?;
        slice.try_into().map_err(|_| CborError::Truncated)
    }

    /// A length that must be backed by at least `length * min_item_bytes` remaining bytes.
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
            4 => {
                let depth = depth.checked_sub(1).ok_or(CborError::TooDeep)?;
                let n = self.length(info, 1)?;
                // Capacity is capped: nested arrays could each claim the whole remaining input.
                let mut items = Vec::with_capacity(n.min(PREALLOCATE_MAX));
                for _ in 0..n {
                    items.push(self.value(depth)?);
                }
                Ok(Value::Array(items))
            }
            5 => {
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
            6 => {
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
                    [0x00, cid @ ..] => Cid::from_bytes(cid).map(Value::Link).map_err(|e| CborError::BadLink(Some(e))),
                    _ => Err(CborError::BadLink(None)),
                }
            }
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
}

/// Canonical DAG-CBOR key order: shorter keys first, then bytewise.
fn key_precedes(a: &str, b: &str) -> bool {
    (a.len(), a.as_bytes()) < (b.len(), b.as_bytes())
}

/// Encodes `value` canonically (map keys sorted, shortest heads).
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(value, &mut out);
    out
}

/// Appends the canonical encoding of `value` to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xf6),
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Integer(i) if *i >= 0 => write_head(0, i.unsigned_abs(), out),
        Value::Integer(i) => write_head(1, (-1 - *i).unsigned_abs(), out),
        Value::Bytes(b) => {
            write_head(2, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Value::Text(t) => write_text(t, out),
        Value::Array(items) => {
            write_head(4, items.len() as u64, out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Map(map) => {
            let mut entries: Vec<&(String, Value)> = map.0.iter().collect();
            entries.sort_by(|a, b| (a.0.len(), a.0.as_bytes()).cmp(&(b.0.len(), b.0.as_bytes())));
            write_head(5, entries.len() as u64, out);
            for (key, item) in entries {
                write_text(key, out);
                encode_into(item, out);
            }
        }
        Value::Link(cid) => {
            out.extend_from_slice(&[0xd8, 0x2a, 0x58, 0x25, 0x00]);
            out.extend_from_slice(&cid.to_bytes());
        }
    }
}

fn write_text(text: &str, out: &mut Vec<u8>) {
    write_head(3, text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

fn write_head(major: u8, value: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    match value {
        0..=23 => out.push(major | value as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, value as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Converts atproto JSON (as in the data-model fixtures and PLC operations) to a value,
/// applying the data-model rules: `{"$link": cid}` becomes a link and `{"$bytes": base64}` bytes
/// (each exactly that one string key), `$type` must be a non-empty string, blobs must carry
/// `ref`, `mimeType` and an integer `size`, and numbers must be integers (`123.0` counts).
pub fn from_json(json: &serde_json::Value, max_depth: usize) -> Result<Value, JsonToCborError> {
    let depth = max_depth.checked_sub(1).ok_or(JsonToCborError::TooDeep)?;
    Ok(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Integer(json_integer(n).ok_or(JsonToCborError::NotInteger)?),
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(|i| from_json(i, depth)).collect::<Result<_, _>>()?),
        serde_json::Value::Object(object) => {
            if let Some(link) = object.get("$link") {
                return match (object.len(), link) {
                    (1, serde_json::Value::String(link)) => link.parse().map(Value::Link).map_err(|_| JsonToCborError::BadLink),
                    _ => Err(JsonToCborError::BadLink),
                };
            }
            if let Some(bytes) = object.get("$bytes") {
                use base64::Engine;
                return match (object.len(), bytes) {
                    (1, serde_json::Value::String(b64)) => base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(b64.trim_end_matches('='))
                        .map(Value::Bytes)
                        .map_err(|_| JsonToCborError::BadBytes),
                    _ => Err(JsonToCborError::BadBytes),
                };
            }
            match object.get("$type") {
                None => {}
                Some(serde_json::Value::String(t)) if t == "blob" && !is_blob(object) => {
                    return Err(JsonToCborError::BadBlob);
                }
                Some(serde_json::Value::String(t)) if !t.is_empty() => {}
                Some(_) => return Err(JsonToCborError::BadType),
            }
            let mut entries = Vec::with_capacity(object.len());
            for (key, item) in object {
                entries.push((key.clone(), from_json(item, depth)?));
            }
            entries.sort_by(|a, b| (a.0.len(), a.0.as_bytes()).cmp(&(b.0.len(), b.0.as_bytes())));
            Value::Map(Map(entries))
        }
    })
}

fn json_integer(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        let f = n.as_f64()?;
        // Integer-valued floats within the exactly representable range (JSON has one number type).
        (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
    })
}

fn is_blob(object: &serde_json::Map<String, serde_json::Value>) -> bool {
    let link_ok = object.get("ref").and_then(|r| r.get("$link")).and_then(serde_json::Value::as_str).is_some_and(|l| l.parse::<Cid>().is_ok());
    let size_ok = object.get("size").is_some_and(serde_json::Value::is_i64);
    let mime_ok = object.get("mimeType").and_then(serde_json::Value::as_str).is_some_and(|m| !m.is_empty());
    link_ok && size_ok && mime_ok
}

/// Converts a value to atproto JSON (`{"$link": …}`, `{"$bytes": …}`), for display.
pub fn to_json(value: &Value) -> serde_json::Value {
    use base64::Engine;
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Integer(i) => serde_json::Value::from(*i),
        Value::Text(t) => serde_json::Value::String(t.clone()),
        Value::Bytes(b) => serde_json::json!({"$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)}),
        Value::Link(cid) => serde_json::json!({"$link": cid.to_string()}),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(map) => serde_json::Value::Object(map.0.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// Why JSON cannot be represented in the atproto data model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonToCborError {
    /// Float or out-of-range number.
    NotInteger,
    /// `$link` that is not a blessed CID.
    BadLink,
    /// `$bytes` that is not base64.
    BadBytes,
    /// `$type` that is not a non-empty string.
    BadType,
    /// A blob without a valid `ref`, `mimeType` or integer `size`.
    BadBlob,
    /// Nesting too deep.
    TooDeep,
}

impl fmt::Display for JsonToCborError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonToCborError::NotInteger => "number is not a 64-bit integer",
            JsonToCborError::BadLink => "$link is not a blessed CID",
            JsonToCborError::BadBytes => "$bytes is not base64",
            JsonToCborError::BadType => "$type is not a non-empty string",
            JsonToCborError::BadBlob => "blob is missing ref, mimeType or an integer size",
            JsonToCborError::TooDeep => "JSON nesting too deep",
        })
    }
}

impl std::error::Error for JsonToCborError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8]) -> Result<Value, CborError> {
        decode(bytes, DEFAULT_MAX_DEPTH)
    }

    #[test]
    fn rejects_non_canonical_forms() {
        assert_eq!(dec(&[0x18, 0x05]), Err(CborError::NonMinimal));
        assert_eq!(dec(&[0x19, 0x00, 0x20]), Err(CborError::NonMinimal));
        assert_eq!(dec(&[0x9f, 0xff]), Err(CborError::Indefinite));
        assert_eq!(dec(&[0xfb, 0, 0, 0, 0, 0, 0, 0, 0]), Err(CborError::Float));
        assert_eq!(dec(&[0xf9, 0, 0]), Err(CborError::Float));
        assert_eq!(dec(&[0xf7]), Err(CborError::UnsupportedSimple(23)));
        assert_eq!(dec(&[0xc1, 0x00]), Err(CborError::UnsupportedTag(1)));
        assert_eq!(dec(&[0x01, 0x02]), Err(CborError::TrailingBytes));
        // {"b":1,"a":2}: out of order
        assert_eq!(dec(&[0xa2, 0x61, b'b', 1, 0x61, b'a', 2]), Err(CborError::KeyOrder));
        // {"a":1,"a":2}: duplicate
        assert_eq!(dec(&[0xa2, 0x61, b'a', 1, 0x61, b'a', 2]), Err(CborError::KeyOrder));
        // {"aa":1,"b":2}: longer key first
        assert_eq!(dec(&[0xa2, 0x62, b'a', b'a', 1, 0x61, b'b', 2]), Err(CborError::KeyOrder));
        assert_eq!(dec(&[0xa1, 0x01, 0x01]), Err(CborError::NonTextKey));
        assert_eq!(dec(&[0x62, 0xff, 0xfe]), Err(CborError::Utf8));
        assert_eq!(dec(&[0x1b, 0x80, 0, 0, 0, 0, 0, 0, 0]), Err(CborError::IntegerRange));
    }

    #[test]
    fn bounded_on_hostile_lengths_and_depth() {
        // An array that claims 2^32 elements in 5 bytes must not allocate.
        assert_eq!(dec(&[0x9a, 0xff, 0xff, 0xff, 0xff]), Err(CborError::Truncated));
        assert_eq!(dec(&[0xba, 0xff, 0xff, 0xff, 0xff]), Err(CborError::Length));
        assert_eq!(dec(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), Err(CborError::Truncated));
        // 64 nested arrays each claiming the rest of a 1 MiB input: memory must stay small.
        let mut nested = Vec::new();
        for _ in 0..63 {
            nested.push(0x9a);
            nested.extend_from_slice(&(1_000_000u32).to_be_bytes());
        }
        nested.resize(1 << 20, 0);
        assert_eq!(dec(&nested), Err(CborError::Truncated));
        let deep = vec![0x81; 100_000];
        assert_eq!(dec(&deep), Err(CborError::TooDeep));
    }

    #[test]
    fn round_trips_canonical_values() {
        let mut map = Map::default();
        map.insert("zz", Value::Integer(-1_000_000));
        map.insert("a", Value::Array(vec![Value::Null, Value::Bool(true), Value::Bytes(vec![1, 2])]));
        map.insert("link", Value::Link(Cid::for_dag_cbor(b"x")));
        let value = Value::Map(map);
        let bytes = encode(&value);
        let decoded = dec(&bytes).unwrap();
        assert_eq!(encode(&decoded), bytes);
        assert_eq!(decoded.as_map().unwrap().keys().collect::<Vec<_>>(), ["a", "zz", "link"]);
        for i in [0i64, 23, 24, 255, 256, 65535, 65536, i64::MAX, -1, -24, -25, i64::MIN] {
            assert_eq!(dec(&encode(&Value::Integer(i))).unwrap(), Value::Integer(i));
        }
    }
}
