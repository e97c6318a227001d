//! Firehose frames (`com.atproto.sync.subscribeRepos`, from a PDS or a relay): one binary
//! WebSocket message holds two strict DAG-CBOR objects, a header `{op, t}` and a body. `op: 1`
//! is an event whose kind is `t` (`#commit`, `#sync`, `#identity`, `#account`, `#info`);
//! `op: -1` is an error frame (`{error, message?}`), after which the server closes.
//!
//! Decoding only: nothing here is verified, and an event is a hint until it proves itself
//! (a `#commit`'s signature, rev and MST blocks are checked by its consumer). Frames are hostile
//! input: the sync spec's limits are enforced (a frame ≤ 5 MB, `blocks` ≤ 2,000,000 bytes, ≤ 200
//! ops), every field is typed and validated (DIDs, revs as TIDs, op paths as
//! `collection/rkey`, the op fields each action requires), unknown `t` values and unknown fields
//! are ignored, and bad framing or CBOR is an error (drop the connection).

use std::fmt;

use crate::Limits;
use crate::cbor::{self, Map, Value};
use crate::cid::Cid;
use crate::syntax::{is_valid_did, is_valid_nsid, is_valid_record_key, tid_timestamp_micros};

/// Largest frame accepted (the sync spec's WebSocket frame limit).
pub const MAX_FRAME_BYTES: usize = 5 << 20;
/// Largest `blocks` CAR slice of a `#commit` or `#sync`.
pub const MAX_BLOCKS_BYTES: usize = 2_000_000;
/// Most ops in one `#commit`.
pub const MAX_OPS: usize = 200;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A repository commit.
    Commit(CommitEvent),
    /// A repository's current commit, without ops (a reset: re-check the whole repository).
    Sync(SyncEvent),
    /// An identity changed (handle, key or PDS): refetch the DID document.
    Identity(IdentityEvent),
    /// An account's hosting status changed.
    Account(AccountEvent),
    /// Information from the server (`OutdatedCursor`: events may have been missed).
    Info {
        /// The condition's name.
        name: String,
        /// What it means, for people.
        message: Option<String>,
    },
    /// An error frame; the server closes after it (`FutureCursor`, `ConsumerTooSlow`, …).
    Error {
        /// The error's name.
        error: String,
        /// What it means, for people.
        message: Option<String>,
    },
    /// An event kind this decoder does not know (ignored by consumers, as the spec says).
    Unknown {
        /// The header's `t` (cut to 64 characters).
        kind: String,
    },
}

/// `#commit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitEvent {
    /// The stream's sequence number (a relay re-sequences).
    pub seq: i64,
    /// The repository's DID.
    pub repo: String,
    /// The commit's rev as the event states it (the commit block's own rev is the signed one).
    pub rev: String,
    /// The rev of the previous commit, as the event states it (not signed).
    pub since: Option<String>,
    /// The commit's CID (the CAR slice's root).
    pub commit: Cid,
    /// The CAR slice: the commit block and the MST nodes (and records) the ops touch.
    pub blocks: Vec<u8>,
    /// The record operations (at most [`MAX_OPS`]).
    pub ops: Vec<RepoOp>,
    /// The MST root of the previous commit (sync 1.1; absent from a repository's first commit).
    pub prev_data: Option<Cid>,
    /// Deprecated: set when the blocks were too big to send (then nothing here proves anything).
    pub too_big: bool,
    /// When the server sequenced it (its word).
    pub time: String,
}

/// One record operation of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoOp {
    /// Create, update or delete.
    pub action: Action,
    /// `collection/rkey`.
    pub path: String,
    /// The new record's CID (create, update).
    pub cid: Option<Cid>,
    /// The previous record's CID (update, delete; sync 1.1).
    pub prev: Option<Cid>,
}

impl RepoOp {
    /// The collection and record key of the path.
    pub fn collection_and_rkey(&self) -> (&str, &str) {
        self.path.split_once('/').unwrap_or((self.path.as_str(), ""))
    }
}

/// What an op does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new record (`cid`, no `prev`).
    Create,
    /// A replaced record (`cid`, and `prev` in sync 1.1).
    Update,
    /// A removed record (`prev` in sync 1.1, no `cid`).
    Delete,
}

