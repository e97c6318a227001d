//! `io.atcr.manifest` records: the required fields of the published lexicon
//! (repository, digest, mediaType, schemaVersion, createdAt); unknown fields are tolerated.

use std::fmt;

use crate::cbor::{self, CborError, Value};
use crate::limits::Limits;
use crate::syntax::is_valid_datetime;

/// The collection NSID of manifest records.
pub const MANIFEST_COLLECTION: &str = "io.atcr.manifest";

/// A decoded manifest record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRecord {
    /// Image repository name within the DID's namespace (e.g. `myapp`).
    pub repository: String,
    /// Manifest or index digest, `sha256:<hex>`.
    pub digest: String,
    /// OCI media type of the manifest.
    pub media_type: String,
    /// OCI schema version.
    pub schema_version: i64,
    /// Record creation time.
    pub created_at: String,
    /// Hold service DID, if present.
    pub hold_did: Option<String>,
}

/// Why a block is not a valid manifest record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Not strict DAG-CBOR.
    Cbor(CborError),
    /// `$type` is not `io.atcr.manifest`.
    Type(String),
    /// A required field is missing, of the wrong type or too long.
    Field(&'static str),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Cbor(e) => write!(f, "record: {e}"),
            RecordError::Type(t) => write!(f, "record $type is {t:?}, expected {MANIFEST_COLLECTION:?}"),
            RecordError::Field(name) => write!(f, "record field '{name}' is missing or invalid"),
        }
    }
}

impl std::error::Error for RecordError {}

impl ManifestRecord {
    /// Decodes and validates a record block.
    pub fn decode(block: &[u8], limits: &Limits) -> Result<ManifestRecord, RecordError> {
        if let Some(record) = ManifestRecord::read_valid(block, limits) {
            return Ok(record);
        }
        let value = cbor::decode(block, limits.max_cbor_depth).map_err(RecordError::Cbor)?;
        ManifestRecord::from_value(&value)
    }

    /// A valid record read with the strict cursor: the fields it needs borrowed, every other
    /// field checked and skipped, nothing built but the record. `None` for anything
    /// [`ManifestRecord::from_value`] would refuse or read differently (a field of another
    /// type, say), which the value route then answers: both routes give the same record or
    /// error (the `cbor_commit` fuzz target compares them).
    fn read_valid(block: &[u8], limits: &Limits) -> Option<ManifestRecord> {
        let mut cursor = cbor::Cursor::new(block);
        let count = cursor.map_len()?;
        // The map takes one level of nesting; its values get the rest.
        let depth = limits.max_cbor_depth.checked_sub(1)?;
        let (mut kind, mut created_at, mut repository, mut digest, mut media_type, mut hold_did) = (None, None, None, None, None, None);
        let mut schema_version = None;
        let mut previous: Option<&str> = None;
        for _ in 0..count {
            let key = cursor.text()?;
            if previous.is_some_and(|p| !cbor::key_precedes(p, key)) {
                return None;
            }
            previous = Some(key);
            match key {
                "$type" => kind = Some(cursor.text()?),
                "createdAt" => created_at = Some(cursor.text()?),
                "repository" => repository = Some(cursor.text()?),
                "digest" => digest = Some(cursor.text()?),
                "mediaType" => media_type = Some(cursor.text()?),
                "holdDid" => hold_did = Some(cursor.text()?),
                "schemaVersion" => schema_version = Some(cursor.integer()?),
                _ => cursor.skip(depth)?,
            }
        }
        if !cursor.is_done() || kind != Some(MANIFEST_COLLECTION) {
            return None;
        }
        let within = |text: Option<&str>, max: usize| text.filter(|t| t.len() <= max).map(str::to_owned);
        let created_at = within(created_at, 64).filter(|t| is_valid_datetime(t))?;
        Some(ManifestRecord {
            repository: within(repository, 255)?,
            digest: within(digest, 128)?,
            media_type: within(media_type, 128)?,
            schema_version: schema_version?,
            created_at,
            hold_did: hold_did.map(str::to_owned),
        })
    }

