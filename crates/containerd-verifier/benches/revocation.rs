//! `watch`, end to end on loopback (BENCHMARKS.md): for each source (the reference PDS's
//! `subscribeRepos`, indigo's relay in front of it, Jetstream reading it), the delay from
//! `deleteRecord` to the first pull the verifier blocks, over `REVOCATION_DELETIONS` (20)
//! deletions, one second apart; then the watcher's memory and CPU with 10,000 watched DIDs
//! and a fake relay streaming `#commit` frames (a real frame, its DID rewritten) at
//! `REVOCATION_RATE` (2,000) frames per second, 1 in 10 for a watched DID, for 30 s.
//! Run: `cargo bench -p containerd-verifier --bench revocation` (needs what `scripts/test`
//! installs: node, docker-registry, target/tools from tests/firehose/install.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../../../tests/integration/harness.rs"]
mod harness;
#[path = "../../../tests/integration/streams.rs"]
mod streams;

use std::time::{Duration, Instant};

use atproto_sig_core::Limits;
use atproto_sig_core::firehose::{Frame as Event, decode_frame};
use containerd_verifier::material::store::{Cache, Kind, ProofEntry};
use containerd_verifier::remote::ureq::TrustRoots;
use containerd_verifier::remote::ws::WsSubscribe;
use containerd_verifier::remote::{Frame, Subscribe};
use harness::env;

