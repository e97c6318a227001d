//! `serve` under admission load (`cargo bench -p containerd-verifier --bench serve_load`;
//! figures in BENCHMARKS.md): 200 concurrent clients, each sending AdmissionReviews of a Pod
//! with three containers (three signed images) over TLS with keep-alive, against a server
//! in-process over the in-memory web.
//!
//! - warm: the decisions are cached; 200 clients × 25 reviews each.
//! - cold: a fresh node (empty memory and disk caches) per round, every remote answer delayed
//!   50 ms; 200 clients send one review at the same moment; 5 rounds.
//!
//! Each client connects (TLS) before the clock starts, as the API server keeps its
//! connections to a webhook alive. Prints p50, p99, max, requests/s and the process's peak RSS (VmHWM: server and the 200
//! client threads together, so an upper bound for the server).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, TestRepo, digest_of};
use clap::{Args, FromArgMatches};
use containerd_verifier::remote::Remote;
use containerd_verifier::serve::{self, ServeArgs};
use containerd_verifier::testkit::{MemoryFetch, MemoryResolve, query};
use serde_json::{Value as Json, json};

const PLC: &str = "https://plc.test";
/// Concurrent clients: 200, or `SERVE_LOAD_CLIENTS` (to see what concurrency itself costs).
static CLIENTS_SET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn clients() -> usize {
    *CLIENTS_SET.get_or_init(|| std::env::var("SERVE_LOAD_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200))
}

#[path = "../../../tests/support/pki.rs"]
mod pki;

struct Node {
    dir: tempfile::TempDir,
    fetch: Arc<MemoryFetch>,
    images: Vec<String>,
}

fn node(delay: Duration) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("docker.json"), "{}").unwrap();
    let fetch = Arc::new(MemoryFetch::new());
    fetch.delay("*", delay);
    // One rule per image naming its one signer (as a path identity would): each decision has
    // one candidate, so a cold decision is three sequential round trips (the registry's
    // referrers, the DID document, the record proof).
    let (mut trusted, mut rules, mut images) = (String::new(), String::new(), Vec::new());
    for seed in ["load-a", "load-b", "load-c"] {
        let mut repo = TestRepo::new(Identity::new(Curve::K256, seed));
        let digest = digest_of(seed);
        let rkey = repo.put_manifest(&digest, seed);
        let id = &repo.identity;
        fetch.serve(&format!("{PLC}/{}", id.did), 200, id.did_document_multikey());
        let proof = format!("{}/xrpc/com.atproto.sync.getRecord?{}", id.pds, query(&[("did", &id.did), ("collection", MANIFEST_COLLECTION), ("rkey", &rkey)]));
        fetch.serve(&proof, 200, repo.proof(MANIFEST_COLLECTION, &rkey));
        // A registry with the referrers API (distribution 3, Harbor, GHCR): no attached
        // signature, an empty index (else the engine also tries the sha256-<hex> tag).
        let referrers = format!("https://registry.test/v2/team/{seed}/referrers/{digest}?artifactType=application%2Fvnd.atproto.signature.v1%2Bjson");
        fetch.serve(&referrers, 200, r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#);
        trusted.push_str(&format!("  {}: {{ name: {seed} }}\n", id.did));
        rules.push_str(&format!(
            "  - name: {seed}\n    scope: \"registry.test/team/{seed}\"\n    require: {{ signature: true, trustedDIDs: [{}] }}\n    action: enforce\n",
            id.did
        ));
        images.push(format!("registry.test/team/{seed}@{digest}"));
    }
    std::fs::write(d.join("policy.yaml"), format!("version: 1.0\ntrustedDIDs:\n{trusted}policies:\n{rules}")).unwrap();
    std::fs::write(
        d.join("config.toml"),
        format!(
            "policy = {:?}\ncache_dir = {:?}\nplc_directory = {PLC:?}\ncontainerd_hosts_dir = {:?}\ndocker_config = {:?}\nproof_ttl = \"1h\"\n",
            d.join("policy.yaml"),
            d.join("cache"),
            d.join("certs.d"),
            d.join("docker.json")
        ),
    )
    .unwrap();
    pki::issue(d, "ca", "s");
    Node { dir, fetch, images }
}

fn start(node: &Node) -> serve::Running {
    let d = node.dir.path();
    let argv = vec![
        "serve".to_owned(),
        "--listen=127.0.0.1:0".into(),
        format!("--tls-cert={}", d.join("s.crt").display()),
        format!("--tls-key={}", d.join("s.key").display()),
        format!("--config={}", d.join("config.toml").display()),
    ];
    let args = ServeArgs::from_arg_matches(&ServeArgs::augment_args(clap::Command::new("serve")).get_matches_from(argv)).unwrap();
    let fetch = Arc::clone(&node.fetch);
    let resolve = Arc::new(MemoryResolve::new());
    serve::start(&args, Arc::new(move |_| Remote::new(fetch.clone(), resolve.clone()))).unwrap()
}

fn client(node: &Node) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(&std::fs::read(node.dir.path().join("ca.crt")).unwrap()).unwrap().to_owned();
    let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(vec![ca]))).build();
    ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().into()
}

fn review(images: &[String]) -> String {
    let containers: Vec<Json> = images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "ns", "operation": "CREATE", "object": {"spec": {"containers": containers}}}})
    .to_string()
}

