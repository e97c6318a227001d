//! `serve` in-process over an in-memory web (the same doubles as `engine.rs`), through real
//! TLS and HTTP on loopback: load with single flight, overload answered at once, a peer that
//! stalls, clients that stall (slowloris), the connection limit, certificate and policy
//! reloads, graceful shutdown. The real API server and Gatekeeper are in tests/kubernetes.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, TestRepo, digest_of};
use clap::{Args, FromArgMatches};
use containerd_verifier::remote::Remote;
use containerd_verifier::serve::{self, Running, ServeArgs};
use containerd_verifier::testkit::{MemoryFetch, MemoryResolve, query};
use serde_json::{Value as Json, json};

const PLC: &str = "https://plc.test";

#[path = "../../../tests/support/pki.rs"]
mod pki;

fn issue(dir: &Path, ca: &str, name: &str) {
    pki::issue(dir, ca, name);
}

/// The node, its world, and a running server.
struct Node {
    dir: tempfile::TempDir,
    fetch: Arc<MemoryFetch>,
    images: Vec<String>,
    policy: PathBuf,
}

impl Node {
    /// Three signed images (one signer each), published on the in-memory web.
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("docker.json"), "{}").unwrap();
        let fetch = Arc::new(MemoryFetch::new());
        let mut trusted = String::new();
        let mut images = Vec::new();
        for seed in ["serve-a", "serve-b", "serve-c"] {
            let mut repo = TestRepo::new(Identity::new(Curve::K256, seed));
            let digest = digest_of(seed);
            let rkey = repo.put_manifest(&digest, seed);
            let id = &repo.identity;
            fetch.serve(&format!("{PLC}/{}", id.did), 200, id.did_document_multikey());
            fetch.serve(&format!("{PLC}/{}/log/audit", id.did), 200, id.audit_log());
            let proof =
                format!("{}/xrpc/com.atproto.sync.getRecord?{}", id.pds, query(&[("did", &id.did), ("collection", MANIFEST_COLLECTION), ("rkey", &rkey)]));
            fetch.serve(&proof, 200, repo.proof(MANIFEST_COLLECTION, &rkey));
            let list =
                format!("{}/xrpc/com.atproto.repo.listRecords?{}", id.pds, query(&[("repo", &id.did), ("collection", MANIFEST_COLLECTION), ("limit", "100")]));
            fetch.serve(&list, 200, r#"{"records":[]}"#);
            trusted.push_str(&format!("  {}: {{ name: {seed} }}\n", id.did));
            images.push(format!("registry.test/team/{seed}@{digest}"));
        }
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            format!("version: 1.0\ntrustedDIDs:\n{trusted}policies:\n  - name: prod\n    scope: \"registry.test/**\"\n    require: {{ signature: true }}\n    action: enforce\n"),
        )
        .unwrap();
        let config = format!(
            "policy = {:?}\ncache_dir = {:?}\nplc_directory = {PLC:?}\ncontainerd_hosts_dir = {:?}\ndocker_config = {:?}\nproof_ttl = \"1h\"\n",
            policy,
            dir.path().join("cache"),
            dir.path().join("certs.d"),
            dir.path().join("docker.json")
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        issue(dir.path(), "ca", "server");
        Node { dir, fetch, images, policy }
    }

    fn args(&self, extra: &[&str]) -> ServeArgs {
        let d = self.dir.path();
        let mut argv: Vec<String> = vec![
            "serve".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--tls-cert={}", d.join("server.crt").display()),
            format!("--tls-key={}", d.join("server.key").display()),
            format!("--config={}", d.join("config.toml").display()),
            "--reload-interval=100ms".into(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        ServeArgs::from_arg_matches(&command.get_matches_from(argv)).unwrap()
    }

    fn start(&self, extra: &[&str]) -> Running {
        let fetch = Arc::clone(&self.fetch);
        let resolve = Arc::new(MemoryResolve::new());
        serve::start(&self.args(extra), Arc::new(move |_| Remote::new(fetch.clone(), resolve.clone()))).unwrap()
    }

    fn client(&self, ca: &str) -> ureq::Agent {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let ca = Certificate::from_pem(&std::fs::read(self.dir.path().join(format!("{ca}.crt"))).unwrap()).unwrap().to_owned();
        let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(vec![ca]))).build();
        ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().into()
    }
}

fn post(agent: &ureq::Agent, url: &str, body: &Json) -> (u16, Json) {
    let mut response = agent.post(url).header("content-type", "application/json").send(body.to_string()).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Json::String(text)))
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default())
}