/// `#sync`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncEvent {
    /// The stream's sequence number.
    pub seq: i64,
    /// The repository's DID.
    pub did: String,
    /// The current commit's rev, as the event states it.
    pub rev: String,
    /// A CAR holding the signed commit block only.
    pub blocks: Vec<u8>,
    /// When the server sequenced it (its word).
    pub time: String,
}

/// `#identity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityEvent {
    /// The stream's sequence number.
    pub seq: i64,
    /// Whose identity changed.
    pub did: String,
    /// The handle, when the PDS sends it (a relay strips it; never trusted: resolve it).
    pub handle: Option<String>,
    /// When the server sequenced it (its word).
    pub time: String,
}

/// `#account`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountEvent {
    /// The stream's sequence number.
    pub seq: i64,
    /// Whose account changed.
    pub did: String,
    /// Whether the account is hosted and active.
    pub active: bool,
    /// Why inactive: `takendown`, `suspended`, `deleted`, `deactivated`, …
    pub status: Option<String>,
    /// When the server sequenced it (its word).
    pub time: String,
}

/// Why a frame is unusable (drop the connection: the stream can no longer be trusted to be in
/// step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Larger than [`MAX_FRAME_BYTES`].
    TooLarge(usize),
    /// The header is not strict DAG-CBOR, or not `{op, t}`.
    Header(String),
    /// The body is not strict DAG-CBOR (or has trailing bytes).
    Body(String),
    /// A field is missing, of the wrong type, or invalid.
    Field {
        /// The event kind.
        event: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes is over the {MAX_FRAME_BYTES}-byte limit"),
            FrameError::Header(e) => write!(f, "frame header: {e}"),
            FrameError::Body(e) => write!(f, "frame body: {e}"),
            FrameError::Field { event, field, problem } => write!(f, "{event} field '{field}': {problem}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Decodes one frame (a binary WebSocket message).
pub fn decode_frame(bytes: &[u8], limits: &Limits) -> Result<Frame, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let (header, used) = cbor::decode_prefix(bytes, limits.max_cbor_depth).map_err(|e| FrameError::Header(e.to_string()))?;
    let header = header.as_map().ok_or_else(|| FrameError::Header("not a map".into()))?;
    let op = header.get("op").and_then(Value::as_integer).ok_or_else(|| FrameError::Header("no integer 'op'".into()))?;
    let body = cbor::decode(bytes.get(used..).unwrap_or_default(), limits.max_cbor_depth).map_err(|e| FrameError::Body(e.to_string()))?;
    let body = body.as_map().ok_or_else(|| FrameError::Body("not a map".into()))?;
    match op {
        -1 => {
            let fields = Fields { map: body, event: "error frame" };
            Ok(Frame::Error { error: fields.text("error", 256)?, message: fields.optional_text("message", 4096)? })
        }
        1 => {
            let kind = header.get("t").and_then(Value::as_text).ok_or_else(|| FrameError::Header("op 1 without a text 't'".into()))?;
            match kind {
                "#commit" => commit(&Fields { map: body, event: "#commit" }).map(Frame::Commit),
                "#sync" => sync(&Fields { map: body, event: "#sync" }).map(Frame::Sync),
                "#identity" => identity(&Fields { map: body, event: "#identity" }).map(Frame::Identity),
                "#account" => account(&Fields { map: body, event: "#account" }).map(Frame::Account),
                "#info" => {
                    let fields = Fields { map: body, event: "#info" };
                    Ok(Frame::Info { name: fields.text("name", 256)?, message: fields.optional_text("message", 4096)? })
                }
                other => Ok(Frame::Unknown { kind: other.chars().take(64).collect() }),
            }
        }
        other => Err(FrameError::Header(format!("op {other} is neither 1 nor -1"))),
    }
}

/// The body of one event, read field by field.
struct Fields<'a> {
    map: &'a Map,
    event: &'static str,
}

