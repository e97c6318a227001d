//! Repository commit objects: decode (v3, and v2 for inspection), the unsigned re-encoding of
//! the five signed fields, and the signature check. As both reference verifiers do, the signed
//! bytes are rebuilt from the parsed fields rather than sliced from the block.

use std::fmt;

use crate::cbor::{self, CborError, Map, Value};
use crate::cid::{Cid, Codec};
use crate::crypto::{PublicKey, SignatureError};
use crate::limits::Limits;

/// A decoded commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Account DID.
    pub did: String,
    /// Repo format version (3 today; 2 in old data).
    pub version: i64,
    /// MST root.
    pub data: Cid,
    /// Revision TID (required in v3, optional in v2).
    pub rev: Option<String>,
    /// Previous commit (v3: present, usually null).
    pub prev: Option<Cid>,
    /// Raw signature bytes.
    pub sig: Vec<u8>,
}

/// Why a block is not a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitError {
    /// Not strict DAG-CBOR.
    Cbor(CborError),
    /// A required field is missing or of the wrong type.
    Field(&'static str),
    /// A CID that must be a dag-cbor link is a raw one.
    NotDagCbor(&'static str),
    /// The CAR does not hold the block its header names as root.
    MissingRoot(Cid),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::Cbor(e) => write!(f, "commit block: {e}"),
            CommitError::Field(name) => write!(f, "commit field '{name}' is missing or has the wrong type"),
            CommitError::NotDagCbor(name) => write!(f, "commit field '{name}' must link to dag-cbor"),
            CommitError::MissingRoot(cid) => write!(f, "commit block {cid} is missing"),
        }
    }
}

impl std::error::Error for CommitError {}

impl Commit {
    /// The commit a CAR's header names as its root, decoded (not yet verified: check its
    /// signature before trusting anything it says, its rev included).
    pub fn of_car(car: &crate::car::Car<'_>, limits: &Limits) -> Result<Commit, CommitError> {
        let block = car.block(&car.root).ok_or(CommitError::MissingRoot(car.root))?;
        Commit::decode(block, limits)
    }

    /// The rev's time in microseconds since the epoch, when the rev is a TID. Signed time only
    /// once the signature verified.
    pub fn rev_micros(&self) -> Option<i64> {
        self.rev.as_deref().and_then(crate::syntax::tid_timestamp_micros).and_then(|t| i64::try_from(t).ok())
    }

    /// Decodes a commit block. Unknown fields are ignored, as in both reference
    /// implementations (they are not covered by the re-encoded signature either).
    pub fn decode(block: &[u8], limits: &Limits) -> Result<Commit, CommitError> {
        // The canonical shape is one map of scalars: depth 1.
        if let Some(commit) = Commit::read_canonical(block).filter(|_| limits.max_cbor_depth >= 1) {
            return Ok(commit);
        }
        let value = cbor::decode(block, limits.max_cbor_depth).map_err(CommitError::Cbor)?;
        Commit::from_value(&value)
    }

    /// Reads a commit from a decoded value (what [`Commit::decode`] does after decoding).
    pub fn from_value(value: &Value) -> Result<Commit, CommitError> {
        let map = value.as_map().ok_or(CommitError::Field("(map)"))?;
        let text = |name| map.get(name).and_then(Value::as_text).map(str::to_owned);
        let did = text("did").ok_or(CommitError::Field("did"))?;
        let version = map.get("version").and_then(Value::as_integer).ok_or(CommitError::Field("version"))?;
        let data = map.get("data").and_then(Value::as_link).ok_or(CommitError::Field("data"))?;
        if data.codec() != Codec::DagCbor {
            return Err(CommitError::NotDagCbor("data"));
        }
        let rev = match map.get("rev") {
            Some(Value::Text(t)) => Some(t.clone()),
            None if version < 3 => None,
            _ => return Err(CommitError::Field("rev")),
        };
        let prev = match map.get("prev") {
            Some(Value::Link(c)) if c.codec() == Codec::DagCbor => Some(*c),
            Some(Value::Link(_)) => return Err(CommitError::NotDagCbor("prev")),
            Some(Value::Null) => None,
            // v3 requires the key to be present even when null.
            None if version < 3 => None,
            _ => return Err(CommitError::Field("prev")),
        };
        let sig = map.get("sig").and_then(Value::as_bytes).ok_or(CommitError::Field("sig"))?.to_vec();
        Ok(Commit { did, version, data, rev, prev, sig })
    }

