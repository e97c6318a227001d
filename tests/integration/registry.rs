//! The registry client against a registry that behaves like the hosted ones (which Debian's
//! docker-registry does not): Bearer token auth whose token service wants Basic credentials
//! from a docker config.json, the referrers API, and hosts.toml mirrors. Secrets must never
//! reach stdout or stderr.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "harness.rs"]
mod harness;

use std::process::Command;

use base64::Engine;
use harness::{FakeResponse, FakeServer, Verifier, policy, sha256};
use serde_json::json;

const SECRET: &str = "canary-password-7f3a";
const TOKEN: &str = "canary-token-91b2";
const IDENTITY_TOKEN: &str = "canary-identity-token-5c1d";

fn manifest() -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "c".repeat(64)), "size": 2}, "layers": []})).unwrap()
}

/// A registry at `/v2/…` whose token service at `/token` wants `user:SECRET`.
fn fake_registry(signature_meta: Option<Vec<u8>>) -> (FakeServer, String) {
    let manifest = manifest();
    let digest = sha256(&manifest);
    let meta = signature_meta.unwrap_or_default();
    let meta_digest = sha256(&meta);
    let artifact = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": "application/vnd.atproto.signature.v1+json", "config": {"mediaType": "application/vnd.atproto.signature.v1+json", "digest": meta_digest, "size": meta.len()}, "layers": []})).unwrap();
    let artifact_digest = sha256(&artifact);
    let expected_basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}")));
    let (d, ad, md) = (digest.clone(), artifact_digest.clone(), meta_digest.clone());
    let server = FakeServer::start(Box::new(move |r| {
        let realm_host = r.header("host").unwrap_or_default().to_owned();
        if r.path.starts_with("/token") {
            // Basic credentials on a GET, or docker's identity token on a POST (OAuth2).
            let refresh = r.method == "POST" && String::from_utf8_lossy(&r.body).contains(&format!("grant_type=refresh_token&refresh_token={IDENTITY_TOKEN}"));
            return if r.header("authorization") == Some(expected_basic.as_str()) || refresh {
                FakeResponse::new(200, "application/json", format!("{{\"token\":\"{TOKEN}\"}}"))
            } else {
                FakeResponse::new(401, "application/json", "{}")
            };
        }
        if r.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return FakeResponse::new(401, "application/json", "{}")
                .with_header("www-authenticate", &format!("Bearer realm=\"http://{realm_host}/token\",service=\"fake\",scope=\"repository:app:pull\""));
        }
        match r.path.as_str() {
            "/v2/app/manifests/v1" => FakeResponse::new(200, "application/vnd.oci.image.manifest.v1+json", manifest.clone()).with_header("docker-content-digest", &d),
            p if p == format!("/v2/app/manifests/{d}") => FakeResponse::new(200, "application/vnd.oci.image.manifest.v1+json", manifest.clone()),
            p if p.starts_with(&format!("/v2/app/referrers/{d}")) => FakeResponse::new(200, "application/vnd.oci.image.index.v1+json", serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": ad, "size": artifact.len(), "artifactType": "application/vnd.atproto.signature.v1+json"}]})).unwrap()),
            p if p == format!("/v2/app/manifests/{ad}") => FakeResponse::new(200, "application/vnd.oci.image.manifest.v1+json", artifact.clone()),
            p if p == format!("/v2/app/blobs/{md}") => FakeResponse::new(200, "application/octet-stream", meta.clone()),
            _ => FakeResponse::new(404, "application/json", "{}"),
        }
    }));
    (server, digest)
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn verify(verifier: &Verifier, image: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["verify", image, "--config", verifier.config.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap()
}

fn no_secret(output: &[u8]) {
    let text = String::from_utf8_lossy(output);
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"));
    for secret in [SECRET, TOKEN, encoded.as_str()] {
        assert!(!text.contains(secret), "a secret leaked: {text}");
    }
}

fn unsigned_ok_policy(host: &str) -> String {
    policy(
        &[],
        &format!("  - name: fake\n    scope: \"{host}/**\"\n    require: {{ signature: false }}\n"),
        "{ action: enforce, require: { signature: true } }",
    )
}

#[test]
fn bearer_token_from_basic_credentials_resolves_tags_and_keeps_secrets() {
    let (server, digest) = fake_registry(None);
    let host = host_of(&server.url);
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("docker-config.json");
    std::fs::write(
        &docker_config,
        json!({"auths": {host.clone(): {"auth": base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"))}}}).to_string(),
    )
    .unwrap();
    let verifier = Verifier::in_dir(dir, &format!("docker_config = {docker_config:?}\n"), &unsigned_ok_policy(&host));
    let out = verify(&verifier, &format!("{host}/app:v1"));
    no_secret(&out.stdout);
    no_secret(&out.stderr);
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((out.status.code(), result["digest"].as_str(), result["reason"].as_str()), (Some(0), Some(digest.as_str()), Some("not-required")), "{result}");
    assert!(server.hits.lock().unwrap().iter().any(|p| p.starts_with("/token")));
    let sarif = Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["verify", &format!("{host}/app:v1"), "--config", verifier.config.to_str().unwrap(), "--format", "sarif"])
        .output()
        .unwrap();
    let sarif: serde_json::Value = serde_json::from_slice(&sarif.stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(sarif["runs"][0]["results"][0]["ruleId"], "not-required");
    assert_eq!(sarif["runs"][0]["results"][0]["kind"], "pass");

    // Without credentials the token service refuses: could not decide (exit 2), said plainly.
    let verifier = Verifier::new("", &unsigned_ok_policy(&host));
    let out = verify(&verifier, &format!("{host}/app:v1"));
    assert_eq!(out.status.code(), Some(2));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(result["message"].as_str().unwrap().contains("credentials"), "{result}");
}

#[test]
fn referrers_api_artifacts_give_hints_and_hosts_toml_mirrors_are_used() {
    let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
    let meta = serde_json::to_vec(&json!({"$type": "io.atcr.atproto.signature", "version": "1.0", "atproto": {"did": did, "recordUri": format!("at://{did}/io.atcr.manifest/3mabcdefghijk")}})).unwrap();
    let (server, digest) = fake_registry(Some(meta));
    let mirror = host_of(&server.url);
    // Images are named after registry.example.com; hosts.toml sends pulls to the fake mirror.
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("certs.d/registry.example.com");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!("server = \"https://registry.example.com\"\n[host.\"http://{mirror}\"]\ncapabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    let docker_config = dir.path().join("docker-config.json");
    // Credentials are per host, as containerd's authorizer looks them up: the mirror's own.
    std::fs::write(
        &docker_config,
        json!({"auths": {mirror.clone(): {"auth": base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"))}}}).to_string(),
    )
    .unwrap();
    let plc = FakeServer::start(Box::new(|_| FakeResponse::new(404, "text/plain", "")));
    let config = format!("containerd_hosts_dir = {:?}\ndocker_config = {docker_config:?}\nplc_directory = {:?}\n", dir.path().join("certs.d"), plc.url);
    let rules = "  - name: example\n    scope: \"registry.example.com/**\"\n    require: { signature: true }\n";
    let verifier = Verifier::in_dir(dir, &config, &policy(&[("release", did, None)], rules, "{ action: enforce, require: { signature: true } }"));
    let pull = verifier.pull("registry.example.com/app:v1", &digest);
    no_secret(pull.stdout.as_bytes());
    no_secret(pull.stderr.as_bytes());
    assert!(pull.stderr.contains(&format!("names {did} / 3mabcdefghijk")), "{}", pull.stderr);
    // The DID itself is unknown to this PLC: rejected for that reason, not for a signature.
    assert_eq!((pull.code, pull.reason()), (Some(1), "did-unresolved"), "{}", pull.stdout);
}

/// A TLS registry endpoint with a private CA (openssl makes the PKI, Python serves the manifest):
/// hosts.toml `ca` makes it trusted, `skip_verify` accepts it without one, and without either
/// the certificate is refused.
#[test]
fn hosts_toml_ca_and_skip_verify_for_tls_mirrors() {
    let openssl =
        ["/usr/bin/openssl", "/bin/openssl"].into_iter().find(|p| std::path::Path::new(p).exists()).expect("openssl is missing: apt-get install openssl");
    let dir = tempfile::tempdir().unwrap();
    // A private CA, and a server certificate it signs (as a site with its own PKI has).
    let path = |name: &str| dir.path().join(name);
    let openssl_ok = |args: &[&str]| {
        let status =
            Command::new(openssl).args(args).current_dir(dir.path()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    std::fs::write(path("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test private CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl_ok(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let (cert, key, ca) = (path("cert.pem"), path("key.pem"), path("ca.pem"));
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("v2/app/manifests")).unwrap();
    let body = manifest();
    std::fs::write(root.join("v2/app/manifests/v1"), &body).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Python's HTTP/1.1 file server behind TLS with that certificate.
    let script = format!(
        "import http.server, ssl, sys\nclass H(http.server.SimpleHTTPRequestHandler):\n    protocol_version = 'HTTP/1.1'\n    def log_message(self, *a): pass\nhttpd = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), lambda *a, **k: H(*a, directory={root:?}, **k))\nctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\nctx.load_cert_chain({cert:?}, {key:?})\nhttpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)\nhttpd.serve_forever()\n",
        root = root.display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    let mut server = harness::Guard(Some(
        Command::new("python3")
            .arg("-c")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 is required"),
    ));
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the TLS server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let run = |hosts: &str| {
        let d = tempfile::tempdir().unwrap();
        let host_dir = d.path().join("certs.d/tls.example.com");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!("server = \"https://tls.example.com\"\n[host.\"https://127.0.0.1:{port}\"]\ncapabilities = [\"pull\", \"resolve\"]\n{hosts}"),
        )
        .unwrap();
        let config = format!("containerd_hosts_dir = {:?}\n", d.path().join("certs.d"));
        let verifier = Verifier::in_dir(d, &config, &unsigned_ok_policy("tls.example.com"));
        let out = verify(&verifier, "tls.example.com/app:v1");
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), result)
    };
    let (code, result) = run(&format!("ca = {:?}\n", ca));
    assert_eq!((code, result["digest"].as_str()), (Some(0), Some(sha256(&body).as_str())), "with ca: {result}");
    let (code, result) = run("skip_verify = true\n");
    assert_eq!(code, Some(0), "with skip_verify: {result}");
    let (code, result) = run("");
    assert_eq!(code, Some(2), "an unknown CA must be refused: {result}");

    // Trust roots beyond hosts.toml: config.toml's ca_bundle, and the system store
    // (SSL_CERT_FILE, as an operator's distribution bundle would hold a private CA).
    let run_with = |config_extra: &str, env: &[(&str, &std::path::Path)]| {
        let d = tempfile::tempdir().unwrap();
        let host_dir = d.path().join("certs.d/tls.example.com");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!("server = \"https://tls.example.com\"\n[host.\"https://127.0.0.1:{port}\"]\ncapabilities = [\"pull\", \"resolve\"]\n"),
        )
        .unwrap();
        let config = format!("containerd_hosts_dir = {:?}\n{config_extra}", d.path().join("certs.d"));
        let verifier = Verifier::in_dir(d, &config, &unsigned_ok_policy("tls.example.com"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_atproto-verifier"));
        command.args(["verify", "tls.example.com/app:v1", "--config", verifier.config.to_str().unwrap(), "--format", "json"]);
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = run_with(&format!("ca_bundle = {ca:?}\n"), &[]);
    assert_eq!(code, Some(0), "ca_bundle: {out}");
    let (code, out) = run_with("", &[("SSL_CERT_FILE", ca.as_path())]);
    assert_eq!(code, Some(0), "the system store (SSL_CERT_FILE): {out}");
    server.stop();
}

/// Credentials as docker and containerd tools find them: `DOCKER_CONFIG`, `credHelpers` and
/// `credsStore` (helpers of our own, as scripts on PATH), `identitytoken`; never printed.
#[test]
fn credentials_from_docker_config_helpers_and_identity_tokens() {
    use std::os::unix::fs::PermissionsExt;
    let (server, digest) = fake_registry(None);
    let host = host_of(&server.url);
    let run = |docker_json: serde_json::Value, helper: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let docker_dir = dir.path().join("docker");
        std::fs::create_dir_all(&docker_dir).unwrap();
        std::fs::write(docker_dir.join("config.json"), docker_json.to_string()).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        if let Some(answer) = helper {
            let script = bin.join("docker-credential-atptest");
            // The helper protocol: `get`, the server on stdin, JSON on stdout.
            std::fs::write(&script, format!("#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 1\n[ \"$server\" = \"{host}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{answer}'\n")).unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let verifier = Verifier::in_dir(dir, "", &unsigned_ok_policy(&host));
        let out = Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["verify", &format!("{host}/app:v1"), "--config", verifier.config.to_str().unwrap(), "--format", "json"])
            .env("DOCKER_CONFIG", &docker_dir)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        no_secret(&out.stdout);
        no_secret(&out.stderr);
        assert!(!String::from_utf8_lossy(&out.stdout).contains(IDENTITY_TOKEN) && !String::from_utf8_lossy(&out.stderr).contains(IDENTITY_TOKEN));
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), result)
    };
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"));
    // $DOCKER_CONFIG/config.json with `auths` (no docker_config in config.toml).
    let (code, result) = run(json!({"auths": {host.clone(): {"auth": basic}}}), None);
    assert_eq!((code, result["digest"].as_str()), (Some(0), Some(digest.as_str())), "auths: {result}");
    // `identitytoken`: exchanged at the token service (OAuth2 refresh token).
    let (code, result) = run(json!({"auths": {host.clone(): {"identitytoken": IDENTITY_TOKEN}}}), None);
    assert_eq!(code, Some(0), "identitytoken: {result}");
    // credHelpers for this registry.
    let answer = format!("{{\"ServerURL\":\"{host}\",\"Username\":\"user\",\"Secret\":\"{SECRET}\"}}");
    let (code, result) = run(json!({"credHelpers": {host.clone(): "atptest"}}), Some(&answer));
    assert_eq!(code, Some(0), "credHelpers: {result}");
    // credsStore answering an identity token (Username "<token>").
    let answer = format!("{{\"ServerURL\":\"{host}\",\"Username\":\"<token>\",\"Secret\":\"{IDENTITY_TOKEN}\"}}");
    let (code, result) = run(json!({"credsStore": "atptest"}), Some(&answer));
    assert_eq!(code, Some(0), "credsStore with an identity token: {result}");
    // A helper that is not installed: could not decide (exit 2), and it says which.
    let (code, result) = run(json!({"credHelpers": {host.clone(): "missing"}}), None);
    assert_eq!(code, Some(2), "{result}");
    assert!(result["message"].as_str().unwrap_or_default().contains("docker-credential-missing"), "{result}");
}
