//! Real components for integration tests, all on loopback and started by the tests themselves:
//! the reference PDS + PLC directory (npm, tests/pds), Debian's docker-registry, small fake
//! servers (handle resolver, a PLC serving Multikey documents, a server that never answers),
//! and the verifier exec'd exactly as containerd does it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Kills the child when dropped.
pub struct Guard(pub Option<Child>);

/// The text of `log` once it contains `needle` (or after `within`, for the caller's assertion).
pub fn wait_for_log(log: &Path, needle: &str, within: Duration) -> String {
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) || started.elapsed() > within {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Guard {
    /// Stops the child and, when it leads a process group of its own (see [`spawn_tied`]),
    /// everything in that group: no wrapper leaves its program behind.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if let Some(pid) = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw) {
                // Not a group leader: ESRCH, nothing else is touched.
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `program` so that it can never outlive the test process, even from a `static` that
/// is never dropped or a test that panics: a shell holds the read end of a pipe whose write end
/// only this process has, and kills the program when it reads EOF (when this process exits,
/// however it exits). The shell leads its own process group, which [`Guard::stop`] kills whole.
pub fn spawn_tied(program: &Path, args: &[String], envs: &[(&str, String)], log: &Path) -> Guard {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    // A background job of a non-interactive shell reads /dev/null, not the pipe.
    let script = r#""$@" & pid=$!; cat >/dev/null; kill -TERM "$pid" 2>/dev/null; sleep 2; kill -KILL "$pid" 2>/dev/null"#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    Guard(Some(child))
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).timeout_global(Some(Duration::from_secs(30))).build().into()
}

/// A request from the test side; returns (status, headers, body).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(body.unwrap_or_default()).unwrap();
    let response = agent().run(request).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned())).collect();
    let body = response.into_body().with_config().limit(64 << 20).read_to_vec().unwrap();
    (status, headers, body)
}

fn xrpc(base: &str, method: &str, nsid: &str, token: Option<&str>, body: Option<Json>) -> Json {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let (status, _, bytes) = http(method, &format!("{base}/xrpc/{nsid}"), &headers, body.map(|b| serde_json::to_vec(&b).unwrap()));
    assert!((200..300).contains(&status), "{nsid}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).unwrap_or(Json::Null)
}

/// The reference PDS and PLC directory, one node process.
pub struct Pds {
    pub pds: String,
    pub plc: String,
    /// The test hooks of tests/pds/servers.cjs (`POST /rotate-key?did=`).
    pub admin: String,
    guard: Guard,
    _dir: tempfile::TempDir,
}

pub struct Account {
    pub did: String,
    pub handle: String,
    pub token: String,
}

fn install_pds() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let script = repo_root().join("tests/pds/install.sh");
        let status = Command::new("bash").arg(&script).status().expect("bash is required");
        assert!(status.success(), "tests/pds/install.sh failed: the reference PDS needs node and npm (apt-get install nodejs npm) and the npm registry");
    });
}