    /// A v3 commit of exactly the six fields, in canonical order (length first: `did`, `rev`,
    /// `sig`, `data`, `prev`, `version`), read without a value tree: every proof has one.
    /// `None` for any other shape, which [`Commit::decode`] then reads in full (so both give
    /// the same commit or the same error).
    fn read_canonical(block: &[u8]) -> Option<Commit> {
        let dag_cbor = |cid: Cid| (cid.codec() == Codec::DagCbor).then_some(cid);
        let mut cursor = cbor::Cursor::new(block);
        if cursor.map_len()? != 6 {
            return None;
        }
        cursor.key(b"did")?;
        let did = cursor.text()?;
        cursor.key(b"rev")?;
        let rev = cursor.text()?;
        cursor.key(b"sig")?;
        let sig = cursor.bytes()?;
        cursor.key(b"data")?;
        let data = dag_cbor(cursor.link()?)?;
        cursor.key(b"prev")?;
        let prev = match cursor.link_or_null()? {
            Some(cid) => Some(dag_cbor(cid)?),
            None => None,
        };
        cursor.key(b"version")?;
        let version = i64::try_from(cursor.unsigned()?).ok()?;
        cursor.is_done().then(|| Commit { did: did.to_owned(), version, data, rev: Some(rev.to_owned()), prev, sig: sig.to_vec() })
    }

    fn unsigned_map(&self) -> Map {
        let mut map = Map::default();
        map.insert("did", Value::Text(self.did.clone()));
        map.insert("version", Value::Integer(self.version));
        map.insert("data", Value::Link(self.data));
        if let Some(rev) = &self.rev {
            map.insert("rev", Value::Text(rev.clone()));
        }
        map.insert("prev", self.prev.map_or(Value::Null, Value::Link));
        map
    }

    /// The canonical encoding of the commit without `sig`: the bytes that are signed. Written
    /// field by field in canonical key order (length first: `did`, `rev`, `data`, `prev`,
    /// `version`), with no value tree: it runs for every proof checked.
    pub fn unsigned_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.did.len() + self.rev.as_ref().map_or(0, String::len) + 110);
        cbor::write_head(5, if self.rev.is_some() { 5 } else { 4 }, &mut out);
        cbor::write_text("did", &mut out);
        cbor::write_text(&self.did, &mut out);
        if let Some(rev) = &self.rev {
            cbor::write_text("rev", &mut out);
            cbor::write_text(rev, &mut out);
        }
        cbor::write_text("data", &mut out);
        cbor::write_link(&self.data, &mut out);
        cbor::write_text("prev", &mut out);
        match &self.prev {
            Some(prev) => cbor::write_link(prev, &mut out),
            None => out.push(0xf6),
        }
        cbor::write_text("version", &mut out);
        cbor::write_integer(self.version, &mut out);
        out
    }

    /// The canonical encoding of the signed commit (the block).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut map = self.unsigned_map();
        map.insert("sig", Value::Bytes(self.sig.clone()));
        cbor::encode(&Value::Map(map))
    }

    /// Checks `sig` over the unsigned bytes with `key`.
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), SignatureError> {
        key.verify(&self.unsigned_bytes(), &self.sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_bytes_written_field_by_field_equal_the_canonical_encoding_of_the_fields() {
        let data = Cid::for_dag_cbor(b"tree");
        let prev = Cid::for_dag_cbor(b"previous");
        for (version, rev, prev) in
            [(3, Some("3lbxf5t2ybk2a"), None), (3, Some("3lbxf5t2ybk2a"), Some(prev)), (2, None, Some(prev)), (2, None, None), (-30, None, None)]
        {
            let commit = Commit { did: "did:plc:ewvi7nxzyoun6zhxrhs64oiz".into(), version, data, rev: rev.map(str::to_owned), prev, sig: vec![1; 64] };
            assert_eq!(commit.unsigned_bytes(), cbor::encode(&Value::Map(commit.unsigned_map())), "{version} {rev:?} {prev:?}");
            // The canonical read and the full decode agree on the block.
            let block = commit.signed_bytes();
            assert_eq!(Commit::read_canonical(&block).is_some(), rev.is_some() && version >= 0);
            let mut value = cbor::decode(&block, 8).unwrap();
            assert_eq!(Commit::decode(&block, &Limits::default()), Commit::from_value(&value));
            // An extra field, a raw-codec link: the full decoder's answer.
            if let Value::Map(map) = &mut value {
                map.insert("extra", Value::Bool(true));
            }
            let extended = cbor::encode(&value);
            assert!(Commit::read_canonical(&extended).is_none());
            assert_eq!(Commit::decode(&extended, &Limits::default()).map(|c| c.did), Ok(commit.did.clone()));
            let raw = Commit { data: Cid::for_raw(b"tree"), ..commit.clone() }.signed_bytes();
            assert_eq!(Commit::decode(&raw, &Limits::default()), Err(CommitError::NotDagCbor("data")));
        }
    }
}
