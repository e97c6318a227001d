//! The fleet on the registry (BENCHMARKS.md, issue #28), on loopback: the reference PDS + PLC,
//! Debian's docker-registry, and a docker-registry pull-through mirror in front of it that
//! every node reaches the registry through (hosts.toml). `FLEET_NODES` (1,000) node caches,
//! each a separate process:
//!
//! 1. without a publisher: `FLEET_BASELINE` (100) nodes pull one freshly pushed image; the
//!    identity requests (PLC, PDS, handle) each makes;
//! 2. with a publisher: `bundle push` once (its identity requests), then every node runs
//!    `cache refresh` (through the mirror) and pulls the image: identity requests in total,
//!    registry requests per refresh, then per poll when nothing changed;
//! 3. revocation: `FLEET_WATCHERS` (1,000) nodes run `watch` with `watch_source = "registry"`
//!    (poll `FLEET_POLL`, 5 s); the publisher runs `watch --publish`; the record is deleted:
//!    the time until the last node has imported the revocation, and pulls on a sample of nodes.
//!
//! Run: `cargo bench -p containerd-verifier --bench fleet` (needs what `scripts/test` installs:
//! node for the PDS, docker-registry).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../../../tests/integration/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::{Verifier, env};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const BIN: &str = env!("CARGO_BIN_EXE_atproto-verifier");

/// A docker-registry pull-through cache of `upstream` (its own storage); returns its host.
fn mirror(upstream: &str, dir: &Path) -> (String, harness::Guard) {
    let port = harness::free_port();
    let config = dir.join("mirror.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nproxy:\n  remoteurl: http://{upstream}\n",
            dir.join("mirror-data").display()
        ),
    )
    .unwrap();
    let guard = harness::spawn_tied(Path::new("/usr/bin/docker-registry"), &["serve".into(), config.display().to_string()], &[], &dir.join("mirror.log"));
    let host = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(&host).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "the mirror did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (host, guard)
}

/// Runs `jobs` in `threads` threads; returns their results in order.
fn parallel<T: Send>(n: usize, threads: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<(usize, T)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            return mine;
                        }
                        mine.push((i, job(i)));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, t)| t).collect()
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What `log` gained past `offset` (which moves to its end; a line cut at the end is read again).
fn appended(log: &Path, offset: &mut u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else { return String::new() };
    let mut text = String::new();
    if file.seek(SeekFrom::Start(*offset)).is_err() || file.read_to_string(&mut text).is_err() {
        return String::new();
    }
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    *offset += whole as u64;
    text.truncate(whole);
    text
}

/// The number before `what` in `text` ("… 1 registry requests" → 1).
fn number_before(text: &str, what: &str) -> Option<usize> {
    let at = text.find(what)?;
    text[..at].split_whitespace().last()?.parse().ok()
}

