//! `proof verify` and `proof inspect`: file-only checks for operators and debugging.

use std::path::PathBuf;

use atproto_sig_core::car::Car;
use atproto_sig_core::cbor;
use atproto_sig_core::commit::Commit;
use atproto_sig_core::did::DidDocument;
use atproto_sig_core::mst::{self, Lookup};
use atproto_sig_core::plc::verify_audit_log;
use atproto_sig_core::record::{MANIFEST_COLLECTION, ManifestRecord};
use atproto_sig_core::syntax::{AtUri, is_valid_did};
use atproto_sig_core::verify::DEFAULT_CLOCK_SKEW_MICROS;
use atproto_sig_core::{Expectation, KeySource, Limits, ProofInput, Verdict, verify};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::output::{Format, print_json, print_undecided};
use crate::clock::now_micros;
use crate::engine::Failure;
use crate::exit;
use crate::fsio::read_capped;

#[derive(Subcommand, Debug)]
pub enum ProofCommand {
    /// Verify that a proof CAR shows DIGEST recorded in a commit signed by the DID's key.
    Verify(VerifyArgs),
    /// Show what a CAR holds: commit fields, signature status, MST path, record or absence.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Proof CAR (com.atproto.sync.getRecord response).
    #[arg(long)]
    car: PathBuf,
    /// DID document JSON (Multikey or legacy form).
    #[arg(long, conflicts_with = "audit_log", required_unless_present = "audit_log")]
    did_doc: Option<PathBuf>,
    /// did:plc audit log JSON: take the key from the verified log instead of a document.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Record URI: at://<did>/io.atcr.manifest[/<rkey>]; without an rkey, the digest's hex is used.
    #[arg(long)]
    uri: String,
    /// Image digest, sha256:<hex>.
    #[arg(long)]
    digest: String,
    /// Image repository name the record must name.
    #[arg(long)]
    repository: Option<String>,
    /// Verify as of this time (RFC 3339) instead of now.
    #[arg(long)]
    now: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A CAR: a getRecord proof or a whole repository export.
    #[arg(long)]
    car: PathBuf,
    /// Walk the MST to this path (COLLECTION/RKEY) and show the record or its absence.
    #[arg(long)]
    path: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(command: ProofCommand) -> u8 {
    match command {
        ProofCommand::Verify(args) => run_verify(&args),
        ProofCommand::Inspect(args) => run_inspect(&args),
    }
}

fn run_verify(args: &VerifyArgs) -> u8 {
    let limits = Limits::default();
    let uri = match AtUri::parse(&args.uri) {
        Some(uri) if is_valid_did(&uri.authority) && uri.collection.as_deref() == Some(MANIFEST_COLLECTION) => uri,
        _ => {
            let hint = format!("use at://<did>/{MANIFEST_COLLECTION}/<rkey> with a DID (resolve handles first)");
            print_undecided(args.format, &format!("{:?} is not a manifest record URI", args.uri), &hint);
            return exit::UNDECIDED;
        }
    };
    if !atproto_sig_core::verify::is_valid_digest(&args.digest) {
        print_undecided(
            args.format,
            &format!("--digest {:?} is not sha256:<64 lowercase hex>", args.digest),
            "pass the image digest, e.g. from `crane digest IMAGE` or the registry's Docker-Content-Digest",
        );
        return exit::UNDECIDED;
    }
    let now = match now_micros(args.now.as_deref()) {
        Ok(now) => now,
        Err(e) => {
            print_undecided(args.format, &e.to_string(), "");
            return exit::UNDECIDED;
        }
    };
    let car = match read_capped(&args.car, limits.max_car_bytes) {
        Ok(bytes) => bytes,
        Err(e) => {
            print_undecided(args.format, &e.to_string(), "fetch it with com.atproto.sync.getRecord?did=..&collection=io.atcr.manifest&rkey=..");
            return exit::UNDECIDED;
        }
    };
    let key_file = args.did_doc.as_ref().or(args.audit_log.as_ref());
    let key_bytes = match key_file.map(|p| read_capped(p, limits.max_json_bytes * 16)) {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => {
            print_undecided(args.format, &e.to_string(), "");
            return exit::UNDECIDED;
        }
        None => return exit::UNDECIDED,
    };
    let did = uri.authority.as_str();
    let expect = Expectation { did, rkey: uri.rkey.as_deref(), digest: Some(&args.digest), repository: args.repository.as_deref() };
    let verdict = verdict_from_files(args, expect, &car, &key_bytes, now);
    print_verdict(&verdict, args.format);
    match verdict.reason {
        atproto_sig_core::Reason::Verified => exit::ADMITTED,
        reason if crate::engine::is_undecided(reason) => exit::UNDECIDED,
        _ => exit::REJECTED,
    }
}

/// The verdict on `car` under the key of the DID document or audit log the files give.
fn verdict_from_files(args: &VerifyArgs, expect: Expectation<'_>, car: &[u8], key_bytes: &[u8], now: i64) -> Verdict {
    let limits = Limits::default();
    let did = expect.did;
    if args.audit_log.is_some() {
        match verify_audit_log(did, key_bytes, &limits).map(|state| state.signing_key()) {
            Ok(Ok(key)) => verify(&ProofInput {
                car,
                key: KeySource::Key(&key),
                expect,
                now_micros: now,
                max_clock_skew_micros: DEFAULT_CLOCK_SKEW_MICROS,
                limits: &limits,
                known_blocks: None,
            }),
            Ok(Err(e)) => Failure::NoSigningKey { did: did.to_owned(), problem: e.to_string() }.verdict(did),
            Err(e) => Failure::AuditLogInvalid { did: did.to_owned(), problem: e.to_string() }.verdict(did),
        }
    } else {
        match DidDocument::parse(key_bytes, did, &limits) {
            Ok(doc) => verify(&ProofInput {
                car,
                key: KeySource::Document(&doc),
                expect,
                now_micros: now,
                max_clock_skew_micros: DEFAULT_CLOCK_SKEW_MICROS,
                limits: &limits,
                known_blocks: None,
            }),
            Err(e) => Failure::DocumentInvalid(format!("DID document: {e}")).verdict(did),
        }
    }
}

/// The JSON form of a verdict (also used by `verify` and the audit log later).
pub fn verdict_json(verdict: &Verdict) -> serde_json::Value {
    let facts = &verdict.facts;
    json!({
        "admitted": verdict.is_verified(),
        "reason": verdict.reason.code(),
        "message": verdict.message,
        "did": facts.did,
        "handle": facts.handle,
        "commit": facts.commit.map(|c| c.to_string()),
        "rev": facts.rev,
        "uri": facts.uri,
        "recordCid": facts.record_cid.map(|c| c.to_string()),
        "record": facts.record.as_ref().map(|r| json!({
            "repository": r.repository, "digest": r.digest, "mediaType": r.media_type, "createdAt": r.created_at,
        })),
    })
}

fn print_verdict(verdict: &Verdict, format: Format) {
    match format {
        Format::Json => print_json(&verdict_json(verdict)),
        Format::Text => {
            let facts = &verdict.facts;
            if verdict.is_verified() {
                println!("verified: {}", verdict.message);
            } else {
                println!("rejected ({}): {}", verdict.reason.code(), verdict.message);
            }
            println!("  did:       {}", facts.did);
            if let Some(handle) = &facts.handle {
                println!("  handle:    {handle} (claimed by the DID document)");
            }
            if let Some(commit) = &facts.commit {
                println!("  commit:    {commit} rev {}", facts.rev.as_deref().unwrap_or("?"));
            }
            if !facts.uri.is_empty() {
                println!("  record:    {}", facts.uri);
            }
            if let Some(record) = &facts.record {
                println!("  image:     {} {} (created {})", record.repository, record.digest, record.created_at);
            }
        }
    }
}

fn run_inspect(args: &InspectArgs) -> u8 {
    let limits = Limits::repository();
    let bytes = match read_capped(&args.car, limits.max_car_bytes) {
        Ok(bytes) => bytes,
        Err(e) => {
            print_undecided(args.format, &e.to_string(), "");
            return exit::UNDECIDED;
        }
    };
    let mut report = serde_json::Map::new();
    let mut text = Vec::new();
    let code = inspect(&bytes, args.path.as_deref(), &limits, &mut report, &mut text);
    match args.format {
        Format::Json => print_json(&serde_json::Value::Object(report)),
        Format::Text => text.iter().for_each(|line| println!("{line}")),
    }
    code
}

/// Fills `report` (JSON) and `text` (lines) with what the CAR holds; returns the exit code.
fn inspect(bytes: &[u8], path: Option<&str>, limits: &Limits, report: &mut serde_json::Map<String, serde_json::Value>, text: &mut Vec<String>) -> u8 {
    let car = match Car::parse(bytes, limits) {
        Ok(car) => car,
        Err(e) => {
            report.insert("valid".into(), json!(false));
            report.insert("error".into(), json!(e.to_string()));
            text.push(format!("invalid CAR: {e}"));
            return exit::REJECTED;
        }
    };
    report.insert("root".into(), json!(car.root.to_string()));
    report.insert("roots".into(), json!(car.root_count));
    report.insert("blocks".into(), json!(car.len()));
    report.insert("bytes".into(), json!(bytes.len()));
    text.push(format!("CAR v1: {} bytes, {} blocks (all hash-checked), root {}", bytes.len(), car.len(), car.root));
    let commit = match Commit::of_car(&car, limits) {
        Ok(commit) => commit,
        Err(atproto_sig_core::commit::CommitError::MissingRoot(_)) => {
            report.insert("error".into(), json!("the root block (commit) is missing"));
            text.push("commit: missing (the root block is not in the CAR)".into());
            return exit::REJECTED;
        }
        Err(e) => {
            report.insert("error".into(), json!(e.to_string()));
            text.push(format!("commit: not decodable: {e}"));
            return exit::REJECTED;
        }
    };
    let signature_status = match (commit.version, commit.sig.len()) {
        (3, 64) => "checkable: 64-byte r||s; verify with the DID's #atproto key (proof verify)".to_owned(),
        (3, n) => format!("not checkable: {n} bytes, expected 64 (r||s)"),
        (v, _) => format!("not checkable: version {v} commits are not accepted as proofs (only v3)"),
    };
    report.insert(
        "commit".into(),
        json!({
            "did": commit.did, "version": commit.version, "rev": commit.rev, "data": commit.data.to_string(),
            "prev": commit.prev.map(|c| c.to_string()), "sigBytes": commit.sig.len(), "signature": signature_status,
        }),
    );
    text.push(format!("commit: {} version {}", commit.did, commit.version));
    text.push(format!("  rev:       {}", commit.rev.as_deref().unwrap_or("(none)")));
    text.push(format!("  data:      {}", commit.data));
    text.push(format!("  prev:      {}", commit.prev.map_or("null".to_owned(), |c| c.to_string())));
    text.push(format!("  signature: {signature_status}"));
    let Some(path) = path else { return exit::ADMITTED };
    inspect_path(&car, commit.data, path, limits, report, text)
}

/// The MST walk from the commit's `data` to `path`, and the record there if present.
fn inspect_path(
    car: &Car<'_>,
    data: atproto_sig_core::cid::Cid,
    path: &str,
    limits: &Limits,
    report: &mut serde_json::Map<String, serde_json::Value>,
    text: &mut Vec<String>,
) -> u8 {
    let walk = match mst::walk(|c| car.block(c), data, path.as_bytes(), limits) {
        Ok(walk) => walk,
        Err(e) => {
            report.insert("mst".into(), json!({"path": path, "error": e.to_string()}));
            text.push(format!("MST walk to {path}: invalid: {e}"));
            return exit::REJECTED;
        }
    };
    let nodes: Vec<serde_json::Value> = walk.path.iter().map(|(cid, layer)| json!({"cid": cid.to_string(), "layer": layer})).collect();
    text.push(format!("MST walk to {path}:"));
    for (cid, layer) in &walk.path {
        text.push(format!("  layer {layer}: {cid}"));
    }
    match walk.lookup {
        Lookup::Absent => {
            report.insert("mst".into(), json!({"path": path, "nodes": nodes, "present": false}));
            text.push("  result:    absent (the signed tree proves there is no such record)".into());
        }
        Lookup::Present(cid) => {
            let record = car.block(&cid).map(|b| cbor::decode(b, limits.max_cbor_depth));
            let (record_json, line) = match record {
                None => (json!(null), "record block not included".to_owned()),
                Some(Err(e)) => (json!({"error": e.to_string()}), format!("record not decodable: {e}")),
                Some(Ok(value)) => {
                    let manifest =
                        ManifestRecord::from_value(&value).map_or_else(|e| e.to_string(), |m| format!("io.atcr.manifest {} {}", m.repository, m.digest));
                    (cbor::to_json(&value), manifest)
                }
            };
            report.insert("mst".into(), json!({"path": path, "nodes": nodes, "present": true, "recordCid": cid.to_string(), "record": record_json}));
            text.push(format!("  result:    present, record {cid}"));
            text.push(format!("  record:    {line}"));
        }
    }
    exit::ADMITTED
}
