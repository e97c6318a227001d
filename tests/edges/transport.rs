//! Class: secrets and transport. Credentials go only to the host they were configured for
//! (never to a mirror that did not get its own); plain HTTP only for real loopback addresses
//! (parsed as IP) or where hosts.toml says so.

use std::sync::{Arc, Mutex};

use base64::Engine;

use crate::harness::{FakeResponse, FakeServer};

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

/// A node whose config points at `hosts_dir` and a docker config with credentials for `host`.
fn node(hosts_dir: &std::path::Path, host: &str, secret: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("trust-policy.yaml");
    std::fs::write(&policy, "version: \"1.0\"\ndefault: { action: enforce, require: { signature: false } }\n").unwrap();
    let docker = dir.path().join("docker.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}"));
    std::fs::write(&docker, format!("{{\"auths\": {{\"{host}\": {{\"auth\": \"{auth}\"}}}}}}")).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "policy = {policy:?}\ncache_dir = {:?}\ncontainerd_hosts_dir = {hosts_dir:?}\ndocker_config = {docker:?}\nconnect_timeout = \"500ms\"\n",
            dir.path().join("cache")
        ),
    )
    .unwrap();
    (dir, config)
}

fn verify(config: &std::path::Path, image: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier")).args(["verify", image]).env("ATPROTO_VERIFIER_CONFIG", config).output().unwrap()
}

/// Records the Authorization header of every request (or "-" when none).
fn recorder() -> (Arc<Mutex<Vec<String>>>, impl Fn(&crate::harness::FakeRequest) -> String) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    (seen, move |r: &crate::harness::FakeRequest| {
        let auth = r.header("authorization").unwrap_or("-").to_owned();
        log.lock().unwrap().push(auth.clone());
        auth
    })
}

#[test]
fn a_mirror_never_receives_the_upstream_registrys_credentials() {
    let secret = "upstream-secret-canary";
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}")));
    let (upstream_seen, record) = recorder();
    let upstream = FakeServer::start(Box::new(move |r| {
        let auth = record(r);
        if auth == expected {
            FakeResponse::new(200, "application/vnd.oci.image.manifest.v1+json", MANIFEST)
        } else {
            FakeResponse::new(401, "application/json", "{}").with_header("www-authenticate", "Basic realm=\"upstream\"")
        }
    }));
    // The mirror asks for credentials too; none were configured for it.
    let (mirror_seen, record) = recorder();
    let mirror = FakeServer::start(Box::new(move |r| {
        record(r);
        FakeResponse::new(401, "application/json", "{}").with_header("www-authenticate", "Basic realm=\"mirror\"")
    }));
    let host = upstream.url.trim_start_matches("http://").to_owned();
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(hosts.path().join(&host)).unwrap();
    std::fs::write(
        hosts.path().join(&host).join("hosts.toml"),
        format!("server = \"{}\"\n[host.\"{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n", upstream.url, mirror.url),
    )
    .unwrap();
    let (_dir, config) = node(hosts.path(), &host, secret);
    let out = verify(&config, &format!("{host}/app:v1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let mirror_seen = mirror_seen.lock().unwrap().clone();
    assert!(!mirror_seen.is_empty(), "the mirror was asked first");
    assert!(mirror_seen.iter().all(|a| a == "-"), "the mirror got credentials: {mirror_seen:?}");
    assert!(upstream_seen.lock().unwrap().iter().any(|a| a.starts_with("Basic ")), "the upstream got its own");
    assert!(!stdout.contains(secret) && !String::from_utf8_lossy(&out.stderr).contains(secret));
}

#[test]
fn plain_http_only_for_loopback_addresses_not_for_names_that_look_like_them() {
    let hosts = tempfile::tempdir().unwrap();
    let (_dir, config) = node(hosts.path(), "nobody.example", "x");
    // A name that merely starts with "127." is a name: reached over https only.
    let out = verify(&config, "127.attacker.invalid:1/app:v1");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("https://127.attacker.invalid:1"), "{text}");
    assert!(!text.contains("http://127.attacker.invalid"), "{text}");
    // A real loopback address is reached over plain http, as containerd does.
    let out = verify(&config, "127.0.0.1:1/app:v1");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("http://127.0.0.1:1"), "{text}");
}

/// A credential helper that never lets go of its output (a background child holding stdout)
/// must not stall the pull: the verifier gives up within the helper timeout and says which.
#[test]
fn a_credential_helper_that_never_finishes_is_bounded() {
    use std::os::unix::fs::PermissionsExt;
    let registry = FakeServer::start(Box::new(|_| FakeResponse::new(401, "application/json", "{}").with_header("www-authenticate", "Basic realm=\"r\"")));
    let host = registry.url.trim_start_matches("http://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-stuck");
    std::fs::write(&helper, "#!/bin/sh\nsleep 60 &\necho '{\"Username\":\"u\",\"Secret\":\"s\"}'\n").unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let docker = dir.path().join("docker.json");
    std::fs::write(&docker, format!("{{\"credHelpers\": {{\"{host}\": \"stuck\"}}}}")).unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, "version: \"1.0\"\ndefault: { action: enforce, require: { signature: false } }\n").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("policy = {policy:?}\ncache_dir = {:?}\ndocker_config = {docker:?}\n", dir.path().join("cache"))).unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["verify", &format!("{host}/app:v1"), "--config", config.to_str().unwrap()])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "bounded: {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("docker-credential-stuck"), "{text}");
}

/// A registry answering 429 with `Retry-After: 60`: the first process is told the wait
/// (undecided, exit 2), and the next process of the node does not ask it at all before
/// then (the pause is kept beside the cache, as containerd runs one process per pull).
#[test]
fn a_registry_that_asks_us_to_wait_is_not_asked_again_by_the_next_process() {
    let registry = FakeServer::start(Box::new(|_| {
        FakeResponse::new(429, "application/json", "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\"}]}").with_header("retry-after", "60")
    }));
    let host = registry.url.trim_start_matches("http://").to_owned();
    let hosts = tempfile::tempdir().unwrap();
    let (_dir, config) = node(hosts.path(), &host, "secret");
    let first = verify(&config, &format!("{host}/team/app:v1"));
    let said = format!("{}{}", String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&first.stderr));
    assert_eq!(first.status.code(), Some(2), "{said}");
    assert!(said.contains("asks us to wait 60s"), "{said}");
    let asked = registry.hits.lock().unwrap().len();
    assert!(asked >= 1);
    let second = verify(&config, &format!("{host}/team/app:v2"));
    let said = format!("{}{}", String::from_utf8_lossy(&second.stdout), String::from_utf8_lossy(&second.stderr));
    assert!(said.contains("asks us to wait"), "{said}");
    assert_eq!(registry.hits.lock().unwrap().len(), asked, "the next process did not ask before the time named");
}
