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
        let value = cbor::decode(block, limits.max_cbor_depth).map_err(RecordError::Cbor)?;
        ManifestRecord::from_value(&value)
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