fn main() {
    let (n, baseline, watchers, poll) =
        (setting("FLEET_NODES", 1000), setting("FLEET_BASELINE", 100), setting("FLEET_WATCHERS", 1000), setting("FLEET_POLL", 5));
    let env = env();
    let work = tempfile::tempdir().unwrap();
    let (mirror_host, _mirror) = mirror(&env.registry.host, work.path());
    let hosts = work.path().join("certs.d");
    std::fs::create_dir_all(hosts.join(&env.registry.host)).unwrap();
    // FLEET_MIRROR: `pull` (the default, as README recommends): the mirror serves manifests by
    // digest and blobs, the index (a tag) is resolved at the registry; `resolve`: the mirror
    // resolves tags too; `0`: the nodes reach the registry itself.
    let mirror_mode = std::env::var("FLEET_MIRROR").unwrap_or_else(|_| "pull".into());
    let capabilities = match mirror_mode.as_str() {
        "0" => None,
        "resolve" => Some("[\"pull\", \"resolve\"]"),
        _ => Some("[\"pull\"]"),
    };
    println!("nodes reach the registry {}", capabilities.map_or("directly".to_owned(), |c| format!("through the pull-through mirror (capabilities = {c})")));
    std::fs::write(
        hosts.join(&env.registry.host).join("hosts.toml"),
        match capabilities {
            Some(c) => format!("server = \"http://{}\"\n[host.\"http://{mirror_host}\"]\ncapabilities = {c}\n", env.registry.host),
            None => format!("server = \"http://{}\"\n", env.registry.host),
        },
    )
    .unwrap();
    let account = env.pds.create_account("fleetbench");
    let repository = "fleetbench.test/app";
    let digest = env.registry.push_image(repository, "v1", "fleetbench");
    let rkey = env.pds.put_manifest(&account, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
    let image = format!("{}/{repository}:v1", env.registry.host);
    let policy = harness::policy(
        &[(account.handle.as_str(), account.did.as_str(), None)],
        &format!("  - name: signed\n    scope: \"{}/**\"\n    require: {{ signature: true }}\n", env.registry.host),
        "{ action: enforce, require: { signature: true } }",
    );
    let online = format!(
        "plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\ncontainerd_hosts_dir = {:?}\n",
        env.pds.plc, env.pds.pds, env.registry.host, hosts
    );

    // 1. Without a publisher.
    let requests: Vec<u64> = parallel(baseline, 4, |_| {
        let node = Verifier::new(&online, &policy);
        let pull = node.pull(&image, &digest);
        assert_eq!(pull.code, Some(0), "{}{}", pull.stdout, pull.stderr);
        node.audit().last().unwrap()["requests"].as_u64().unwrap()
    });
    let total: u64 = requests.iter().sum();
    println!("without a publisher: {baseline} nodes pulling one new image made {total} identity requests ({:.2} per node)", total as f64 / baseline as f64);

    // 2. With a publisher.
    let publisher = Verifier::new(&online, &policy);
    let key = publisher.dir.path().join("publisher.key");
    let out = publisher.command(&["bundle", "keygen", "-o", key.to_str().unwrap()]);
    let did_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let source = format!("oci://{}/fleet/bundles", env.registry.host);
    let out = publisher.command(&["bundle", "push", "--key", key.to_str().unwrap(), "--did", &account.did, &source]);
    assert!(out.status.success(), "{}", text(&out));
    let published = number_before(&text(&out), "identity requests)").unwrap();
    println!("publisher: bundle push made {published} identity requests");
    let node_config =
        format!("{online}bundle_source = {source:?}\nbundle_signers = [{did_key:?}]\nwatch_source = \"registry\"\nwatch_poll_interval = \"{poll}s\"\n");
    let started = Instant::now();
    let nodes: Vec<(Verifier, u64, usize, usize)> = parallel(n, 4, |_| {
        let node = Verifier::new(&node_config, &policy);
        let refresh = node.command(&["cache", "refresh"]);
        assert!(refresh.status.success(), "{}", text(&refresh));
        let registry = number_before(&text(&refresh), "registry requests").unwrap();
        let pull = node.pull(&image, &digest);
        assert_eq!(pull.code, Some(0), "{}{}", pull.stdout, pull.stderr);
        let identity = node.audit().last().unwrap()["requests"].as_u64().unwrap();
        let again = node.command(&["cache", "refresh"]);
        let unchanged = number_before(&text(&again), "registry requests").unwrap();
        (node, identity, registry, unchanged)
    });
    let identity: u64 = nodes.iter().map(|(_, i, _, _)| i).sum();
    let registry: usize = nodes.iter().map(|(_, _, r, _)| r).sum();
    let unchanged_max = nodes.iter().map(|(_, _, _, u)| *u).max().unwrap_or(0);
    println!(
        "with a publisher: {n} nodes (refresh through the mirror, then pull) made {identity} identity requests; with the publisher's, {} in total ({:.1} s for all)",
        identity + published as u64,
        started.elapsed().as_secs_f64()
    );
    println!(
        "registry requests per node: {:.2} per refresh that imports, at most {unchanged_max} per refresh (poll) when nothing changed",
        registry as f64 / n as f64
    );

    // 3. Revocation across `watchers` nodes polling the registry.
    let logs: Vec<PathBuf> = nodes.iter().take(watchers).map(|(node, _, _, _)| node.dir.path().join("watch.log")).collect();
    let guards: Vec<harness::Guard> = nodes
        .iter()
        .take(watchers)
        .zip(&logs)
        .map(|((node, _, _, _), log)| {
            // Each node is a machine of its own in a fleet: here they share 2 cores with the
            // registry, the mirror, the PDS and the publisher, so they run at the lowest
            // priority (FLEET_NICE=0 to not) and the shared services are not starved by them.
            let nice = std::env::var("FLEET_NICE").unwrap_or_else(|_| "19".into());
            let args: Vec<String> = ["-n", nice.as_str(), BIN, "watch", "--run-for", "600s"].iter().map(|a| (*a).to_owned()).collect();
            harness::spawn_tied(Path::new("/usr/bin/nice"), &args, &[("ATPROTO_VERIFIER_CONFIG", node.config.display().to_string())], log)
        })
        .collect();
    let publisher_log = publisher.dir.path().join("publisher.log");
    let _publishing = harness::spawn_tied(
        Path::new(BIN),
        &["watch".into(), "--run-for".into(), "600s".into(), "--publish".into(), source.clone(), "--key".into(), key.display().to_string()],
        &[("ATPROTO_VERIFIER_CONFIG", publisher.config.display().to_string()), ("ATPROTO_VERIFIER_LOG", "debug".into())],
        &publisher_log,
    );
    let t = harness::wait_for_log(&publisher_log, "subscribed to", Duration::from_secs(60));
    assert!(t.contains("subscribed to"), "{t}");
    // Every watcher has polled at least once (its first read is logged).
    std::thread::sleep(Duration::from_secs(poll as u64 * 2 + 2));
    let published_before = std::fs::read_to_string(&publisher_log).unwrap_or_default().matches("watch: published").count();
    println!("every watcher has polled: deleting the record");
    let deleted = Instant::now();
    env.pds.delete_record(&account, &rkey);
    let mut done = vec![None; logs.len()];
    // Each scan reads only what a log gained since the last (the scan shares the 2 cores).
    let mut offsets: Vec<u64> = logs.iter().map(|l| std::fs::metadata(l).map_or(0, |m| m.len())).collect();
    let mut republished = None;
    while done.iter().any(Option::is_none) {
        if republished.is_none() && std::fs::read_to_string(&publisher_log).unwrap_or_default().matches("watch: published").count() > published_before {
            republished = Some(deleted.elapsed());
        }
        assert!(deleted.elapsed() < Duration::from_secs(300), "{} of {} nodes revoked after 300 s", done.iter().filter(|d| d.is_some()).count(), logs.len());
        for (i, log) in logs.iter().enumerate() {
            if done[i].is_none() && appended(log, &mut offsets[i]).contains("revoked (from the fleet's registry)") {
                done[i] = Some(deleted.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut times: Vec<Duration> = done.into_iter().flatten().collect();
    times.sort();
    let (first, median, last) = (times[0], times[times.len() / 2], times[times.len() - 1]);
    println!(
        "deleteRecord -> revoked on {} nodes polling every {poll} s: first {first:.2?}, median {median:.2?}, last {last:.2?} (log scan every 250 ms)",
        times.len()
    );
    println!("deleteRecord -> the publisher's new publication pushed: {republished:.2?}");
    let log = std::fs::read_to_string(&publisher_log).unwrap_or_default();
    if let Some(line) = log.lines().filter(|l| l.contains("watch: published")).nth(published_before) {
        println!("the publication of the change: {}", line.split("watch: ").last().unwrap_or(line));
    }
    for (node, _, _, _) in nodes.iter().take(watchers).step_by((watchers / 10).max(1)) {
        assert_eq!(node.pull(&image, &digest).code, Some(1), "a revoked node still admits");
    }
    println!("pulls on a sample of 10 revoked nodes: blocked");
    drop(guards);
}
