//! Content identifiers, restricted to the "blessed" form atproto repositories use:
//! CIDv1, codec dag-cbor (0x71) or raw (0x55), sha2-256 with a 32-byte digest.
//! CIDv0, identity hashes and every other codec or hash are rejected on parse.

use sha2::{Digest, Sha256};
use std::fmt;

/// Multicodec of the linked content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    /// DRISL / DAG-CBOR (0x71): commits, MST nodes, records.
    DagCbor,
    /// Raw bytes (0x55): blobs.
    Raw,
}

impl Codec {
    fn code(self) -> u8 {
        match self {
            Codec::DagCbor => 0x71,
            Codec::Raw => 0x55,
        }
    }
}

/// A blessed CID. Small and `Copy`, so it can key maps cheaply.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid {
    codec: Codec,
    digest: [u8; 32],
}

/// Why bytes or text are not a blessed CID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidError {
    /// Starts like a CIDv0 (`0x12 0x20`, base58 `Qm…`).
    Version0,
    /// Version byte other than 1.
    UnsupportedVersion(u8),
    /// Codec other than dag-cbor or raw.
    UnsupportedCodec(u64),
    /// Identity multihash: content "verifies" trivially, so never accepted.
    IdentityHash,
    /// Multihash other than sha2-256/32.
    UnsupportedHash(u64),
    /// Wrong length or truncated.
    Length(usize),
    /// Not `b` + lowercase base32.
    Text,
}

impl fmt::Display for CidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidError::Version0 => write!(f, "CIDv0 is not allowed"),
            CidError::UnsupportedVersion(v) => write!(f, "CID version {v} is not supported"),
            CidError::UnsupportedCodec(c) => write!(f, "CID codec 0x{c:x} is not dag-cbor or raw"),
            CidError::IdentityHash => write!(f, "CID uses the identity hash"),
            CidError::UnsupportedHash(h) => write!(f, "CID hash 0x{h:x} is not sha2-256"),
            CidError::Length(n) => write!(f, "CID has {n} bytes, expected 36"),
            CidError::Text => write!(f, "CID text is not base32 with the 'b' prefix"),
        }
    }
}

impl std::error::Error for CidError {}

impl Cid {
    /// Length of the binary form.
    pub const LEN: usize = 36;

    /// The CID of a DAG-CBOR block.
    pub fn for_dag_cbor(block: &[u8]) -> Cid {
        Cid { codec: Codec::DagCbor, digest: Sha256::digest(block).into() }
    }

    /// The CID of raw bytes.
    pub fn for_raw(bytes: &[u8]) -> Cid {
        Cid { codec: Codec::Raw, digest: Sha256::digest(bytes).into() }
    }

    /// Builds a CID from its parts.
    pub fn new(codec: Codec, digest: [u8; 32]) -> Cid {
        Cid { codec, digest }
    }

    /// The content codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The sha2-256 digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// True when `bytes` hash to this CID (codec is not re-checked: the caller decodes).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        digest == self.digest
    }

    /// Parses the 36-byte binary form, rejecting anything longer or shorter.
    #[inline]
    pub fn from_bytes(bytes: &[u8]) -> Result<Cid, CidError> {
        let (cid, used) = Cid::read_prefix(bytes)?;
        if used != bytes.len() {
            return Err(CidError::Length(bytes.len()));
        }
        Ok(cid)
    }

    /// Parses a binary CID at the start of `bytes`; returns it and its length (always 36).
    #[inline]
    pub fn read_prefix(bytes: &[u8]) -> Result<(Cid, usize), CidError> {
        match bytes {
            [0x12, 0x20, ..] => Err(CidError::Version0),
            [0x01, codec, hash, len, rest @ ..] => {
                let codec = match codec {
                    0x71 => Codec::DagCbor,
                    0x55 => Codec::Raw,
                    other => return Err(CidError::UnsupportedCodec(u64::from(*other))),
                };
                match (hash, len) {
                    (0x00, _) => return Err(CidError::IdentityHash),
                    (0x12, 0x20) => {}
                    (other, _) => return Err(CidError::UnsupportedHash(u64::from(*other))),
                }
                let digest: [u8; 32] = rest.get(..32).and_then(|d| d.try_into().ok()).ok_or(CidError::Length(bytes.len()))?;
                Ok((Cid { codec, digest }, Cid::LEN))
            }
            [version, ..] => Err(CidError::UnsupportedVersion(*version)),
            [] => Err(CidError::Length(0)),
        }
    }

    /// The 36-byte binary form.
    pub fn to_bytes(&self) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[0] = 0x01;
        out[1] = self.codec.code();
        out[2] = 0x12;
        out[3] = 0x20;
        out[4..].copy_from_slice(&self.digest);
        out
    }
}