    /// Validates an already decoded record.
    pub fn from_value(value: &Value) -> Result<ManifestRecord, RecordError> {
        let map = value.as_map().ok_or(RecordError::Field("(map)"))?;
        let text = |name: &'static str, max: usize| {
            map.get(name).and_then(Value::as_text).filter(|t| t.len() <= max).map(str::to_owned).ok_or(RecordError::Field(name))
        };
        let kind = map.get("$type").and_then(Value::as_text).unwrap_or_default();
        if kind != MANIFEST_COLLECTION {
            return Err(RecordError::Type(kind.chars().take(64).collect()));
        }
        let created_at = text("createdAt", 64)?;
        if !is_valid_datetime(&created_at) {
            return Err(RecordError::Field("createdAt"));
        }
        Ok(ManifestRecord {
            repository: text("repository", 255)?,
            digest: text("digest", 128)?,
            media_type: text("mediaType", 128)?,
            schema_version: map.get("schemaVersion").and_then(Value::as_integer).ok_or(RecordError::Field("schemaVersion"))?,
            created_at,
            hold_did: map.get("holdDid").and_then(Value::as_text).map(str::to_owned),
        })
    }
}

/// Builds a minimal valid manifest record value (for tests and fixtures).
pub fn manifest_value(digest: &str, repository: &str, media_type: &str, created_at: &str) -> Value {
    let mut map = cbor::Map::default();
    map.insert("$type", Value::Text(MANIFEST_COLLECTION.into()));
    map.insert("repository", Value::Text(repository.into()));
    map.insert("digest", Value::Text(digest.into()));
    map.insert("mediaType", Value::Text(media_type.into()));
    map.insert("schemaVersion", Value::Integer(2));
    map.insert("createdAt", Value::Text(created_at.into()));
    Value::Map(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(extra: &[(&str, Value)]) -> Vec<u8> {
        let mut value = manifest_value(&format!("sha256:{}", "ab".repeat(32)), "app", "application/vnd.oci.image.manifest.v1+json", "2026-12-07T10:00:00.000Z");
        if let Value::Map(map) = &mut value {
            for (key, item) in extra {
                map.insert(*key, item.clone());
            }
        }
        cbor::encode(&value)
    }

    /// The cursor reads the usual record (with the lexicon's nested fields) and gives way to
    /// the value route for everything else, which then answers as before.
    #[test]
    fn the_cursor_and_the_value_route_give_the_same_record_or_error() {
        let layers = Value::Array(vec![Value::Map(cbor::Map(vec![("size".into(), Value::Integer(3)), ("digest".into(), Value::Text("sha256:00".into()))]))]);
        let limits = Limits::default();
        let general = |bytes: &[u8]| cbor::decode(bytes, limits.max_cbor_depth).map_err(RecordError::Cbor).and_then(|v| ManifestRecord::from_value(&v));
        let usual = [
            record(&[]),
            record(&[("layers", layers.clone()), ("holdDid", Value::Text("did:web:hold.test".into())), ("annotations", Value::Map(cbor::Map::default()))]),
            record(&[("schemaVersion", Value::Integer(-2)), ("link", Value::Link(crate::cid::Cid::for_raw(b"x"))), ("flag", Value::Null)]),
        ];
        for bytes in &usual {
            assert!(ManifestRecord::read_valid(bytes, &limits).is_some());
            assert_eq!(ManifestRecord::decode(bytes, &limits), general(bytes));
        }
        let odd = [
            record(&[("holdDid", Value::Integer(1))]),
            record(&[("$type", Value::Text("io.atcr.other".into()))]),
            record(&[("digest", Value::Text("x".repeat(129)))]),
            record(&[("createdAt", Value::Text("yesterday".into()))]),
            record(&[("schemaVersion", Value::Text("2".into()))]),
            record(&[("repository", Value::Null)]),
            cbor::encode(&Value::Array(vec![])),
        ];
        for bytes in &odd {
            assert!(ManifestRecord::read_valid(bytes, &limits).is_none());
            assert_eq!(ManifestRecord::decode(bytes, &limits), general(bytes));
        }
        // Too deep for the limit, trailing bytes: refused by both routes alike.
        let deep = record(&[("layers", layers)]);
        let shallow = Limits { max_cbor_depth: 2, ..Limits::default() };
        assert!(ManifestRecord::read_valid(&deep, &shallow).is_none());
        assert_eq!(ManifestRecord::decode(&deep, &shallow), Err(RecordError::Cbor(CborError::TooDeep)));
        let mut trailing = record(&[]);
        trailing.push(0);
        assert_eq!(ManifestRecord::decode(&trailing, &limits), Err(RecordError::Cbor(CborError::TrailingBytes)));
    }
}