impl Pds {
    pub fn start() -> Pds {
        install_pds();
        assert!(Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()), "node is missing: apt-get install nodejs");
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("node")
            .arg(repo_root().join("tests/pds/servers.cjs"))
            .arg(dir.path().join("data"))
            .env("STOP_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(ready) = line.strip_prefix("READY ") {
                    let _ = tx.send(ready.trim().to_owned());
                }
                line.clear();
            }
        });
        let guard = Guard(Some(child));
        let ready = rx.recv_timeout(Duration::from_secs(120)).expect("the PDS did not start within 120 s");
        let urls: Json = serde_json::from_str(&ready).unwrap();
        Pds {
            pds: urls["pds"].as_str().unwrap().to_owned(),
            plc: urls["plc"].as_str().unwrap().to_owned(),
            admin: urls["admin"].as_str().unwrap_or_default().to_owned(),
            guard,
            _dir: dir,
        }
    }

    pub fn stop(&mut self) {
        self.guard.stop();
    }

    pub fn create_account(&self, name: &str) -> Account {
        let handle = format!("{name}.test");
        let out = xrpc(
            &self.pds,
            "POST",
            "com.atproto.server.createAccount",
            None,
            Some(json!({"handle": handle, "email": format!("{name}@example.com"), "password": "password-for-tests"})),
        );
        Account { did: out["did"].as_str().unwrap().to_owned(), handle, token: out["accessJwt"].as_str().unwrap().to_owned() }
    }

    /// Writes an io.atcr.manifest record keyed by the digest's hex; returns the rkey.
    pub fn put_manifest(&self, account: &Account, digest: &str, repository: &str, media_type: &str) -> String {
        let rkey = digest.strip_prefix("sha256:").unwrap().to_owned();
        let record = json!({"$type": "io.atcr.manifest", "repository": repository, "digest": digest, "mediaType": media_type, "schemaVersion": 2, "createdAt": "2026-11-01T00:00:00.000Z"});
        xrpc(
            &self.pds,
            "POST",
            "com.atproto.repo.createRecord",
            Some(&account.token),
            Some(json!({"repo": account.did, "collection": "io.atcr.manifest", "rkey": rkey, "validate": false, "record": record})),
        );
        rkey
    }

    /// Writes a manifest record under a TID rkey (as createRecord does by default).
    pub fn put_manifest_tid(&self, account: &Account, digest: &str, repository: &str) -> String {
        let record = json!({"$type": "io.atcr.manifest", "repository": repository, "digest": digest, "mediaType": "application/vnd.oci.image.manifest.v1+json", "schemaVersion": 2, "createdAt": "2026-11-01T00:00:00.000Z"});
        let out = xrpc(
            &self.pds,
            "POST",
            "com.atproto.repo.createRecord",
            Some(&account.token),
            Some(json!({"repo": account.did, "collection": "io.atcr.manifest", "validate": false, "record": record})),
        );
        out["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned()
    }

    pub fn delete_record(&self, account: &Account, rkey: &str) {
        xrpc(
            &self.pds,
            "POST",
            "com.atproto.repo.deleteRecord",
            Some(&account.token),
            Some(json!({"repo": account.did, "collection": "io.atcr.manifest", "rkey": rkey})),
        );
    }

    /// Gives the account a new signing key (PLC updated, an empty commit, #identity and #sync);
    /// returns the new key (did:key).
    pub fn rotate_key(&self, account: &Account) -> String {
        let (status, _, body) = http("POST", &format!("{}/rotate-key?did={}", self.admin, account.did), &[], Some(Vec::new()));
        assert_eq!(status, 200, "rotate-key: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Json>(&body).unwrap()["key"].as_str().unwrap().to_owned()
    }

    /// The PLC's state of a DID (`GET /<did>/data`).
    pub fn plc_data(&self, did: &str) -> Json {
        let (status, _, body) = http("GET", &format!("{}/{did}/data", self.plc), &[], None);
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }
}

/// Debian's docker-registry (distribution 2.8) on loopback.
pub struct Registry {
    pub host: String,
    /// Its config file and binary, to start a second instance on the same storage elsewhere.
    pub config: PathBuf,
    pub binary: String,
    guard: Guard,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Registry {
    pub fn start() -> Registry {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("docker-registry is missing: apt-get install docker-registry (scripts/test installs it)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.path().join("data").display())).unwrap();
        // Wrapped so that the registry stops when the test process (holding stdin) goes away.
        let script = format!("{binary} serve {} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid", config.display());
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start docker-registry");
        let guard = Guard(Some(child));
        let host = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while TcpStream::connect(&host).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { host, config, binary: binary.to_owned(), guard, _dir: dir }
    }

    pub fn push_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let (status, headers, _) = http("POST", &format!("http://{}/v2/{repository}/blobs/uploads/", self.host), &[], None);
        assert_eq!(status, 202, "blob upload start");
        let location = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("location")).unwrap().1.clone();
        let url = if location.starts_with("http") { location } else { format!("http://{}{location}", self.host) };
        let separator = if url.contains('?') { '&' } else { '?' };
        let (status, _, body) = http("PUT", &format!("{url}{separator}digest={digest}"), &[("content-type", "application/octet-stream")], Some(bytes.to_vec()));
        assert_eq!(status, 201, "blob upload: {}", String::from_utf8_lossy(&body));
        digest
    }

    pub fn push_manifest(&self, repository: &str, reference: &str, media_type: &str, manifest: &[u8]) -> String {
        let (status, _, body) =
            http("PUT", &format!("http://{}/v2/{repository}/manifests/{reference}", self.host), &[("content-type", media_type)], Some(manifest.to_vec()));
        assert_eq!(status, 201, "manifest push: {}", String::from_utf8_lossy(&body));
        sha256(manifest)
    }

    /// Pushes a small single-platform image; returns its manifest digest.
    pub fn push_image(&self, repository: &str, tag: &str, seed: &str) -> String {
        self.push_image_for(repository, tag, seed, "amd64")
    }

    /// Pushes a small image for `linux/<architecture>` whose layer is a real tar (containerd
    /// unpacks it); returns its manifest digest.
    pub fn push_image_for(&self, repository: &str, tag: &str, seed: &str, architecture: &str) -> String {
        let layer = tar_with_file("hello.txt", format!("layer for {seed}\n").as_bytes());
        let config = json!({"architecture": architecture, "os": "linux", "config": {"Labels": {"seed": seed}}, "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}});
        self.push_one_layer_image(repository, tag, &config, &layer)
    }

    /// Pushes an OCI image of `config` and one tar `layer`; returns its manifest digest.
    fn push_one_layer_image(&self, repository: &str, tag: &str, config: &serde_json::Value, layer: &[u8]) -> String {
        let config = serde_json::to_vec(config).unwrap();
        let config_digest = self.push_blob(repository, &config);
        let layer_digest = self.push_blob(repository, layer);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap();
        self.push_manifest(repository, tag, "application/vnd.oci.image.manifest.v1+json", &manifest)
    }

    /// Pushes an image that runs: Debian's static busybox as `/busybox`, its entrypoint
    /// `/busybox sleep 3600` (busybox-static: scripts/test installs it); returns its digest.
    pub fn push_runnable_image(&self, repository: &str, tag: &str) -> String {
        let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox is missing: apt-get install busybox-static (scripts/test installs it)");
        let layer = tar_with_mode("busybox", &busybox, 0o755);
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/busybox", "sleep", "3600"], "Labels": {"seed": format!("{repository}:{tag}")}},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
        });
        self.push_one_layer_image(repository, tag, &config, &layer)
    }

    /// Attaches an ATCR-style signature artifact to `subject` the way clients must on a registry
    /// without the referrers API: the artifact manifest, plus an index under `sha256-<hex>`.
    pub fn push_signature_artifact(&self, repository: &str, subject: &str, did: &str, rkey: &str) -> String {
        let meta = serde_json::to_vec(&json!({
            "$type": "io.atcr.atproto.signature", "version": "1.0",
            "subject": {"digest": subject, "mediaType": "application/vnd.oci.image.manifest.v1+json"},
            "atproto": {"did": did, "recordUri": format!("at://{did}/io.atcr.manifest/{rkey}")},
        }))
        .unwrap();
        let meta_digest = self.push_blob(repository, &meta);
        let (_, _, subject_body) = http(
            "GET",
            &format!("http://{}/v2/{repository}/manifests/{subject}", self.host),
            &[("accept", "application/vnd.oci.image.manifest.v1+json")],
            None,
        );
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.atproto.signature.v1+json",
            "config": {"mediaType": "application/vnd.atproto.signature.v1+json", "digest": meta_digest, "size": meta.len()},
            "layers": [],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": subject_body.len()},
        }))
        .unwrap();
        let artifact = self.push_manifest(repository, &sha256(&manifest), "application/vnd.oci.image.manifest.v1+json", &manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": artifact, "size": manifest.len(), "artifactType": "application/vnd.atproto.signature.v1+json"}],
        })).unwrap();
        self.push_manifest(repository, &subject.replace(':', "-"), "application/vnd.oci.image.index.v1+json", &index);
        artifact
    }

    /// Pushes a two-platform index; returns the index digest.
    pub fn push_index(&self, repository: &str, tag: &str, seed: &str) -> String {
        let amd64 = self.push_image_for(repository, &format!("{tag}-amd64"), &format!("{seed}-amd64"), "amd64");
        let arm64 = self.push_image_for(repository, &format!("{tag}-arm64"), &format!("{seed}-arm64"), "arm64");
        let size = |d: &str| {
            let (_, _, body) =
                http("GET", &format!("http://{}/v2/{repository}/manifests/{d}", self.host), &[("accept", "application/vnd.oci.image.manifest.v1+json")], None);
            body.len()
        };
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64, "size": size(&amd64), "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm64, "size": size(&arm64), "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        })).unwrap();
        self.push_manifest(repository, tag, "application/vnd.oci.image.index.v1+json", &index)
    }
}

