//! Strict DRISL / DAG-CBOR as atproto uses it.
//!
//! Decoding accepts exactly the canonical form: shortest integer and length heads, definite
//! lengths, text-string map keys in length-first then bytewise order with no duplicates, no
//! floats (atproto forbids them), only the simple values false/true/null, only tag 42 (CID links,
//! blessed form only), no trailing bytes. Nesting depth is bounded, and no allocation is sized
//! from a length the input cannot back. Hand-written because serde_ipld_dagcbor 0.7 has no
//! nesting limit (deep arrays overflow the stack) and accepts floats.

use crate::cid::Cid;

mod decode;
mod encode;
mod json;

pub use decode::{CborError, DEFAULT_MAX_DEPTH, decode, decode_prefix};
pub(crate) use decode::{Cursor, key_precedes};
pub use encode::{encode, encode_into};
pub(crate) use encode::{write_head, write_integer, write_link, write_text};
pub use json::{JsonToCborError, from_json, to_json};

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
