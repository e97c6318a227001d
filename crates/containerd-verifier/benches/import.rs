//! Importing a bundle's signed collection state: one signature check, then work linear in the
//! CAR (`cargo bench -p containerd-verifier --bench import`; figures in BENCHMARKS.md).

use atproto_sig_core::Limits;
use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, TestRepo, digest_of};
use base64::Engine;
use containerd_verifier::config::Config;
use containerd_verifier::material::store::Cache;
use containerd_verifier::testkit::{import_bundle, parse_bundle};
use criterion::{Criterion, criterion_group, criterion_main};

/// A bundle as `bundle create --did` makes it for a repository of `records` images, without the
/// per-record proofs: the DID document with its audit log and the collection state.
fn collection_bundle(records: usize) -> (Vec<u8>, i64) {
    let mut repo = TestRepo::new(Identity::new(Curve::K256, "bench-import"));
    for i in 0..records {
        repo.put_manifest(&digest_of(&format!("image-{i}")), "app");
    }
    let (car, _) = atproto_sig_core::collection::extract(&repo.export(), MANIFEST_COLLECTION, &Limits::repository()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&car);
    let identity = &repo.identity;
    let bundle = serde_json::json!({
        "format": "atproto-verifier-bundle", "version": 2, "createdAt": "2026-01-01T00:00:00Z",
        "dids": [{"did": identity.did, "fetchedAt": repo.now_micros, "source": "bench", "document": identity.did_document_multikey(), "auditLog": identity.audit_log()}],
        "locators": [], "proofs": [],
        "collections": [{"did": identity.did, "collection": MANIFEST_COLLECTION, "fetchedAt": repo.now_micros, "source": "bench", "car": b64}],
    });
    (serde_json::to_vec(&bundle).unwrap(), repo.now_micros + 60_000_000)
}

fn bench_import(c: &mut Criterion) {
    let (bytes, now) = collection_bundle(10_000);
    let config = Config::default();
    let mut group = c.benchmark_group("import");
    group.sample_size(10);
    group.bench_function("collection_state_10000_records", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let bundle = parse_bundle(&bytes).unwrap();
                let report = import_bundle(&bundle, &Cache::new(dir.path()), "bench", &config, now);
                assert!(report.refused.is_empty(), "{:?}", report.refused);
                dir
            },
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_import);
criterion_main!(benches);
