//! did:plc audit-log verification: the DID is the hash of the genesis operation and every later
//! operation is signed by a rotation key of the operation it builds on, so the current key, PDS
//! and handle can be derived without trusting the directory's rendered document.
//! (The directory is still trusted for ordering and `createdAt`, which are not signed.)

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::cbor::{self, Value};
use crate::cid::Cid;
use crate::crypto::PublicKey;
use crate::did::{DidDocError, normalize_endpoint};
use crate::limits::Limits;
use crate::syntax::{is_valid_did_plc, is_valid_handle, parse_datetime_micros};

/// How long a higher-priority rotation key may take to nullify operations (PLC spec).
pub const RECOVERY_WINDOW_MICROS: i64 = 72 * 3600 * 1_000_000;

/// The state an operation log ends in.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PlcState {
    /// The DID.
    pub did: String,
    /// Rotation keys (did:key), highest priority first.
    pub rotation_keys: Vec<String>,
    /// Verification methods by name (did:key values).
    pub verification_methods: BTreeMap<String, String>,
    /// `alsoKnownAs` URIs.
    pub also_known_as: Vec<String>,
    /// Services by name: (type, endpoint).
    pub services: BTreeMap<String, (String, String)>,
    /// True when the last valid operation is a tombstone.
    pub deactivated: bool,
}

impl PlcState {
    /// The `atproto` verification key.
    pub fn signing_key(&self) -> Result<PublicKey, DidDocError> {
        let did_key = self.verification_methods.get("atproto").ok_or(DidDocError::NoSigningKey)?;
        PublicKey::from_did_key(did_key).map_err(DidDocError::Key)
    }

    /// The `atproto_pds` endpoint, if its type is right.
    pub fn pds(&self) -> Option<String> {
        match self.services.get("atproto_pds") {
            Some((kind, endpoint)) if kind == "AtprotoPersonalDataServer" => normalize_endpoint(endpoint),
            _ => None,
        }
    }

    /// The first valid `at://` handle, lowercased.
    pub fn handle(&self) -> Option<String> {
        self.also_known_as.iter().filter_map(|a| a.strip_prefix("at://")).find(|h| is_valid_handle(h)).map(str::to_ascii_lowercase)
    }
}

/// Why an audit log is not a valid history of the DID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlcError {
    /// Not a JSON array of entries, too large, or an entry of the wrong shape.
    Format(String),
    /// Not a did:plc identifier.
    InvalidDid,
    /// The log is empty.
    Empty,
    /// Entry `index` is invalid for `reason`.
    Entry {
        /// Position in the log.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for PlcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlcError::Format(e) => write!(f, "audit log is malformed: {e}"),
            PlcError::InvalidDid => write!(f, "not a did:plc identifier"),
            PlcError::Empty => write!(f, "audit log is empty"),
            PlcError::Entry { index, reason } => write!(f, "audit log entry {index}: {reason}"),
        }
    }
}

impl std::error::Error for PlcError {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Operation,
    Tombstone,
}

struct Op {
    cid: String,
    kind: Kind,
    state: PlcState,
    created_at: i64,
    /// Index in the previous operation's rotation keys of the key that signed this one.
    signer: usize,
}

fn entry_error(index: usize, reason: impl Into<String>) -> PlcError {
    PlcError::Entry { index, reason: reason.into() }
}

/// Decodes a `sig`: base64url, no padding, zero trailing bits, 64 bytes.
fn decode_signature(text: &str) -> Option<Vec<u8>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
    (bytes.len() == 64).then_some(bytes)
}

