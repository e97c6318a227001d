//! A signed collection state at 10,000, 100,000 and 1,000,000 records: bundle size, import
//! time and peak memory of `atproto-verifier bundle import` (a child process, its `VmHWM`), and
//! the cost of checking one held proof against the stored state on use (one shard read).
//! `cargo bench -p containerd-verifier --bench state_scale [-- SIZES]`; figures in BENCHMARKS.md.

use std::io::Write as _;
use std::time::{Duration, Instant};

use atproto_sig_core::Limits;
use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, TestRepo, digest_of};
use base64::Engine;
use containerd_verifier::material::knowledge;
use containerd_verifier::material::store::Cache;

/// A `bundle create --did`-shaped bundle of a repository of `records` images, one of them (the
/// first) deleted: the DID document with its audit log and the collection state.
fn bundle(records: usize) -> (Vec<u8>, String, String, i64) {
    let mut repo = TestRepo::new(Identity::new(Curve::K256, "bench-scale"));
    let mut first = String::new();
    for i in 0..records {
        let rkey = repo.put_manifest(&digest_of(&format!("image-{i}")), "app");
        if i == 0 {
            first = rkey;
        }
    }
    let last = repo.put_manifest(&digest_of("last"), "app");
    repo.delete(MANIFEST_COLLECTION, &first);
    let (car, _) = atproto_sig_core::collection::extract(&repo.export(), MANIFEST_COLLECTION, &Limits::repository()).unwrap();
    let identity = &repo.identity;
    let bundle = serde_json::json!({
        "format": "atproto-verifier-bundle", "version": 2, "createdAt": "2026-01-01T00:00:00Z",
        "dids": [{"did": identity.did, "fetchedAt": repo.now_micros, "source": "bench", "document": identity.did_document_multikey(), "auditLog": identity.audit_log()}],
        "locators": [], "proofs": [],
        "collections": [{"did": identity.did, "collection": MANIFEST_COLLECTION, "fetchedAt": repo.now_micros, "source": "bench",
                          "car": base64::engine::general_purpose::STANDARD.encode(&car)}],
    });
    (serde_json::to_vec(&bundle).unwrap(), identity.did.clone(), format!("{first}|{last}"), repo.now_micros)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000, 1_000_000] } else { sizes };
    println!("| records | bundle | import (wall) | peak RSS | check one record on use |");
    println!("|---|---|---|---|---|");
    for records in sizes {
        let started = Instant::now();
        let (bytes, did, keys, _) = bundle(records);
        let made = started.elapsed();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scale.bundle");
        std::fs::File::create(&file).unwrap().write_all(&bytes).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, format!("offline = true\ncache_dir = {:?}\npolicy = {:?}\n", dir.path().join("cache"), dir.path().join("policy.yaml")))
            .unwrap();
        let started = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["bundle", "import", "--config", config.to_str().unwrap(), file.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut peak = 0;
        while child.try_wait().unwrap().is_none() {
            peak = peak.max(vm_hwm_kib(child.id()).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("refused 0"), "{text}");
        // On use: one held proof's record checked against the stored state (a shard read).
        let cache = Cache::new(&dir.path().join("cache"));
        let (first, last) = keys.split_once('|').unwrap();
        let state = knowledge::repo_of(&cache, &did).state.unwrap();
        let rounds = 1000;
        let started = Instant::now();
        for _ in 0..rounds {
            assert!(knowledge::superseded(&cache, &did, first, "2aaaaaaaaaaaa", Some("bafy")).is_some_and(|s| s.gone()));
        }
        let check = started.elapsed() / rounds;
        assert!(knowledge::superseded(&cache, &did, last, &state.rev, None).is_none());
        eprintln!("{records} records: bundle made in {made:?}, {} shards", state.shards);
        println!(
            "| {records} | {:.1} MiB | {:.2} s | {:.0} MiB | {:.0} µs |",
            bytes.len() as f64 / (1 << 20) as f64,
            took.as_secs_f64(),
            peak as f64 / 1024.0,
            check.as_secs_f64() * 1e6
        );
    }
}