/// A minimal HTTP/1.1 server on loopback for fakes; `handler(request)` -> response.
pub struct FakeServer {
    pub url: String,
    pub hits: Arc<Mutex<Vec<String>>>,
}

/// What a fake server saw.
pub struct FakeRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Status, extra headers, content type, body.
pub struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl FakeResponse {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> FakeResponse {
        FakeResponse { status, headers: Vec::new(), content_type: content_type.into(), body: body.into() }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> FakeResponse {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&FakeRequest) -> FakeResponse + Send + Sync;

impl FakeServer {
    pub fn start(handler: Box<Handler>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::from(handler);
        let recorded = Arc::clone(&hits);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        return;
                    }
                    let mut line = String::new();
                    let mut headers = Vec::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        if let Some((k, v)) = line.trim_end().split_once(':') {
                            headers.push((k.trim().to_owned(), v.trim().to_owned()));
                        }
                        line.clear();
                    }
                    let length = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                        .unwrap_or(0)
                        .min(1 << 20);
                    let mut body = vec![0u8; length];
                    let _ = std::io::Read::read_exact(&mut reader, &mut body);
                    let mut parts = request_line.split_whitespace();
                    let request = FakeRequest { method: parts.next().unwrap_or("").to_owned(), path: parts.next().unwrap_or("").to_owned(), headers, body };
                    recorded.lock().unwrap().push(request.path.clone());
                    let response = handler(&request);
                    let extra: String = response.headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
                        response.status,
                        response.content_type,
                        response.body.len()
                    );
                    let _ = stream.write_all(&response.body);
                });
            }
        });
        FakeServer { url, hits }
    }

    /// A server that accepts connections and never answers.
    pub fn silent() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        url
    }
}

