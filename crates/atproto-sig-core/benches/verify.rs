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
use atproto_sig_core::{Expectation, KeySource, KnownBlocks, Limits, ParsedKeys, ProofInput, verify};
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
                known_blocks: None,
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
                    known_blocks: None,
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

/// One proof case for the side-by-side measurement.
struct Case {
    name: &'static str,
    car: Vec<u8>,
    doc: Vec<u8>,
    did: String,
    digest: String,
    repository: &'static str,
    now: i64,
}

fn real_case() -> Case {
    let meta: serde_json::Value = serde_json::from_slice(&fixture("meta.json")).unwrap();
    Case {
        name: "reference PDS proof (K-256)",
        car: fixture("manifest-hex-rkey.car"),
        doc: fixture("did-multikey.json"),
        did: meta["did"].as_str().unwrap().to_owned(),
        digest: meta["digest"].as_str().unwrap().to_owned(),
        repository: "myapp",
        now: parse_datetime_micros(meta["generatedAt"].as_str().unwrap()).unwrap(),
    }
}

fn dense_case(curve: Curve, name: &'static str) -> Case {
    let mut repo = TestRepo::new(Identity::new(curve, "bench-dense"));
    repo.put_filler(10_000);
    let digest = digest_of("bench-dense");
    let rkey = repo.put_manifest(&digest, "app");
    Case {
        name,
        car: repo.proof(MANIFEST_COLLECTION, &rkey),
        doc: repo.identity.did_document_multikey().into_bytes(),
        did: repo.identity.did.clone(),
        digest,
        repository: "app",
        now: T0_MICROS,
    }
}

/// True when the command line names no filter, or a filter that `name` contains: the printed
/// tables run outside criterion, so they honour its filter argument themselves.
fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// Nanoseconds per call of `f` over `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let started = std::time::Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