/// A TLS client config trusting the node's CA.
fn tls_client(node: &Node) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(node.dir.path().join("ca.crt")).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The load from 200 connections multiplexed on one client thread (tokio + hyper's client):
/// what is measured is the server, not the scheduling of 200 client threads. Closed loop
/// (`period` none: each connection sends its next review when the answer comes) or open loop
/// (each connection sends one every `period`, the 200 spread evenly over it: latency at a
/// given rate, without a closed loop's queueing).
fn load_connected(node: &Node, addr: std::net::SocketAddr, per_client: usize, period: Option<Duration>) -> (Vec<Duration>, Duration) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let config = tls_client(node);
    let body = Bytes::from(review(&node.images));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let mut senders = Vec::with_capacity(clients());
        for _ in 0..clients() {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config)).connect(name, tcp).await.unwrap();
            let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
            tokio::spawn(connection);
            senders.push(sender);
        }
        let started = Instant::now();
        let tasks: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(i, mut sender)| {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut tick = match period {
                        Some(period) => {
                            tokio::time::sleep(period * i as u32 / clients() as u32).await;
                            Some(tokio::time::interval(period))
                        }
                        None => None,
                    };
                    let mut times = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        if let Some(tick) = tick.as_mut() {
                            tick.tick().await;
                        }
                        let request = hyper::Request::post("/validate?timeout=10s")
                            .header("host", "127.0.0.1")
                            .header("content-type", "application/json")
                            .body(Full::new(body.clone()))
                            .unwrap();
                        let begun = Instant::now();
                        let response = sender.send_request(request).await.unwrap();
                        let bytes = response.into_body().collect().await.unwrap().to_bytes();
                        assert!(bytes.windows(14).any(|w| w == b"\"allowed\":true"), "{}", String::from_utf8_lossy(&bytes));
                        times.push(begun.elapsed());
                    }
                    times
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        (all, started.elapsed())
    })
}

/// 200 clients at once, `per_client` reviews each; latencies of every review.
fn load(node: &Node, url: &str, per_client: usize) -> (Vec<Duration>, Duration) {
    let barrier = Arc::new(Barrier::new(clients() + 1));
    let body = review(&node.images);
    let threads: Vec<_> = (0..clients())
        .map(|_| {
            let (agent, url, body, barrier) = (client(node), url.to_owned(), body.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                // Connected first, as the API server keeps its connections to a webhook alive:
                // what is measured is the review, not a storm of 200 TLS handshakes.
                let health = url.replace("/validate?timeout=10s", "/healthz");
                agent.get(&health).call().unwrap().body_mut().read_to_string().unwrap();
                barrier.wait();
                let mut times = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let started = Instant::now();
                    let mut response = agent.post(&url).header("content-type", "application/json").send(body.as_str()).unwrap();
                    let text = response.body_mut().read_to_string().unwrap();
                    assert!(text.contains("\"allowed\":true"), "{text}");
                    times.push(started.elapsed());
                }
                times
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let times: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    (times, started.elapsed())
}

fn report(name: &str, mut times: Vec<Duration>, wall: Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1).min(times.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: {} reviews, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {:.0} reviews/s",
        times.len(),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(*times.last().unwrap()),
        times.len() as f64 / wall.as_secs_f64()
    );
}

/// CPU time (user + system, clock ticks) of this process's threads, by name without digits:
/// the server's `serve-io` and `decide-` threads apart from the client threads.
fn cpu_by_thread() -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ticks = fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let name = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit() || c == '-').to_owned();
        *out.entry(if name.is_empty() { "main".into() } else { name }).or_insert(0) += ticks;
    }
    out
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    // Warm: the first round fills the cache; the measured rounds answer from it.
    let warm = node(Duration::ZERO);
    let server = start(&warm);
    let url = format!("https://{}/validate?timeout=10s", server.addr);
    let _ = load(&warm, &url, 1);
    let before = cpu_by_thread();
    let (times, wall) = load_connected(&warm, server.addr, 25, None);
    let after = cpu_by_thread();
    report("warm, 200 concurrent connections (one client thread)", times, wall);
    // Client threads have exited by now (their time is gone from /proc); the server's remain.
    let cpu: Vec<String> = after.iter().map(|(k, v)| format!("{k} {} ms", (v - before.get(k).copied().unwrap_or(0)) * 10)).collect();
    println!("  CPU during the warm round: {} (wall {} ms)", cpu.join(", "), wall.as_millis());
    for rate in [2_000u32, 5_000, 10_000] {
        let period = Duration::from_secs(1) * clients() as u32 / rate;
        let (times, wall) = load_connected(&warm, server.addr, 10 * rate as usize / clients() / 2, Some(period));
        report(&format!("warm, 200 connections, open loop at {rate} reviews/s"), times, wall);
    }
    let (times, wall) = load(&warm, &url, 25);
    report("warm, 200 client threads (ureq, one connection each)", times, wall);
    drop(server);

    // Cold: a fresh node each round, every remote answer 50 ms late.
    let mut all = Vec::new();
    let mut wall = Duration::ZERO;
    for _ in 0..5 {
        let cold = node(Duration::from_millis(50));
        let server = start(&cold);
        let (times, w) = load_connected(&cold, server.addr, 1, None);
        all.extend(times);
        wall += w;
        let requested = cold.fetch.requested();
        println!("  cold round: {} remote requests for 200 reviews of 3 images: {:?}", requested.len(), &requested[..requested.len().min(3)]);
    }
    report("cold, 200 concurrent, 50 ms per remote answer", all, wall);
    println!("peak RSS (server and 200 client threads, one process): {:.1} MiB", peak_rss_mib());
}
