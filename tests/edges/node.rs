//! An air-gapped node in a temp dir: its config, trust policy and cache, and the verifier run
//! as containerd runs it. Bundles are made in memory from the test kit (no servers).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, TestRepo};
use base64::Engine;
use serde_json::{Value as Json, json};

/// Registry host of the images: loopback port 1, where nothing listens, so asking it for
/// attached proofs fails at once and no test depends on the network.
pub const HOST: &str = "127.0.0.1:1";

pub fn now_micros() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

pub const DAY: i64 = 86_400_000_000;

pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run { code: out.status.code(), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
    }

    /// The reason code of a containerd-style answer (`code: message`).
    pub fn reason(&self) -> &str {
        self.stdout.split(':').next().unwrap_or_default().trim()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\nstdout: {}\nstderr: {}", self.code, self.stdout, self.stderr)
    }
}

impl Node {
    /// An offline node trusting `did` for every image on [`HOST`]; `extra` is more config.toml.
    pub fn offline(did: &str, extra: &str) -> Node {
        Node::offline_with_action(did, extra, "enforce")
    }

    /// The same, with the rule's action (`enforce` or `audit`).
    pub fn offline_with_action(did: &str, extra: &str, action: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("trust-policy.yaml");
        std::fs::write(
            &policy,
            format!("version: \"1.0\"\ntrustedDIDs:\n  {did}: {{ name: signer }}\npolicies:\n  - name: ours\n    scope: \"{HOST}/**\"\n    require: {{ signature: true }}\n    action: {action}\n"),
        )
        .unwrap();
        let config = dir.path().join("config.toml");
        let cache = dir.path().join("cache");
        std::fs::write(&config, format!("offline = true\npolicy = {policy:?}\ncache_dir = {cache:?}\nconnect_timeout = \"500ms\"\n{extra}")).unwrap();
        Node { dir, config }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_atproto-verifier")).args(args).env("ATPROTO_VERIFIER_CONFIG", &self.config).output().unwrap();
        Run::from(out)
    }

    pub fn import(&self, bundle: &Json) -> Run {
        let path = self.dir.path().join(format!("b{}.bundle", now_micros()));
        std::fs::write(&path, serde_json::to_vec(bundle).unwrap()).unwrap();
        self.run(&["bundle", "import", path.to_str().unwrap()])
    }

    /// A pull decision, exactly as containerd asks for it.
    pub fn pull(&self, repository: &str, digest: &str) -> Run {
        self.pull_through(&[], repository, digest)
    }

    /// The same, the verifier started through `wrapper` (e.g. `setpriv --reuid …`).
    pub fn pull_through(&self, wrapper: &[&str], repository: &str, digest: &str) -> Run {
        let binary = env!("CARGO_BIN_EXE_atproto-verifier");
        let (program, args) = match wrapper.split_first() {
            Some((program, rest)) => (*program, [rest, &[binary]].concat()),
            None => (binary, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(args)
            .args(["-name", &format!("{HOST}/{repository}:v1"), "-digest", digest, "-stdin-media-type", "application/vnd.oci.descriptor.v1+json"])
            .env("ATPROTO_VERIFIER_CONFIG", &self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let descriptor = format!("{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"{digest}\",\"size\":1}}\n");
        child.stdin.take().unwrap().write_all(descriptor.as_bytes()).unwrap();
        Run::from(child.wait_with_output().unwrap())
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A bundle entry for a DID document checked against its audit log.
pub fn did_entry(identity: &Identity, document: &str, audit_log: &str, fetched_at: i64) -> Json {
    json!({"did": identity.did, "fetchedAt": fetched_at, "source": "test", "document": document, "auditLog": audit_log})
}

/// A bundle with the identity's DID document, one record's proof and (if given) its locator.
pub fn record_bundle(repo: &TestRepo, rkey: &str, digest: Option<&str>, fetched_at: i64) -> Json {
    let identity = &repo.identity;
    let locators: Vec<Json> = digest.map(|d| json!({"did": identity.did, "digest": d, "rkey": rkey, "fetchedAt": fetched_at})).into_iter().collect();
    json!({
        "format": "atproto-verifier-bundle",
        "version": 2,
        "createdAt": "2026-01-01T00:00:00Z",
        "dids": [did_entry(identity, &identity.did_document_multikey(), &identity.audit_log(), fetched_at)],
        "locators": locators,
        "proofs": [{"did": identity.did, "collection": MANIFEST_COLLECTION, "rkey": rkey, "fetchedAt": fetched_at, "source": "test", "car": b64(&repo.proof(MANIFEST_COLLECTION, rkey))}],
        "collections": [],
    })
}

/// A bundle as `bundle create --did` makes it: the DID document and the signed state of the
/// whole io.atcr.manifest collection (no per-record proofs).
pub fn did_bundle(repo: &TestRepo, fetched_at: i64) -> Json {
    let identity = &repo.identity;
    let (car, _) = atproto_sig_core::collection::extract(&repo.export(), MANIFEST_COLLECTION, &atproto_sig_core::Limits::repository()).unwrap();
    json!({
        "format": "atproto-verifier-bundle",
        "version": 2,
        "createdAt": "2026-01-01T00:00:00Z",
        "dids": [did_entry(identity, &identity.did_document_multikey(), &identity.audit_log(), fetched_at)],
        "locators": [],
        "proofs": [],
        "collections": [{"did": identity.did, "collection": MANIFEST_COLLECTION, "fetchedAt": fetched_at, "source": "test", "car": b64(&car)}],
    })
}