impl std::str::FromStr for Cid {
    type Err = CidError;

    /// Parses `b` + lowercase base32 (what atproto prints), rejecting other multibases.
    fn from_str(text: &str) -> Result<Cid, CidError> {
        if text.starts_with("Qm") {
            return Err(CidError::Version0);
        }
        // `b` + lowercase base32, at most the 59 characters of a 36-byte CID plus slack; the cid
        // crate parses the multibase text, the blessed-form check stays ours.
        if !text.starts_with('b') || text.len() > 65 {
            return Err(CidError::Text);
        }
        let parsed = cid::Cid::try_from(text).map_err(|_| CidError::Text)?;
        let cid = Cid::from_bytes(&parsed.to_bytes())?;
        // One spelling per CID: anything that does not print back the same is refused.
        if cid.to_string() != text {
            return Err(CidError::Text);
        }
        Ok(cid)
    }
}

impl Cid {
    /// Length of the text form: `b` and 58 base32 characters.
    pub const TEXT_LEN: usize = 1 + (Cid::LEN * 8).div_ceil(5);

    /// The text form (`b` + base32, RFC 4648, lowercase, unpadded, of the 36 bytes) in a stack
    /// buffer: every verdict's sentence names its commit. Equal to `multibase`'s encoding
    /// (tested).
    pub fn text(&self) -> CidText {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut text = [b'b'; Cid::TEXT_LEN];
        let (mut buffer, mut bits, mut out) = (0u32, 0u32, text.iter_mut().skip(1));
        let mut put = |index: u32| {
            if let (Some(slot), Some(c)) = (out.next(), ALPHABET.get(index as usize & 31)) {
                *slot = *c;
            }
        };
        for byte in self.to_bytes() {
            buffer = (buffer << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                put(buffer >> bits);
            }
            buffer &= (1 << bits) - 1;
        }
        if bits > 0 {
            put(buffer << (5 - bits));
        }
        CidText(text)
    }
}

/// A CID's text form, held on the stack ([`Cid::text`]).
#[derive(Clone, Copy)]
pub struct CidText([u8; Cid::TEXT_LEN]);

impl CidText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII from the alphabet is ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_equals_multibase_base32() {
        for seed in 0..200u32 {
            for cid in [Cid::for_dag_cbor(&seed.to_le_bytes()), Cid::for_raw(&seed.to_be_bytes())] {
                assert_eq!(cid.to_string(), multibase::encode(multibase::Base::Base32Lower, cid.to_bytes()));
            }
        }
    }

    #[test]
    fn empty_mst_node_cid() {
        let cid = Cid::for_dag_cbor(&[0xa2, 0x61, 0x65, 0x80, 0x61, 0x6c, 0xf6]);
        assert_eq!(cid.to_string(), "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm");
        let parsed: Cid = cid.to_string().parse().unwrap();
        assert_eq!(parsed, cid);
    }

    #[test]
    fn text_has_one_spelling() {
        let text = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";
        assert_eq!(text.parse::<Cid>().map(|c| c.to_string()).as_deref(), Ok(text));
        let base58 = multibase::encode(multibase::Base::Base58Btc, text.parse::<Cid>().unwrap().to_bytes());
        for other in [text.to_uppercase(), format!("B{}", &text[1..]), base58, format!("{}n", &text[..text.len() - 1]), format!("{text}a"), String::new()] {
            assert!(other.parse::<Cid>().is_err(), "{other}");
        }
    }

    #[test]
    fn rejects_non_blessed() {
        let good = Cid::for_dag_cbor(b"x").to_bytes();
        let mut v0 = vec![0x12, 0x20];
        v0.extend_from_slice(&[0; 32]);
        assert_eq!(Cid::from_bytes(&v0), Err(CidError::Version0));
        let mut identity = good;
        identity[2] = 0x00;
        assert_eq!(Cid::from_bytes(&identity), Err(CidError::IdentityHash));
        let mut codec = good;
        codec[1] = 0x70;
        assert_eq!(Cid::from_bytes(&codec), Err(CidError::UnsupportedCodec(0x70)));
        let mut hash = good;
        hash[2] = 0x13;
        assert_eq!(Cid::from_bytes(&hash), Err(CidError::UnsupportedHash(0x13)));
        assert_eq!(Cid::from_bytes(&good[..35]), Err(CidError::Length(35)));
        let mut version = good;
        version[0] = 2;
        assert_eq!(Cid::from_bytes(&version), Err(CidError::UnsupportedVersion(2)));
        assert!("zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA".parse::<Cid>().is_err());
        assert!("QmQg1v4o9xdT3Q14wh4S7dxZkDjyZ9ssFzFzyep1YrVJBY".parse::<Cid>().is_err());
    }
}