fn deletions() -> usize {
    std::env::var("REVOCATION_DELETIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One source: `n` images signed and cached, `watch` started, each record deleted in turn.
fn delays(name: &str, extra: &dyn Fn(&harness::Account) -> String) -> Vec<Duration> {
    let env = env();
    let alice = env.pds.create_account(name);
    let r = &env.registry.host;
    let config_extra = extra(&alice);
    let config = format!(
        "plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{r:?}]\nbudget = \"8s\"\nproof_ttl = \"1h\"\n{config_extra}",
        env.pds.plc, env.pds.pds
    );
    let policy = harness::policy(
        &[(&alice.handle, &alice.did, None)],
        &format!("  - name: signed\n    scope: \"{r}/**\"\n    require: {{ signature: true }}\n    action: enforce\n"),
        "{ action: enforce, require: { signature: true } }",
    );
    let verifier = harness::Verifier::new(&config, &policy);
    let images: Vec<(String, String, String)> = (0..deletions())
        .map(|i| {
            let digest = env.registry.push_image(&format!("{name}.test/app{i}"), "v1", &format!("{name}-{i}"));
            let rkey = env.pds.put_manifest(&alice, &digest, &format!("app{i}"), "application/vnd.oci.image.manifest.v1+json");
            let image = format!("{r}/{name}.test/app{i}:v1");
            assert_eq!(verifier.pull(&image, &digest).code, Some(0));
            (image, digest, rkey)
        })
        .collect();
    let log = verifier.dir.path().join("watch.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["watch"])
        .env("ATPROTO_VERIFIER_CONFIG", &verifier.config)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _watch = harness::Guard(Some(child));
    let text = harness::wait_for_log(&log, "subscribed to", Duration::from_secs(20));
    assert!(text.contains("subscribed to"), "{text}");
    // The first re-checks of a new watcher (not followed before) finish first.
    std::thread::sleep(Duration::from_secs(3));
    let mut delays = Vec::new();
    for (image, digest, rkey) in &images {
        std::thread::sleep(Duration::from_secs(1));
        env.pds.delete_record(&alice, rkey);
        let deleted = Instant::now();
        loop {
            let pull = verifier.pull(image, digest);
            if pull.code == Some(1) {
                assert!(pull.stdout.starts_with("record-deleted"), "{}", pull.stdout);
                break;
            }
            assert!(deleted.elapsed() < Duration::from_secs(30), "{name}: not blocked 30 s after the deletion:\n{}", std::fs::read_to_string(&log).unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
        delays.push(deleted.elapsed());
    }
    delays
}

fn report(name: &str, mut delays: Vec<Duration>) {
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<10} n={} min {:.0} ms, median {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        delays.len(),
        ms(delays[0]),
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.9)),
        ms(percentile(&delays, 0.99)),
        ms(*delays.last().unwrap())
    );
}

/// A real `#commit` frame of `account` (its DID to be rewritten).
fn captured_frame(account: &harness::Account) -> Vec<u8> {
    let url = format!("{}/xrpc/com.atproto.sync.subscribeRepos", env().pds.pds.replace("http://", "ws://"));
    let mut stream = WsSubscribe::new(TrustRoots::new(None)).subscribe(&url, Duration::from_secs(5)).unwrap();
    env().pds.put_manifest(account, &harness::sha256(b"scale-probe"), "probe", "application/vnd.oci.image.manifest.v1+json");
    loop {
        if let Some(Frame::Binary(bytes)) = stream.next(Duration::from_secs(15), atproto_sig_core::firehose::MAX_FRAME_BYTES).unwrap() {
            if let Ok(Event::Commit(e)) = decode_frame(&bytes, &Limits::default()) {
                if e.repo == account.did {
                    return bytes;
                }
            }
        }
    }
}

fn proc_figures(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    (rss, ticks as f64 / 100.0)
}

/// 10,000 watched DIDs; a fake relay streams frames as fast as `REVOCATION_RATE` says.
fn scale() {
    let rate: u64 = std::env::var("REVOCATION_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let env = env();
    let alice = env.pds.create_account("scale1");
    let frame = captured_frame(&alice);
    let did_at = frame.windows(alice.did.len()).position(|w| w == alice.did.as_bytes()).unwrap();
    let dids: Vec<String> = (0..10_000).map(|i| format!("did:plc:{i:024}")).collect();
    // A policy names at most 1,000 DIDs; the rest are watched because this node holds a
    // proof of theirs (entries written straight into the cache: never read as proofs here).
    let mut policy = String::from("version: 1.0\ntrustedDIDs:\n");
    for (i, did) in dids.iter().take(1000).enumerate() {
        policy.push_str(&format!("  {did}: {{ name: n{i} }}\n"));
    }
    policy.push_str("policies:\n  - name: signed\n    scope: \"**\"\n    require: { signature: true }\n    action: enforce\ndefault: { action: enforce, require: { signature: true } }\n");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let served = dids.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (frame, dids, counter) = (frame.clone(), served.clone(), counter.clone());
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(conn) else { return };
                let started = Instant::now();
                for n in 0u64.. {
                    let mut f = frame.clone();
                    // 1 in 10 for a watched DID, the rest for DIDs nobody here watches.
                    let did = if n % 10 == 0 { dids[(n as usize / 10) % dids.len()].clone() } else { format!("did:plc:x{:023}", n % 1_000_000) };
                    f[did_at..did_at + did.len()].copy_from_slice(did.as_bytes());
                    if ws.send(tungstenite::Message::binary(f)).is_err() {
                        return;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let due = started + Duration::from_secs_f64((n + 1) as f64 / rate as f64);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            });
        }
    });
    let config = format!("plc_directory = {:?}\nbudget = \"8s\"\nwatch_source = \"relay\"\nwatch_url = \"ws://127.0.0.1:{port}\"\n", env.pds.plc);
    let verifier = harness::Verifier::new(&config, &policy);
    let cache = Cache::new(&verifier.dir.path().join("cache"));
    for did in dids.iter().skip(1000) {
        let entry = ProofEntry {
            did: did.clone(),
            collection: "io.atcr.manifest".into(),
            rkey: "3kaaaaaaaaaa2".into(),
            fetched_at: 0,
            source: "bench".into(),
            car: String::new(),
        };
        cache.write(Kind::Proof, &[did, "io.atcr.manifest", "3kaaaaaaaaaa2"], &entry);
    }
    let log = verifier.dir.path().join("watch.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["watch", "--run-for", "40s"])
        .env("ATPROTO_VERIFIER_CONFIG", &verifier.config)
        .env("ATPROTO_VERIFIER_LOG", "warn")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(5));
    let (_, cpu0) = proc_figures(pid);
    let sent0 = sent.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(30));
    let (rss, cpu1) = proc_figures(pid);
    let sent1 = sent.load(std::sync::atomic::Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    let frames = sent1 - sent0;
    assert!(frames > 0, "the watcher did not follow the fake relay:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    println!(
        "scale      10,000 watched DIDs, {frames} frames in 30 s ({:.0}/s, 1 in 10 watched): CPU {:.1}% of one core, peak RSS {:.1} MiB",
        frames as f64 / 30.0,
        (cpu1 - cpu0) / 30.0 * 100.0,
        rss as f64 / 1024.0
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks parts.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| part.contains(o.as_str()));
    if wanted("pds") {
        report("pds", delays("benchpds", &|_| String::new()));
    }
    if wanted("relay") {
        let relay = streams::Relay::start();
        let url = relay.url.clone();
        report("relay", delays("benchrelay", &|_| format!("watch_source = \"relay\"\nwatch_url = \"{url}\"\n")));
        drop(relay);
    }
    if wanted("jetstream") {
        let jetstream = streams::Jetstream::start();
        let port = jetstream.port;
        report("jetstream", delays("benchjet", &|_| format!("watch_source = \"jetstream\"\nwatch_url = \"ws://127.0.0.1:{port}\"\n")));
    }
    if wanted("scale") {
        scale();
    }
}