/// The PDS + PLC and registry shared by the tests of one test binary. Both stop when the test
/// process exits (they watch their stdin).
/// A ustar archive holding one regular file (what an image layer is, uncompressed).
pub fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    tar_with_mode(name, content, 0o644)
}

/// A one-file tar whose file has `mode` (0o755: a program containerd can run).
pub fn tar_with_mode(name: &str, content: &[u8], mode: usize) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: usize| {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], mode);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], content.len());
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: usize = header.iter().map(|&b| usize::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub struct Env {
    pub pds: Pds,
    pub registry: Registry,
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env { pds: Pds::start(), registry: Registry::start() })
}

/// What containerd sees from one verifier run.
#[derive(Debug)]
pub struct Pull {
    pub code: Option<i32>,
    pub stdout: String,
    /// What containerd would put in its debug log.
    pub stderr: String,
    pub elapsed: Duration,
}

impl Pull {
    pub fn reason(&self) -> &str {
        self.stdout.split(':').next().unwrap_or_default()
    }
}

/// A verifier installation: config.toml, policy, cache and audit log in a temp dir.
pub struct Verifier {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Verifier {
    pub fn new(config_lines: &str, policy: &str) -> Verifier {
        let dir = tempfile::tempdir().unwrap();
        Verifier::in_dir(dir, config_lines, policy)
    }

