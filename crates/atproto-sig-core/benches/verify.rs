//! `verify` on realistic proofs: the real getRecord proof written by the reference PDS
//! (300 other records in the repo, K-256), and generated proofs from a 1,000-record repository
//! on each curve. Also the DID-document parse that precedes every verification, and the
//! refusal of a 1 MB hostile did:plc audit log.

use std::path::PathBuf;

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::did::DidDocument;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::syntax::parse_datetime_micros;
use atproto_sig_core::testkit::{Identity, T0_MICROS, TestRepo, digest_of};
use atproto_sig_core::verify::DEFAULT_CLOCK_SKEW_MICROS;
use atproto_sig_core::{Expectation, KeySource, Limits, ProofInput, verify};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pds").join(name)).unwrap()
}

fn bench_real(c: &mut Criterion) {
    let meta: serde_json::Value = serde_json::from_slice(&fixture("meta.json")).unwrap();
    let did = meta["did"].as_str().unwrap().to_owned();
    let digest = meta["digest"].as_str().unwrap().to_owned();
    let car = fixture("manifest-hex-rkey.car");
    let doc_bytes = fixture("did-multikey.json");
    let now = parse_datetime_micros(meta["generatedAt"].as_str().unwrap()).unwrap();
    let limits = Limits::default();
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("real_pds_proof_k256", |b| {
        b.iter(|| {
            let doc = DidDocument::parse(&doc_bytes, &did, &limits).unwrap();
            let verdict = verify(&ProofInput {
                car: &car,
                key: KeySource::Document(&doc),
                expect: Expectation { did: &did, rkey: None, digest: Some(&digest), repository: Some("myapp") },
                now_micros: now,
                max_clock_skew_micros: DEFAULT_CLOCK_SKEW_MICROS,
                limits: &limits,
            });
            assert!(verdict.is_verified());
        })
    });
    for curve in [Curve::K256, Curve::P256] {
        let mut repo = TestRepo::new(Identity::new(curve, "bench"));
        repo.put_filler(1000);
        let digest = digest_of("bench");
        let rkey = repo.put_manifest(&digest, "app");
        let car = repo.proof(MANIFEST_COLLECTION, &rkey);
        let key = repo.identity.public_key();
        let did = repo.identity.did.clone();
        group.bench_function(format!("generated_1000_records_{curve:?}").to_lowercase(), |b| {
            b.iter(|| {
                let verdict = verify(&ProofInput {
                    car: &car,
                    key: KeySource::Key(&key),
                    expect: Expectation { did: &did, rkey: None, digest: Some(&digest), repository: Some("app") },
                    now_micros: T0_MICROS,
                    max_clock_skew_micros: DEFAULT_CLOCK_SKEW_MICROS,
                    limits: &limits,
                });
                assert!(verdict.is_verified());
            })
        });
    }
    group.finish();
}

/// A 1 MB hostile did:plc audit log (thousands of rotation keys, garbage signatures): refused
/// by the did:plc limits before any signature is checked.
fn bench_hostile_plc_log(c: &mut Criterion) {
    let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
    let log = atproto_sig_core::testkit::hostile_plc_log(did, 1 << 20);
    let limits = Limits::default();
    let mut group = c.benchmark_group("plc");
    group.throughput(Throughput::Bytes(log.len() as u64));
    group.bench_function("hostile_1mb_audit_log_refused", |b| {
        b.iter(|| assert!(atproto_sig_core::plc::verify_audit_log(did, log.as_bytes(), &limits).is_err()))
    });
    group.finish();
}

/// Why binary CIDs keep the hand-written blessed-form reader: every CID of every block and link
/// goes through it. Compared with the `cid` crate's general reader (then our blessed check).
fn bench_cid_binary(c: &mut Criterion) {
    let bytes = atproto_sig_core::cid::Cid::for_dag_cbor(b"bench").to_bytes();
    let mut group = c.benchmark_group("cid");
    group.bench_function("blessed_read_prefix", |b| b.iter(|| atproto_sig_core::cid::Cid::read_prefix(std::hint::black_box(&bytes)).is_ok()));
    group.bench_function("cid_crate_read_bytes", |b| {
        b.iter(|| {
            cid::Cid::read_bytes(std::hint::black_box(&bytes[..])).ok().and_then(|c| atproto_sig_core::cid::Cid::from_bytes(&c.to_bytes()).ok()).is_some()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_real, bench_hostile_plc_log, bench_cid_binary);
criterion_main!(benches);