/// Maps an operation (plc_operation, or the legacy `create` genesis) to the state it sets.
fn normalize(did: &str, op: &Json) -> Option<PlcState> {
    let text = |name: &str| op.get(name).and_then(Json::as_str);
    let strings = |name: &str| -> Option<Vec<String>> { op.get(name)?.as_array()?.iter().map(|v| v.as_str().map(str::to_owned)).collect() };
    match text("type")? {
        "create" => {
            let signing = text("signingKey")?.to_owned();
            let recovery = text("recoveryKey")?.to_owned();
            let handle = text("handle")?;
            let service = text("service")?;
            let endpoint = if service.contains("://") { service.to_owned() } else { format!("https://{service}") };
            Some(PlcState {
                did: did.to_owned(),
                rotation_keys: vec![recovery, signing.clone()],
                verification_methods: BTreeMap::from([("atproto".to_owned(), signing)]),
                also_known_as: vec![format!("at://{}", handle.split("://").last().unwrap_or(handle))],
                services: BTreeMap::from([("atproto_pds".to_owned(), ("AtprotoPersonalDataServer".to_owned(), endpoint))]),
                deactivated: false,
            })
        }
        "plc_operation" => {
            let methods = op.get("verificationMethods")?.as_object()?;
            let services = op.get("services")?.as_object()?;
            Some(PlcState {
                did: did.to_owned(),
                rotation_keys: strings("rotationKeys")?,
                verification_methods: methods.iter().map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect::<Option<_>>()?,
                also_known_as: strings("alsoKnownAs")?,
                services: services
                    .iter()
                    .map(|(k, v)| Some((k.clone(), (v.get("type")?.as_str()?.to_owned(), v.get("endpoint")?.as_str()?.to_owned()))))
                    .collect::<Option<_>>()?,
                deactivated: false,
            })
        }
        _ => None,
    }
}

/// The did:plc limits on one operation. The specification allows 5 rotation keys and 7500
/// bytes; the reference directory has accepted up to 10 rotation keys (in 4000 bytes), so
/// historical logs are held to the larger of the two. Minimums (an empty `rotationKeys`) are
/// not enforced: historical logs hold such operations (interop `log_empty_rotation_keys`).
pub const MAX_ROTATION_KEYS: usize = 10;
/// Most verification methods in one operation.
pub const MAX_VERIFICATION_METHODS: usize = 10;
/// Most services in one operation.
pub const MAX_SERVICES: usize = 10;
/// Most `alsoKnownAs` entries in one operation.
pub const MAX_ALSO_KNOWN_AS: usize = 10;
/// Largest operation, as DAG-CBOR, in bytes (the specification's limit).
pub const MAX_OPERATION_BYTES: usize = 7500;
/// Longest single string (a key, handle or endpoint) in an operation.
const MAX_FIELD_BYTES: usize = 2048;

fn check_operation_limits(operation: &Json) -> Result<(), String> {
    let count = |name: &str| match operation.get(name) {
        Some(Json::Array(a)) => a.len(),
        Some(Json::Object(o)) => o.len(),
        _ => 0,
    };
    for (name, max) in
        [("rotationKeys", MAX_ROTATION_KEYS), ("verificationMethods", MAX_VERIFICATION_METHODS), ("services", MAX_SERVICES), ("alsoKnownAs", MAX_ALSO_KNOWN_AS)]
    {
        let n = count(name);
        if n > max {
            return Err(format!("{n} {name}, more than the did:plc limit of {max}"));
        }
    }
    // A cheap bound first (the JSON text size, which stops counting early), then the exact
    // DAG-CBOR size of operations that could fit.
    let mut size = 0usize;
    let mut stack = vec![operation];
    while let Some(value) = stack.pop() {
        match value {
            Json::String(text) if text.len() > MAX_FIELD_BYTES => return Err(format!("a field of {} bytes, more than {MAX_FIELD_BYTES}", text.len())),
            Json::String(text) => size += text.len() + 2,
            Json::Array(items) => {
                size += 2;
                stack.extend(items);
            }
            Json::Object(map) => {
                size += 2;
                for (key, item) in map {
                    size += key.len() + 2;
                    stack.push(item);
                }
            }
            _ => size += 8,
        }
        if size > MAX_OPERATION_BYTES + 2048 {
            break;
        }
    }
    let exact = if size > MAX_OPERATION_BYTES + 2048 { size } else { cbor::from_json(operation, 16).map_or(0, |v| cbor::encode(&v).len()) };
    if exact > MAX_OPERATION_BYTES {
        return Err(format!("the operation is larger than the did:plc limit of {MAX_OPERATION_BYTES} bytes"));
    }
    Ok(())
}