impl Fields<'_> {
    fn error(&self, field: &'static str, problem: impl Into<String>) -> FrameError {
        FrameError::Field { event: self.event, field, problem: problem.into() }
    }

    fn get(&self, field: &'static str) -> Option<&Value> {
        self.map.get(field).filter(|v| **v != Value::Null)
    }

    fn text(&self, field: &'static str, max: usize) -> Result<String, FrameError> {
        self.optional_text(field, max)?.ok_or_else(|| self.error(field, "missing"))
    }

    fn optional_text(&self, field: &'static str, max: usize) -> Result<Option<String>, FrameError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Text(t)) if t.len() <= max => Ok(Some(t.clone())),
            Some(Value::Text(t)) => Err(self.error(field, format!("{} bytes, over {max}", t.len()))),
            Some(other) => Err(self.error(field, format!("a {}, not text", other.kind()))),
        }
    }

    fn seq(&self) -> Result<i64, FrameError> {
        match self.get("seq").and_then(Value::as_integer) {
            Some(seq) if seq >= 0 => Ok(seq),
            Some(seq) => Err(self.error("seq", format!("{seq} is negative"))),
            None => Err(self.error("seq", "missing or not an integer")),
        }
    }

    fn did(&self, field: &'static str) -> Result<String, FrameError> {
        let did = self.text(field, 2048)?;
        if is_valid_did(&did) { Ok(did) } else { Err(self.error(field, "not a DID")) }
    }

    fn rev(&self, field: &'static str) -> Result<Option<String>, FrameError> {
        match self.optional_text(field, 16)? {
            Some(rev) if tid_timestamp_micros(&rev).is_none() => Err(self.error(field, "not a TID")),
            rev => Ok(rev),
        }
    }

    fn blocks(&self) -> Result<Vec<u8>, FrameError> {
        match self.get("blocks") {
            Some(Value::Bytes(b)) if b.len() <= MAX_BLOCKS_BYTES => Ok(b.clone()),
            Some(Value::Bytes(b)) => Err(self.error("blocks", format!("{} bytes, over {MAX_BLOCKS_BYTES}", b.len()))),
            _ => Err(self.error("blocks", "missing or not bytes")),
        }
    }

    fn link(&self, field: &'static str) -> Result<Option<Cid>, FrameError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Link(cid)) => Ok(Some(*cid)),
            Some(other) => Err(self.error(field, format!("a {}, not a CID link", other.kind()))),
        }
    }

    fn flag(&self, field: &'static str) -> Result<bool, FrameError> {
        match self.get(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.error(field, format!("a {}, not a boolean", other.kind()))),
        }
    }
}

fn commit(f: &Fields<'_>) -> Result<CommitEvent, FrameError> {
    let ops = match f.get("ops") {
        Some(Value::Array(ops)) if ops.len() <= MAX_OPS => ops.iter().map(|op| repo_op(f, op)).collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(ops)) => return Err(f.error("ops", format!("{} ops, over {MAX_OPS}", ops.len()))),
        _ => return Err(f.error("ops", "missing or not an array")),
    };
    Ok(CommitEvent {
        seq: f.seq()?,
        repo: f.did("repo")?,
        rev: f.rev("rev")?.ok_or_else(|| f.error("rev", "missing"))?,
        since: f.rev("since")?,
        commit: f.link("commit")?.ok_or_else(|| f.error("commit", "missing"))?,
        blocks: f.blocks()?,
        ops,
        prev_data: f.link("prevData")?,
        too_big: f.flag("tooBig")?,
        time: f.text("time", 64)?,
    })
}

/// One op: the path a valid `collection/rkey`, and exactly the CIDs its action requires.
fn repo_op(f: &Fields<'_>, value: &Value) -> Result<RepoOp, FrameError> {
    let map = value.as_map().ok_or_else(|| f.error("ops", "an op is not a map"))?;
    let op = Fields { map, event: f.event };
    let action = match op.text("action", 16)?.as_str() {
        "create" => Action::Create,
        "update" => Action::Update,
        "delete" => Action::Delete,
        other => return Err(op.error("action", format!("{:?} is not create, update or delete", other.chars().take(16).collect::<String>()))),
    };
    let path = op.text("path", 512)?;
    let valid_path = path.split_once('/').is_some_and(|(collection, rkey)| is_valid_nsid(collection) && is_valid_record_key(rkey));
    if !valid_path {
        return Err(op.error("path", "not collection/rkey"));
    }
    let (cid, prev) = (op.link("cid")?, op.link("prev")?);
    match (action, cid.is_some(), prev.is_some()) {
        (Action::Create, true, false) | (Action::Update, true, _) | (Action::Delete, false, _) => Ok(RepoOp { action, path, cid, prev }),
        (Action::Create, _, _) => Err(op.error("cid", "a create needs the new record's cid and no prev")),
        (Action::Update, false, _) => Err(op.error("cid", "an update needs the new record's cid")),
        (Action::Delete, true, _) => Err(op.error("cid", "a delete has no new record")),
    }
}