/// The whole check (DID-document parse and `verify`), the check with the key already parsed,
/// and a bare `verify_prehash` of the same commit's signature, measured side by side: 15
/// rounds of 10,000 calls of each, the order rotated every round; the medians of the times and
/// of the per-round ratios are printed. The check with a parsed key is measured without and
/// with the process's known blocks; the whole check as a process that checks many proofs runs
/// it (the signer's key and document in the parsed-key memo, the proof's blocks known after its
/// first check: what `serve`, `watch` and the node watcher do for every re-check of a cached
/// proof) and as a one-shot process does (no memo: the point decoded, every block hashed and
/// decoded). The signature is verified in every variant. Printed as a table with the ratios to
/// the bare verify (issue #31's measure; BENCHMARKS.md).
fn bench_ratios(_: &mut Criterion) {
    const ROUNDS: usize = 15;
    const CALLS: u32 = 10_000;
    if !selected("ratios") {
        return;
    }
    use sha2::Digest as _;
    let limits = Limits::default();
    println!(
        "\n| case | bare verify_prehash | check, key parsed | check, key parsed, known blocks | whole check, memos | whole check, no memo | ratios (parsed / parsed + known / memos / no memo) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in
        [real_case(), dense_case(Curve::K256, "dense 10,000-record repository (K-256)"), dense_case(Curve::P256, "dense 10,000-record repository (P-256)")]
    {
        let doc = DidDocument::parse(&case.doc, &case.did, &limits).unwrap();
        let key = doc.signing_key.clone().unwrap();
        let car = atproto_sig_core::car::Car::parse(&case.car, &limits).unwrap();
        let commit = atproto_sig_core::commit::Commit::of_car(&car, &limits).unwrap();
        let prehash = sha2::Sha256::digest(commit.unsigned_bytes());
        let keys = ParsedKeys::default();
        let nodes = KnownBlocks::default();
        let expect = || Expectation { did: &case.did, rkey: None, digest: Some(&case.digest), repository: Some(case.repository) };
        let check = |key: KeySource<'_>, known_blocks: Option<&KnownBlocks>| {
            let verdict = verify(&ProofInput {
                car: &case.car,
                key,
                expect: expect(),
                now_micros: case.now,
                max_clock_skew_micros: DEFAULT_CLOCK_SKEW_MICROS,
                limits: &limits,
                known_blocks,
            });
            assert!(verdict.is_verified(), "{:?}", verdict.reason);
        };
        let bare = || {
            key.verify_prehash(std::hint::black_box(&prehash), std::hint::black_box(&commit.sig)).unwrap();
        };
        let parsed = || check(KeySource::Key(&key), None);
        let parsed_nodes = || check(KeySource::Key(&key), Some(&nodes));
        let memos = || {
            let doc = DidDocument::parse_with_keys(std::hint::black_box(&case.doc), &case.did, &limits, &keys).unwrap();
            check(KeySource::Document(&doc), Some(&nodes));
        };
        let cold = || {
            let doc = DidDocument::parse(std::hint::black_box(&case.doc), &case.did, &limits).unwrap();
            check(KeySource::Document(&doc), None);
        };
        // Each round runs every variant once (order rotated) and gives each variant's ratio to
        // the bare verify of that same round, so a slow stretch of the host (a neighbour on
        // this VM) weighs on both sides of a ratio; the medians over the rounds are printed.
        let mut times: [Vec<f64>; 5] = Default::default();
        let mut ratios: [Vec<f64>; 5] = Default::default();
        for round in 0..ROUNDS {
            let mut this_round = [0.0; 5];
            for i in 0..5 {
                let which = (round + i) % 5;
                this_round[which] = match which {
                    0 => per_call(CALLS, bare),
                    1 => per_call(CALLS, parsed),
                    2 => per_call(CALLS, parsed_nodes),
                    3 => per_call(CALLS, memos),
                    _ => per_call(CALLS, cold),
                };
            }
            for which in 0..5 {
                times[which].push(this_round[which]);
                ratios[which].push(this_round[which] / this_round[0]);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [b, p, n, m, c] = times.each_mut().map(median);
        let [_, rp, rn, rm, rc] = ratios.each_mut().map(median);
        println!(
            "| {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.3}x / {:.3}x / {:.3}x / {:.3}x |",
            case.name,
            b / 1e3,
            p / 1e3,
            n / 1e3,
            m / 1e3,
            c / 1e3,
            rp,
            rn,
            rm,
            rc
        );
    }
    println!();
}

/// Where the time outside the signature goes: each step of the check on its own, for every
/// case (median of 7 rounds of 20,000 calls). Printed as a table (BENCHMARKS.md, #31).
fn bench_steps(_: &mut Criterion) {
    if !selected("steps") {
        return;
    }
    use atproto_sig_core::car::Car;
    use atproto_sig_core::commit::Commit;
    use atproto_sig_core::record::ManifestRecord;
    use sha2::Digest as _;
    let limits = Limits::default();
    println!(
        "\n| case | CAR parse | commit decode | signed bytes + SHA-256 | MST walk | record decode | DID document parse, key memo | DID document parse, no memo | bare verify_prehash |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for case in
        [real_case(), dense_case(Curve::K256, "dense 10,000-record repository (K-256)"), dense_case(Curve::P256, "dense 10,000-record repository (P-256)")]
    {
        let doc = DidDocument::parse(&case.doc, &case.did, &limits).unwrap();
        let key = doc.signing_key.clone().unwrap();
        let car = Car::parse(&case.car, &limits).unwrap();
        let commit = Commit::of_car(&car, &limits).unwrap();
        let prehash = sha2::Sha256::digest(commit.unsigned_bytes());
        let rkey = case.digest.strip_prefix("sha256:").unwrap();
        let path = format!("{MANIFEST_COLLECTION}/{rkey}");
        let record_cid = match atproto_sig_core::mst::walk(|c| car.block(c), commit.data, path.as_bytes(), &limits).unwrap().lookup {
            atproto_sig_core::mst::Lookup::Present(cid) => cid,
            atproto_sig_core::mst::Lookup::Absent => panic!("the bench record is absent"),
        };
        let record = car.block(&record_cid).unwrap();
        let keys = ParsedKeys::default();
        let median = |f: &mut dyn FnMut()| {
            let mut times: Vec<f64> = (0..7).map(|_| per_call(20_000, &mut *f)).collect();
            times.sort_by(f64::total_cmp);
            times[3] / 1e3
        };
        let steps = [
            median(&mut || drop(std::hint::black_box(Car::parse(std::hint::black_box(&case.car), &limits).unwrap()))),
            median(&mut || drop(std::hint::black_box(Commit::of_car(&car, &limits).unwrap()))),
            median(&mut || {
                std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(&commit).unsigned_bytes()));
            }),
            median(&mut || drop(std::hint::black_box(atproto_sig_core::mst::walk(|c| car.block(c), commit.data, path.as_bytes(), &limits).unwrap()))),
            median(&mut || drop(std::hint::black_box(ManifestRecord::decode(std::hint::black_box(record), &limits).unwrap()))),
            median(&mut || drop(std::hint::black_box(DidDocument::parse_with_keys(std::hint::black_box(&case.doc), &case.did, &limits, &keys).unwrap()))),
            median(&mut || drop(std::hint::black_box(DidDocument::parse(std::hint::black_box(&case.doc), &case.did, &limits).unwrap()))),
            median(&mut || key.verify_prehash(std::hint::black_box(&prehash), std::hint::black_box(&commit.sig)).unwrap()),
        ];
        let cells: Vec<String> = steps.iter().map(|t| format!("{t:.2} µs")).collect();
        println!("| {} | {} |", case.name, cells.join(" | "));
    }
    println!();
}

criterion_group!(benches, bench_real, bench_hostile_plc_log, bench_cid_binary, bench_ratios, bench_steps);
criterion_main!(benches);