/// Index of the first key in `keys` that verifies `sig` over `message`, among the first `limit`.
fn signer_index(keys: &[String], limit: usize, message: &[u8], sig: &[u8]) -> Option<usize> {
    keys.iter().take(limit).position(|k| PublicKey::from_did_key(k).is_ok_and(|key| key.verify(message, sig).is_ok()))
}

/// Verifies a `GET /<did>/log/audit` response and returns the state it ends in.
pub fn verify_audit_log(did: &str, bytes: &[u8], limits: &Limits) -> Result<PlcState, PlcError> {
    let entries = bounded_entries(did, bytes, limits)?;
    let mut ops: Vec<Op> = Vec::with_capacity(entries.len());
    // Indices into `ops` of the current canonical chain.
    let mut chain: Vec<usize> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let decoded = decode_entry(did, index, entry)?;
        let signer = if index == 0 {
            genesis_signer(did, &decoded).map_err(|reason| entry_error(index, reason))?
        } else {
            let (signer, position) = successor_signer(&ops, &chain, &decoded).map_err(|reason| entry_error(index, reason))?;
            chain.truncate(position + 1);
            signer
        };
        chain.push(index);
        ops.push(Op { cid: decoded.cid, kind: decoded.kind, state: decoded.state, created_at: decoded.created_at, signer });
    }
    for (index, entry) in entries.iter().enumerate() {
        let nullified = entry.get("nullified").and_then(Json::as_bool).unwrap_or(false);
        if nullified == chain.contains(&index) {
            return Err(entry_error(index, "nullified flag disagrees with the verified history"));
        }
    }
    let last = chain.last().and_then(|&i| ops.get(i)).ok_or(PlcError::Empty)?;
    Ok(last.state.clone())
}

/// The log's entries, with every operation within the did:plc limits before any signature is
/// checked: a hostile log is refused at its first offending operation for the cost of reading it.
fn bounded_entries(did: &str, bytes: &[u8], limits: &Limits) -> Result<Vec<Json>, PlcError> {
    if !is_valid_did_plc(did) {
        return Err(PlcError::InvalidDid);
    }
    if bytes.len() > limits.max_json_bytes.saturating_mul(16) {
        return Err(PlcError::Format(format!("{} bytes is over the limit", bytes.len())));
    }
    let Json::Array(entries) = serde_json::from_slice(bytes).map_err(|e| PlcError::Format(e.to_string()))? else {
        return Err(PlcError::Format("not an array".into()));
    };
    if entries.len() > limits.max_audit_log_entries {
        return Err(PlcError::Format(format!("{} entries is over the limit", entries.len())));
    }
    if entries.is_empty() {
        return Err(PlcError::Empty);
    }
    for (index, entry) in entries.iter().enumerate() {
        if let Some(operation) = entry.get("operation") {
            check_operation_limits(operation).map_err(|reason| entry_error(index, reason))?;
        }
    }
    Ok(entries)
}

/// One log entry, decoded and checked on its own (CID, signature bytes, fields).
struct Decoded {
    cid: String,
    /// The DAG-CBOR of the signed operation (its hash is the CID; the genesis's, the DID).
    signed_bytes: Vec<u8>,
    /// The DAG-CBOR of the operation without `sig`: what the signature covers.
    message: Vec<u8>,
    sig: Vec<u8>,
    created_at: i64,
    kind: Kind,
    legacy_create: bool,
    state: PlcState,
    prev: Option<String>,
}