fn pod_review(uid: &str, images: &[String]) -> Json {
    let containers: Vec<Json> = images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "ns", "operation": "CREATE", "object": {"spec": {"containers": containers}}}})
}

fn provider_request(keys: &[String]) -> Json {
    json!({"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest", "request": {"keys": keys}})
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn two_hundred_concurrent_pods_are_admitted_and_each_image_decided_once() {
    let node = Node::new();
    // Every remote answer takes 50 ms: cold, identical requests must wait for one computation.
    node.fetch.delay("*", Duration::from_millis(50));
    let server = node.start(&[]);
    let url = format!("https://{}/validate?timeout=10s", server.addr);
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let (agent, url, images) = (node.client("ca"), url.clone(), node.images.clone());
            std::thread::spawn(move || post(&agent, &url, &pod_review(&format!("uid-{i}"), &images)))
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let (status, review) = thread.join().unwrap();
        assert_eq!(status, 200, "{review}");
        assert_eq!(review["response"]["uid"], json!(format!("uid-{i}")));
        assert_eq!(review["response"]["allowed"], json!(true), "{review}");
    }
    let (_, metrics) = get(&node.client("ca"), &format!("https://{}/metrics", server.addr));
    assert_eq!(metric(&metrics, "atproto_verifier_admission_decisions_computed_total"), 3, "{metrics}");
    assert_eq!(metric(&metrics, "atproto_verifier_admission_decisions_total{outcome=\"admitted\",reason=\"verified\"}"), 600);
    assert_eq!(metric(&metrics, "atproto_verifier_admission_overloaded_total"), 0);
}

