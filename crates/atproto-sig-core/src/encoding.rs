//! Small integer and text encodings used by the protocol: unsigned LEB128 varints (minimal, at
//! most 9 bytes, as multiformats requires) and lowercase hex. Multibase text (base32 CIDs,
//! base58btc keys) is the `multibase` crate's.

/// Reads a minimal unsigned LEB128 varint of at most 9 bytes (multiformats unsigned-varint).
/// Returns the value and the number of bytes consumed.
pub fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(9) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            // A final zero byte after the first means a longer encoding than needed.
            if index > 0 && byte == 0 {
                return None;
            }
            return Some((value, index + 1));
        }
    }
    None
}

/// Appends an unsigned LEB128 varint.
pub fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Lowercase hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        for nibble in [b >> 4, b & 15] {
            out.push(DIGITS.get(usize::from(nibble)).map_or('?', |&d| char::from(d)));
        }
    }
    out
}

/// Lowercase-only hex decoding (digests are canonical lowercase).
pub fn hex_decode_lower(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_is_minimal_and_bounded() {
        let mut out = Vec::new();
        for value in [0u64, 1, 127, 128, 300, 1 << 35, (1 << 63) - 1] {
            out.clear();
            write_varint(value, &mut out);
            assert_eq!(read_varint(&out), Some((value, out.len())));
        }
        assert_eq!(read_varint(&[0x80, 0x00]), None, "non-minimal");
        assert_eq!(read_varint(&[0xff; 10]), None, "too long");
        assert_eq!(read_varint(&[0x80]), None, "truncated");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode_lower("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(hex_decode_lower("00ABff"), None);
        assert_eq!(hex_decode_lower("0"), None);
    }
}