fn decode_entry(did: &str, index: usize, entry: &Json) -> Result<Decoded, PlcError> {
    let fail = |reason: &str| entry_error(index, reason);
    if entry.get("did").and_then(Json::as_str) != Some(did) {
        return Err(fail("entry is for another DID"));
    }
    let operation = entry.get("operation").ok_or_else(|| fail("no operation"))?;
    let signed = cbor::from_json(operation, 16).map_err(|e| fail(&format!("operation: {e}")))?;
    let Value::Map(mut unsigned) = signed.clone() else { return Err(fail("operation is not an object")) };
    let signed_bytes = cbor::encode(&signed);
    let cid = Cid::for_dag_cbor(&signed_bytes).to_string();
    if entry.get("cid").and_then(Json::as_str) != Some(cid.as_str()) {
        return Err(fail("cid does not match the operation"));
    }
    let sig = match unsigned.remove("sig") {
        Some(Value::Text(text)) => decode_signature(&text).ok_or_else(|| fail("sig is not 64 bytes of strict unpadded base64url"))?,
        _ => return Err(fail("sig is missing")),
    };
    let message = cbor::encode(&Value::Map(unsigned));
    let created_at = entry.get("createdAt").and_then(Json::as_str).and_then(parse_datetime_micros).ok_or_else(|| fail("createdAt is not a datetime"))?;
    let kind = match operation.get("type").and_then(Json::as_str) {
        Some("plc_tombstone") => Kind::Tombstone,
        Some("plc_operation" | "create") => Kind::Operation,
        _ => return Err(fail("unknown operation type")),
    };
    let state = match kind {
        Kind::Operation => normalize(did, operation).ok_or_else(|| fail("operation fields are malformed"))?,
        Kind::Tombstone => PlcState { did: did.to_owned(), deactivated: true, ..PlcState::default() },
    };
    let prev = match operation.get("prev") {
        Some(Json::Null) => None,
        Some(Json::String(p)) => Some(p.clone()),
        _ => return Err(fail("prev is missing")),
    };
    let legacy_create = operation.get("type").and_then(Json::as_str) == Some("create");
    Ok(Decoded { cid, signed_bytes, message, sig, created_at, kind, legacy_create, state, prev })
}

/// The genesis: `prev` null, the DID its hash, signed by one of its own rotation keys.
fn genesis_signer(did: &str, op: &Decoded) -> Result<usize, &'static str> {
    if op.prev.is_some() || op.kind == Kind::Tombstone {
        return Err("genesis operation must have prev = null and not be a tombstone");
    }
    let digest = Sha256::digest(&op.signed_bytes);
    let derived = format!("did:plc:{}", multibase::Base::Base32Lower.encode(digest).get(..24).unwrap_or_default());
    if derived != did {
        return Err("DID is not derived from the genesis operation");
    }
    signer_index(&op.state.rotation_keys, usize::MAX, &op.message, &op.sig).ok_or("genesis is not signed by one of its rotation keys")
}

/// A later operation: signed by a rotation key of its `prev` on the canonical chain (a key of
/// higher priority, within 72 hours, to nullify what followed `prev`). Returns the signer's
/// index and `prev`'s position on the chain.
fn successor_signer(ops: &[Op], chain: &[usize], op: &Decoded) -> Result<(usize, usize), &'static str> {
    if op.legacy_create {
        return Err("legacy create is only valid as genesis");
    }
    let prev = op.prev.as_deref().ok_or("prev is null after genesis")?;
    let position = chain.iter().position(|&i| ops.get(i).is_some_and(|o| o.cid == prev)).ok_or("prev is not a valid (non-nullified) operation")?;
    let base = chain.get(position).and_then(|&i| ops.get(i)).ok_or("prev not found")?;
    if base.kind == Kind::Tombstone {
        return Err("operation follows a tombstone");
    }
    let keys = &base.state.rotation_keys;
    let signer = match chain.get(position + 1).and_then(|&i| ops.get(i)) {
        // Extends the chain: any rotation key of `prev` will do.
        None => signer_index(keys, usize::MAX, &op.message, &op.sig).ok_or("not signed by a rotation key of the previous operation")?,
        // Recovery: nullifies the operations after `prev`.
        Some(first_nullified) => {
            let signer =
                signer_index(keys, first_nullified.signer, &op.message, &op.sig).ok_or("nullification not signed by a higher-priority rotation key")?;
            let last = chain.last().and_then(|&i| ops.get(i)).map_or(i64::MIN, |o| o.created_at);
            if op.created_at <= last {
                return Err("nullification is not later than the operations it replaces");
            }
            if op.created_at - first_nullified.created_at > RECOVERY_WINDOW_MICROS {
                return Err("nullification is outside the 72 h recovery window");
            }
            signer
        }
    };
    Ok((signer, position))
}