#[test]
fn overload_is_answered_at_once_with_503_and_a_reason() {
    let node = Node::new();
    // Slow enough (and a deadline long enough) that both slow decisions are surely in at once
    // on a loaded machine: with 2 s and the 2.5 s default deadline, the first could end first.
    node.fetch.delay("*", Duration::from_secs(6));
    // One worker, a queue of one: the third distinct image in flight has nowhere to go.
    let server = node.start(&["--workers=1", "--queue=1", "--provider-deadline=8s"]);
    let url = format!("https://{}/gatekeeper", server.addr);
    let agent = node.client("ca");
    let until = |want_in_flight: u64, want_queued: u64| {
        let started = Instant::now();
        loop {
            let (_, metrics) = get(&agent, &format!("https://{}/metrics", server.addr));
            if metric(&metrics, "atproto_verifier_admission_queued") == want_queued
                && metric(&metrics, "atproto_verifier_admission_in_flight") == want_in_flight
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{metrics}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // One slow decision on the worker, then (only once the worker took it: a request that
    // arrives while the first still waits to be picked up finds the queue full) one queued.
    let mut slow = Vec::new();
    for (n, image) in node.images[..2].iter().enumerate() {
        let (agent, url, keys) = (node.client("ca"), url.clone(), vec![image.clone()]);
        slow.push(std::thread::spawn(move || post(&agent, &url, &provider_request(&keys))));
        until(n as u64 + 1, n as u64);
    }
    let started = Instant::now();
    let (status, body) = post(&node.client("ca"), &url, &provider_request(&node.images[2..]));
    assert!(started.elapsed() < Duration::from_secs(1), "overload took {:?}", started.elapsed());
    assert_eq!(status, 503, "{body}");
    assert!(body["response"]["systemError"].as_str().unwrap().contains("overloaded"), "{body}");
    for thread in slow {
        let (status, body) = thread.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

/// A review of `images` as the API server sends it to `/validate` or `/mutate`.
fn review_status(agent: &ureq::Agent, url: &str, images: &[String]) -> Json {
    let (status, review) = post(agent, url, &pod_review("u", images));
    assert_eq!(status, 200, "{review}");
    review["response"].clone()
}

fn computed(node: &Node, server: &Running) -> u64 {
    let (_, metrics) = get(&node.client("ca"), &format!("https://{}/metrics", server.addr));
    metric(&metrics, "atproto_verifier_admission_decisions_computed_total")
}

#[test]
fn a_peer_that_stalls_is_answered_by_the_deadline_never_as_a_bad_signature() {
    let node = Node::new();
    node.fetch.delay("*", Duration::from_secs(60));
    let server = node.start(&["--provider-deadline=700ms", "--webhook-deadline=1500ms"]);
    let url = format!("https://{}/gatekeeper", server.addr);
    let started = Instant::now();
    let (status, body) = post(&node.client("ca"), &url, &provider_request(&node.images[..1]));
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    // Undecided: no item Gatekeeper would cache, the key named in systemError.
    assert_eq!(body["response"]["items"], json!([]), "{body}");
    let error = body["response"]["systemError"].as_str().unwrap();
    assert!(error.contains(&node.images[0]) && (error.contains("deadline-exceeded") || error.contains("network-error")), "{error}");
    assert!(!error.contains("signature"), "{error}");
}

/// The validating review of an admission whose mutating review just decided an image reuses
/// that decision: by the pinned digest when admitted, and for a second when undecided, so a
/// stalled peer costs one deadline, not two; a recovered peer admits within two seconds.
#[test]
fn one_decision_per_image_per_admission_and_a_recovered_peer_admits_at_once() {
    let node = Node::new();
    // The tag resolves to the signed digest (the digest is the hash of the manifest bytes).
    node.fetch.serve("https://registry.test/v2/team/serve-a/manifests/v1", 200, "serve-a");
    // The server's own deadline is the longer of the two routes': both 1.5 s here.
    let server = node.start(&["--webhook-deadline=1500ms", "--provider-deadline=1500ms"]);
    let agent = node.client("ca");
    let tagged = vec!["registry.test/team/serve-a:v1".to_owned()];
    let mutated = review_status(&agent, &format!("https://{}/mutate", server.addr), &tagged);
    let patch: Json =
        serde_json::from_slice(&base64::Engine::decode(&base64::engine::general_purpose::STANDARD, mutated["patch"].as_str().unwrap()).unwrap()).unwrap();
    let pinned = patch[0]["value"].as_str().unwrap().to_owned();
    assert_eq!(pinned, format!("{}@{}", tagged[0], node.images[0].split('@').nth(1).unwrap()));
    let validated = review_status(&agent, &format!("https://{}/validate", server.addr), &[pinned]);
    assert_eq!(validated["allowed"], json!(true), "{validated}");
    assert_eq!(computed(&node, &server), 1, "the validating review decided the pinned image again");

    // A stalled peer: the mutating review waits out the deadline; the validating one answers at once.
    node.fetch.delay("*", Duration::from_secs(60));
    let image = vec![node.images[1].clone()];
    let started = Instant::now();
    let mutated = review_status(&agent, &format!("https://{}/mutate", server.addr), &image);
    assert!(mutated["allowed"] == json!(true) && mutated.get("patch").is_none(), "{mutated}");
    let took = started.elapsed();
    let started = Instant::now();
    let validated = review_status(&agent, &format!("https://{}/validate", server.addr), &image);
    let second = started.elapsed();
    assert_eq!(validated["allowed"], json!(false), "{validated}");
    assert!(second < Duration::from_millis(500) && took >= Duration::from_millis(1400), "mutate {took:?}, then validate {second:?}");
    assert_eq!(computed(&node, &server), 2);
    // The peer recovers: admitted within 2 s.
    node.fetch.delay("*", Duration::ZERO);
    let recovered = Instant::now();
    while review_status(&agent, &format!("https://{}/validate", server.addr), &image)["allowed"] != json!(true) {
        assert!(recovered.elapsed() < Duration::from_secs(2), "still denied {:?} after the peer recovered", recovered.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A decision shared by several reviews runs under the server's own deadline: an asker with a
/// short `?timeout` gets its own answer early, and the others still get the decision.
#[test]
fn a_short_caller_timeout_never_cuts_a_shared_decision_short() {
    let node = Node::new();
    node.fetch.delay("*", Duration::from_millis(1500));
    let server = node.start(&[]);
    let image = vec![node.images[0].clone()];
    let hasty = {
        let (agent, url, image) = (node.client("ca"), format!("https://{}/validate?timeout=0s", server.addr), image.clone());
        std::thread::spawn(move || (Instant::now(), review_status(&agent, &url, &image), Instant::now()))
    };
    // The hasty review leads the decision; the patient one joins it.
    let started = Instant::now();
    loop {
        let (_, metrics) = get(&node.client("ca"), &format!("https://{}/metrics", server.addr));
        if metric(&metrics, "atproto_verifier_admission_cache_misses_total") == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{metrics}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let patient = review_status(&node.client("ca"), &format!("https://{}/validate?timeout=10s", server.addr), &image);
    assert_eq!(patient["allowed"], json!(true), "{patient}");
    let (sent, answer, answered) = hasty.join().unwrap();
    assert_eq!(answer["allowed"], json!(false));
    assert!(answer["status"]["message"].as_str().unwrap().contains("deadline-exceeded"), "{answer}");
    assert!(answered - sent < Duration::from_millis(1200), "the hasty review waited {:?}", answered - sent);
    assert_eq!(computed(&node, &server), 1);
}

#[test]
fn a_registry_that_cannot_be_reached_while_a_tag_is_resolved_is_a_network_error() {
    let node = Node::new();
    node.fetch.fail("https://registry.test/v2/team/serve-a/manifests/v1", containerd_verifier::remote::NetError::Connect("connection refused".into()));
    let server = node.start(&[]);
    let answer = review_status(&node.client("ca"), &format!("https://{}/validate", server.addr), &["registry.test/team/serve-a:v1".to_owned()]);
    let message = answer["status"]["message"].as_str().unwrap();
    assert!(message.contains("(network-error)") && message.contains("could not be reached") && !message.contains("invalid-request"), "{message}");
    assert_eq!(answer["status"]["code"], json!(500), "undecided, not forbidden: {answer}");
}

#[test]
fn stalling_clients_and_too_many_handshakes_are_cut_off_oldest_first() {
    let node = Node::new();
    let server = node.start(&["--handshake-timeout=500ms", "--header-timeout=500ms", "--max-handshakes=2"]);
    // A client that connects and says nothing is closed after the handshake timeout.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the silent connection got bytes");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    drop(silent);
    // Past the handshake slots, the oldest pending handshake is closed at once for the newcomer.
    let mut oldest = TcpStream::connect(server.addr).unwrap();
    oldest.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let _second = TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let _third = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    assert_eq!(oldest.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_millis(400), "evicted after {:?}", started.elapsed());
    // ... and a genuine client still gets in.
    let (status, _) = get(&node.client("ca"), &format!("https://{}/healthz", server.addr));
    assert_eq!(status, 200);
    let (_, metrics) = get(&node.client("ca"), &format!("https://{}/metrics", server.addr));
    assert!(metric(&metrics, "atproto_verifier_admission_connections_evicted_total{phase=\"handshake\"}") >= 1, "{metrics}");
}

/// 1,000 idle or slow sockets (750 that never start TLS, 250 that finished it and say nothing
/// more, as a kept-alive client does) against 64 connection slots: 200 genuine reviews are
/// answered within their deadline all the same.
#[test]
fn a_thousand_idle_sockets_never_starve_genuine_reviews() {
    let node = Node::new();
    let server = node.start(&["--max-connections=64", "--max-handshakes=64"]);
    let mut idle = Vec::new();
    for _ in 0..750 {
        idle.push(TcpStream::connect(server.addr).unwrap());
    }
    // Kept-alive TLS connections that never send another request.
    let mut kept: Vec<ureq::Agent> = Vec::new();
    for _ in 0..250 {
        let agent = node.client("ca");
        // The body read to its end: the agent keeps the connection for a next request.
        let _ = agent.get(&format!("https://{}/healthz", server.addr)).call().map(|mut r| r.body_mut().read_to_string());
        kept.push(agent);
    }
    let deadline = Duration::from_secs(10);
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let (agent, url, images) = (node.client("ca"), format!("https://{}/validate?timeout=10s", server.addr), node.images.clone());
            std::thread::spawn(move || {
                let mut late = Vec::new();
                for i in 0..20 {
                    let started = Instant::now();
                    let answer = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(pod_review(&format!("g-{t}-{i}"), &images).to_string())
                        .map_err(|e| e.to_string())
                        .and_then(|mut r| r.body_mut().read_to_string().map_err(|e| e.to_string()))
                        .and_then(|text| serde_json::from_str::<Json>(&text).map_err(|e| format!("{e}: {text}")));
                    match answer {
                        Ok(review) if review["response"]["allowed"] == json!(true) && started.elapsed() < deadline => {}
                        Ok(review) => late.push(format!("request {t}-{i} after {:?}: {}", started.elapsed(), review["response"])),
                        Err(e) => late.push(format!("request {t}-{i} after {:?}: {e}", started.elapsed())),
                    }
                }
                late
            })
        })
        .collect();
    let late: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let (_, metrics) = get(&node.client("ca"), &format!("https://{}/metrics", server.addr));
    let connections: Vec<&str> = metrics.lines().filter(|l| l.contains("connection")).collect();
    assert!(late.is_empty(), "{} of 200 genuine reviews not answered within their deadline: {late:#?}\n{connections:#?}", late.len());
    assert!(metric(&metrics, "atproto_verifier_admission_connections_evicted_total{phase=\"handshake\"}") >= 600, "{metrics}");
    // The kept-alive connections made room for the genuine ones (250 against 64 slots).
    assert!(metric(&metrics, "atproto_verifier_admission_connections_evicted_total{phase=\"idle\"}") >= 190, "{metrics}");
    drop((idle, kept));
}

#[test]
fn certificates_and_policy_reload_without_a_restart_and_a_broken_policy_keeps_the_old() {
    let node = Node::new();
    let server = node.start(&[]);
    let base = format!("https://{}", server.addr);
    let (status, ready) = get(&node.client("ca"), &format!("{base}/readyz"));
    assert_eq!((status, ready.contains("generation 1")), (200, true), "{ready}");
    let admitted =
        |agent: &ureq::Agent| post(agent, &format!("{base}/gatekeeper"), &provider_request(&node.images[..1])).1["response"]["items"][0].get("value").is_some();
    assert!(admitted(&node.client("ca")));
    // The serving certificate's expiry is exported (the test certificates are valid 2 days).
    let (_, metrics) = get(&node.client("ca"), &format!("{base}/metrics"));
    let expires = metric(&metrics, "atproto_verifier_admission_tls_certificate_expiry_timestamp_seconds") as i64;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now + 86_400..=now + 2 * 86_400 + 3_600).contains(&expires), "expires {expires}, now {now}");
    assert_eq!(metric(&metrics, "atproto_verifier_admission_reload_failing"), 0);

    // A new certificate from another CA, written over the old files: new connections get it.
    issue(node.dir.path(), "ca2", "server2");
    std::fs::copy(node.dir.path().join("server2.key"), node.dir.path().join("server.key")).unwrap();
    std::fs::copy(node.dir.path().join("server2.crt"), node.dir.path().join("server.crt")).unwrap();
    let started = Instant::now();
    while get_ok(&node.client("ca2"), &format!("{base}/healthz")).is_none() {
        assert!(started.elapsed() < Duration::from_secs(5), "the new certificate was not served");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A broken policy: the old one stays in force; /readyz says so.
    std::fs::write(&node.policy, "version: [").unwrap();
    let agent = node.client("ca2");
    let started = Instant::now();
    loop {
        let (status, text) = get(&agent, &format!("{base}/readyz"));
        if text.contains("policy reload failed") {
            assert_eq!(status, 200, "{text}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(admitted(&agent));
    let (_, metrics) = get(&agent, &format!("{base}/metrics"));
    assert_eq!(metric(&metrics, "atproto_verifier_admission_reload_failing"), 1, "{metrics}");
    // A new policy that trusts nobody: the cached decision is not answered under it.
    std::fs::write(&node.policy, "version: 1.0\ntrustedDIDs: {}\npolicies: []\ndefault: { action: enforce, require: { signature: true } }\n").unwrap();
    let started = Instant::now();
    while admitted(&agent) {
        assert!(started.elapsed() < Duration::from_secs(5), "the new policy was not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, ready) = get(&agent, &format!("{base}/readyz"));
    assert!(ready.contains("ready: policy generation 2") && !ready.contains("warning"), "{ready}");
}

fn get_ok(agent: &ureq::Agent, url: &str) -> Option<String> {
    let mut response = agent.get(url).call().ok()?;
    response.body_mut().read_to_string().ok()
}

#[test]
fn shutdown_finishes_requests_in_flight_and_then_refuses() {
    let node = Node::new();
    node.fetch.delay("*", Duration::from_millis(300));
    let mut server = node.start(&[]);
    let url = format!("https://{}/gatekeeper", server.addr);
    let (agent, keys) = (node.client("ca"), node.images[..1].to_vec());
    let in_flight = std::thread::spawn(move || post(&agent, &url, &provider_request(&keys)));
    std::thread::sleep(Duration::from_millis(150));
    server.begin_stop();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["response"]["items"][0].get("value").is_some(), "{body}");
    server.stop();
    assert!(TcpStream::connect(server.addr).is_err(), "still accepting after shutdown");
}

#[test]
fn hostile_bodies_get_clear_errors() {
    let node = Node::new();
    let server = node.start(&["--max-body=1024"]);
    let agent = node.client("ca");
    let (status, body) = post(&agent, &format!("https://{}/validate", server.addr), &json!({"pad": "x".repeat(2048)}));
    assert_eq!(status, 413, "{body}");
    let (status, body) = post(&agent, &format!("https://{}/validate", server.addr), &json!({"apiVersion": "v1", "kind": "Pod"}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&agent, &format!("https://{}/gatekeeper", server.addr), &json!({"kind": "ProviderRequest"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["response"]["systemError"].as_str().is_some(), "{body}");
    let (status, _) = get(&agent, &format!("https://{}/nowhere", server.addr));
    assert_eq!(status, 404);
    let (status, _) = get(&agent, &format!("https://{}/validate", server.addr));
    assert_eq!(status, 405);
}