    pub fn in_dir(dir: tempfile::TempDir, config_lines: &str, policy: &str) -> Verifier {
        let policy_path = dir.path().join("trust-policy.yaml");
        std::fs::write(&policy_path, policy).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "policy = {:?}\ncache_dir = {:?}\naudit_log = {:?}\n{config_lines}\n",
                policy_path,
                dir.path().join("cache"),
                dir.path().join("audit.jsonl")
            ),
        )
        .unwrap();
        Verifier { dir, config }
    }

    /// Execs the verifier exactly as containerd 2.x does: single-dash argv, the descriptor on a
    /// stdin pipe, stdout read up to 32 KiB, killed after 10 s.
    pub fn pull(&self, name: &str, digest: &str) -> Pull {
        self.pull_with_stdin(name, digest, &format!("{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"{digest}\",\"size\":123}}\n"))
    }

    pub fn pull_with_stdin(&self, name: &str, digest: &str, stdin: &str) -> Pull {
        self.run_pull(false, name, digest, stdin)
    }

    /// The same, inside a new network namespace with no usable interface (`unshare -n`): any
    /// network call fails, so an admitted pull proves none was needed.
    pub fn pull_without_network(&self, name: &str, digest: &str) -> Pull {
        let descriptor = format!("{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"{digest}\",\"size\":123}}\n");
        self.run_pull(true, name, digest, &descriptor)
    }

    /// Inside a new network namespace whose only server is a registry on the same storage and
    /// address as `registry` (a mirror): the one remote an offline node may reach.
    pub fn pull_with_only_the_registry(&self, registry: &Registry, name: &str, digest: &str) -> Pull {
        let descriptor = format!("{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"{digest}\",\"size\":123}}\n");
        let port = registry.host.rsplit(':').next().unwrap().to_owned();
        let script = format!(
            "ip link set lo up; {} serve {} >/dev/null 2>&1 & r=$!; for i in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.025; done; \"$@\"; c=$?; kill $r; wait $r 2>/dev/null; exit $c",
            registry.binary,
            registry.config.display()
        );
        self.run_command(&["/usr/bin/unshare", "--net", "bash", "-c", &script, "_", env!("CARGO_BIN_EXE_atproto-verifier")], name, digest, &descriptor)
    }

    /// An operator command (`cache refresh`) inside a network namespace whose only server is a
    /// registry on `registry`'s storage and address, as [`Verifier::pull_with_only_the_registry`].
    pub fn command_with_only_the_registry(&self, registry: &Registry, args: &[&str]) -> std::process::Output {
        let port = registry.host.rsplit(':').next().unwrap().to_owned();
        let script = format!(
            "ip link set lo up; {} serve {} >/dev/null 2>&1 & r=$!; for i in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.025; done; \"$@\"; c=$?; kill $r; wait $r 2>/dev/null; exit $c",
            registry.binary,
            registry.config.display()
        );
        Command::new("/usr/bin/unshare")
            .args(["--net", "bash", "-c", &script, "_", env!("CARGO_BIN_EXE_atproto-verifier")])
            .args(args)
            .env("ATPROTO_VERIFIER_CONFIG", &self.config)
            .output()
            .expect("cannot start the verifier (unshare --net needs root)")
    }

    fn run_pull(&self, isolated: bool, name: &str, digest: &str, stdin: &str) -> Pull {
        let binary = env!("CARGO_BIN_EXE_atproto-verifier");
        if isolated {
            let unshare =
                ["/usr/bin/unshare", "/bin/unshare"].into_iter().find(|p| Path::new(p).exists()).expect("unshare is missing: apt-get install util-linux");
            return self.run_command(&[unshare, "--net", binary], name, digest, stdin);
        }
        self.run_command(&[binary], name, digest, stdin)
    }

    fn run_command(&self, program: &[&str], name: &str, digest: &str, stdin: &str) -> Pull {
        let started = Instant::now();
        let mut command = {
            let mut c = Command::new(program[0]);
            c.args(&program[1..]);
            c
        };
        let mut child = command
            .args(["-name", name, "-digest", digest, "-stdin-media-type", "application/vnd.oci.descriptor.v1+json"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("ATPROTO_VERIFIER_CONFIG", &self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the verifier (unshare --net needs root)");
        let mut stdin_pipe = child.stdin.take().unwrap();
        let payload = stdin.to_owned();
        std::thread::spawn(move || {
            let _ = stdin_pipe.write_all(payload.as_bytes());
        });
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stdout).take(32 << 10).read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        let mut stderr = child.stderr.take().unwrap();
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(32 << 10).read_to_end(&mut buf);
            let _ = etx.send(String::from_utf8_lossy(&buf).into_owned());
        });
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = String::from_utf8_lossy(&rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()).into_owned();
        let stderr = erx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
        Pull { code, stdout, stderr, elapsed: started.elapsed() }
    }

    pub fn audit(&self) -> Vec<Json> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Runs an operator command of the verifier with this installation's config.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_atproto-verifier")).args(args).env("ATPROTO_VERIFIER_CONFIG", &self.config).output().unwrap()
    }

    /// Every cache entry parses (no torn or corrupt files).
    pub fn cache_is_intact(&self) -> usize {
        let mut count = 0;
        for kind in ["did", "locator", "proof"] {
            let dir = self.dir.path().join("cache/v1").join(kind);
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let bytes = std::fs::read(&path).unwrap();
                    serde_json::from_slice::<Json>(&bytes).unwrap_or_else(|e| panic!("corrupt cache entry {}: {e}", path.display()));
                    count += 1;
                }
            }
        }
        count
    }
}

/// A policy trusting `dids` (name, did) for everything under `scope`, plus optional extra rules.
pub fn policy(trusted: &[(&str, &str, Option<&str>)], rules: &str, default: &str) -> String {
    let mut out = String::from("version: 1.0\ntrustedDIDs:\n");
    for (name, did, expires) in trusted {
        out.push_str(&format!(
            "  {did}:\n    name: {name:?}\n    validFrom: \"2020-01-01T00:00:00Z\"\n    expiresAt: {}\n",
            expires.map_or("null".to_owned(), |e| format!("{e:?}"))
        ));
    }
    out.push_str("policies:\n");
    out.push_str(rules);
    out.push_str(&format!("default: {default}\n"));
    out
}

/// A connected machine's config lines for the loopback world: its PLC directory, handle
/// resolver, and the registry as an ATProto registry.
pub fn online_config(env: &Env) -> String {
    format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\n", env.pds.plc, env.pds.pds, env.registry.host)
}

/// A policy trusting `account` for every image of the loopback registry (signature required).
pub fn trusting(env: &Env, account: &Account) -> String {
    policy(
        &[(account.handle.as_str(), account.did.as_str(), None)],
        &format!("  - name: signed\n    scope: \"{}/**\"\n    require: {{ signature: true }}\n", env.registry.host),
        "{ action: enforce, require: { signature: true } }",
    )
}