fn sync(f: &Fields<'_>) -> Result<SyncEvent, FrameError> {
    Ok(SyncEvent {
        seq: f.seq()?,
        did: f.did("did")?,
        rev: f.rev("rev")?.ok_or_else(|| f.error("rev", "missing"))?,
        blocks: f.blocks()?,
        time: f.text("time", 64)?,
    })
}

fn identity(f: &Fields<'_>) -> Result<IdentityEvent, FrameError> {
    Ok(IdentityEvent { seq: f.seq()?, did: f.did("did")?, handle: f.optional_text("handle", 253)?, time: f.text("time", 64)? })
}

fn account(f: &Fields<'_>) -> Result<AccountEvent, FrameError> {
    let active = match f.get("active") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(f.error("active", "missing or not a boolean")),
    };
    Ok(AccountEvent { seq: f.seq()?, did: f.did("did")?, active, status: f.optional_text("status", 64)?, time: f.text("time", 64)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(Map(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    fn frame(header: Value, body: Value) -> Vec<u8> {
        let mut bytes = cbor::encode(&header);
        bytes.extend(cbor::encode(&body));
        bytes
    }

    fn cid(label: &str) -> Cid {
        Cid::for_dag_cbor(label.as_bytes())
    }

    fn commit_body(ops: Vec<Value>) -> Value {
        map(vec![
            ("seq", Value::Integer(30)),
            ("repo", text("did:plc:ewvi7nxzyoun6zhxrhs64oiz")),
            ("rev", text("3n3ne65wkas2v")),
            ("since", Value::Null),
            ("commit", Value::Link(cid("commit"))),
            ("blocks", Value::Bytes(vec![1, 2, 3])),
            ("ops", Value::Array(ops)),
            ("prevData", Value::Link(cid("prev-data"))),
            ("rebase", Value::Bool(false)),
            ("tooBig", Value::Bool(false)),
            ("blobs", Value::Array(Vec::new())),
            ("time", text("2026-12-01T00:00:00.000Z")),
            ("someFutureField", text("ignored")),
        ])
    }

    fn op(action: &str, path: &str, cid_: Option<Cid>, prev: Option<Cid>) -> Value {
        map(vec![
            ("action", text(action)),
            ("path", text(path)),
            ("cid", cid_.map_or(Value::Null, Value::Link)),
            ("prev", prev.map_or(Value::Null, Value::Link)),
        ])
    }

    #[test]
    fn a_delete_commit_decodes_with_its_prev() {
        let ops = vec![op("delete", "io.atcr.manifest/3jzfcijpj2z2a", None, Some(cid("old-record")))];
        let bytes = frame(map(vec![("t", text("#commit")), ("op", Value::Integer(1))]), commit_body(ops));
        let Frame::Commit(event) = decode_frame(&bytes, &Limits::default()).unwrap() else { panic!("not a commit") };
        assert_eq!((event.seq, event.rev.as_str(), event.since, event.prev_data), (30, "3n3ne65wkas2v", None, Some(cid("prev-data"))));
        assert_eq!(event.ops[0].action, Action::Delete);
        assert_eq!(event.ops[0].collection_and_rkey(), ("io.atcr.manifest", "3jzfcijpj2z2a"));
        assert_eq!(event.ops[0].prev, Some(cid("old-record")));
    }

    #[test]
    fn every_event_kind_and_error_frames() {
        let header = |t: &str| map(vec![("t", text(t)), ("op", Value::Integer(1))]);
        let did = text("did:plc:ewvi7nxzyoun6zhxrhs64oiz");
        let time = text("2026-12-01T00:00:00.000Z");
        let identity = frame(header("#identity"), map(vec![("did", did.clone()), ("seq", Value::Integer(4)), ("time", time.clone())]));
        assert!(matches!(decode_frame(&identity, &Limits::default()), Ok(Frame::Identity(IdentityEvent { seq: 4, handle: None, .. }))));
        let account = frame(
            header("#account"),
            map(vec![("did", did.clone()), ("seq", Value::Integer(5)), ("time", time.clone()), ("active", Value::Bool(false)), ("status", text("takendown"))]),
        );
        assert!(matches!(decode_frame(&account, &Limits::default()), Ok(Frame::Account(AccountEvent { active: false, .. }))));
        let sync = frame(
            header("#sync"),
            map(vec![("did", did), ("seq", Value::Integer(6)), ("time", time), ("rev", text("3n3ne65wkas2v")), ("blocks", Value::Bytes(vec![0]))]),
        );
        assert!(matches!(decode_frame(&sync, &Limits::default()), Ok(Frame::Sync(_))));
        let info = frame(header("#info"), map(vec![("name", text("OutdatedCursor"))]));
        assert_eq!(decode_frame(&info, &Limits::default()), Ok(Frame::Info { name: "OutdatedCursor".into(), message: None }));
        let unknown = frame(header("#labels"), map(vec![]));
        assert_eq!(decode_frame(&unknown, &Limits::default()), Ok(Frame::Unknown { kind: "#labels".into() }));
        let error = frame(map(vec![("op", Value::Integer(-1))]), map(vec![("error", text("FutureCursor"))]));
        assert_eq!(decode_frame(&error, &Limits::default()), Ok(Frame::Error { error: "FutureCursor".into(), message: None }));
    }

    #[test]
    fn hostile_frames_are_refused() {
        let header = map(vec![("t", text("#commit")), ("op", Value::Integer(1))]);
        let refused = |body: Value| decode_frame(&frame(header.clone(), body), &Limits::default()).unwrap_err();
        // Ops each action cannot have.
        assert!(matches!(refused(commit_body(vec![op("create", "io.atcr.manifest/a", None, None)])), FrameError::Field { field: "cid", .. }));
        assert!(matches!(refused(commit_body(vec![op("delete", "io.atcr.manifest/a", Some(cid("x")), None)])), FrameError::Field { field: "cid", .. }));
        assert!(matches!(refused(commit_body(vec![op("create", "io.atcr.manifest/a", Some(cid("x")), Some(cid("y")))])), FrameError::Field { .. }));
        assert!(matches!(refused(commit_body(vec![op("delete", "../../etc/passwd", None, None)])), FrameError::Field { field: "path", .. }));
        assert!(matches!(refused(commit_body(vec![op("explode", "io.atcr.manifest/a", None, None)])), FrameError::Field { field: "action", .. }));
        // Too many ops.
        let many = (0..=MAX_OPS).map(|i| op("delete", &format!("io.atcr.manifest/k{i}"), None, None)).collect();
        assert!(matches!(refused(commit_body(many)), FrameError::Field { field: "ops", .. }));
        // Blocks over the limit.
        let Value::Map(mut body) = commit_body(Vec::new()) else { unreachable!() };
        body.insert("blocks", Value::Bytes(vec![0; MAX_BLOCKS_BYTES + 1]));
        assert!(matches!(refused(Value::Map(body)), FrameError::Field { field: "blocks", .. }));
        // A rev that is not a TID, a repo that is not a DID.
        let Value::Map(mut body) = commit_body(Vec::new()) else { unreachable!() };
        body.insert("rev", text("yesterday"));
        assert!(matches!(refused(Value::Map(body)), FrameError::Field { field: "rev", .. }));
        // Framing: trailing bytes, a body missing, an unknown op, oversized.
        let mut trailing = frame(header.clone(), commit_body(Vec::new()));
        trailing.push(0);
        assert!(matches!(decode_frame(&trailing, &Limits::default()), Err(FrameError::Body(_))));
        assert!(matches!(decode_frame(&cbor::encode(&header), &Limits::default()), Err(FrameError::Body(_))));
        let odd = frame(map(vec![("op", Value::Integer(2))]), map(vec![]));
        assert!(matches!(decode_frame(&odd, &Limits::default()), Err(FrameError::Header(_))));
        assert!(matches!(decode_frame(&vec![0; MAX_FRAME_BYTES + 1], &Limits::default()), Err(FrameError::TooLarge(_))));
    }
}
