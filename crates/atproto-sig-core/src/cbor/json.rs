//! JSON <-> DAG-CBOR as atproto maps them (`$link`, `$bytes`, blobs), for records and PLC operations.

use std::fmt;

use super::{Map, Value};
use crate::cid::Cid;

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
