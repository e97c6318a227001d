//! The canonical encoder (shortest heads, keys in length-first order as `Map` keeps them).

use super::Value;

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
        Value::Integer(i) => write_integer(*i, out),
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
        Value::Link(cid) => write_link(cid, out),
    }
}

pub(crate) fn write_integer(i: i64, out: &mut Vec<u8>) {
    if i >= 0 { write_head(0, i.unsigned_abs(), out) } else { write_head(1, (-1 - i).unsigned_abs(), out) }
}

/// A link: tag 42 over a byte string of 0x00 and the binary CID.
pub(crate) fn write_link(cid: &crate::cid::Cid, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xd8, 0x2a, 0x58, 0x25, 0x00]);
    out.extend_from_slice(&cid.to_bytes());
}

pub(crate) fn write_text(text: &str, out: &mut Vec<u8>) {
    write_head(3, text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

pub(crate) fn write_head(major: u8, value: u64, out: &mut Vec<u8>) {
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
