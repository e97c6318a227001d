//! The firehose as a real PDS serves it: `com.atproto.sync.subscribeRepos` of the reference
//! PDS (npm) on loopback, read through the watcher's WebSocket client (`remote::ws`). Each
//! `#commit` for a record written or deleted through the PDS must prove itself with the core's
//! inductive check (signature under the DID document's key, record state under the new root,
//! ops inverted to `prevData`), as sync 1.1 defines; a copy with one field changed must not;
//! and the deletion's frame yields an absence proof the verifier accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use atproto_sig_core::Limits;
use atproto_sig_core::commit_proof::{CommitProofError, prove_commit};
use atproto_sig_core::did::DidDocument;
use atproto_sig_core::firehose::{Action, CommitEvent, Frame as Event, decode_frame};
use containerd_verifier::remote::ureq::TrustRoots;
use containerd_verifier::remote::ws::WsSubscribe;
use containerd_verifier::remote::{Frame, Stream, Subscribe};
use harness::{env, http, sha256};

/// The next `#commit` of `did` touching `path` on `stream` (other events skipped: the
/// account's own first commits arrive too), within 15 s.
fn next_commit(stream: &mut Box<dyn Stream>, did: &str, path: &str) -> CommitEvent {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(15), "no #commit for {did} in 15 s");
        match stream.next(Duration::from_secs(15), atproto_sig_core::firehose::MAX_FRAME_BYTES).unwrap() {
            Some(Frame::Binary(bytes)) => {
                if let Ok(Event::Commit(event)) = decode_frame(&bytes, &Limits::default()) {
                    if event.repo == did && event.ops.iter().any(|op| op.path == path) {
                        return event;
                    }
                }
            }
            Some(Frame::Text(_)) => {}
            None => panic!("the PDS closed the stream"),
        }
    }
}

#[test]
fn commits_from_the_reference_pds_prove_themselves_and_a_deletion() {
    let env = env();
    let alice = env.pds.create_account("firehose1");
    let (status, _, document) = http("GET", &format!("{}/{}", env.pds.plc, alice.did), &[], None);
    assert_eq!(status, 200);
    let key = DidDocument::parse(&document, &alice.did, &Limits::default()).unwrap().signing_key.unwrap();
    let url = format!("{}/xrpc/com.atproto.sync.subscribeRepos", env.pds.pds.replace("http://", "ws://"));
    let mut stream = WsSubscribe::new(TrustRoots::new(None)).subscribe(&url, Duration::from_secs(5)).unwrap();
    let limits = Limits::repository();

    let digest = sha256(b"firehose-image");
    let rkey = env.pds.put_manifest(&alice, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
    let path = format!("io.atcr.manifest/{rkey}");
    let created = next_commit(&mut stream, &alice.did, &path);
    assert!(created.prev_data.is_some(), "the reference PDS sends sync 1.1 frames (prevData): {created:?}");
    let proven = prove_commit(&created, &key, &limits).unwrap_or_else(|e| panic!("the create does not prove itself: {e}"));
    let record = proven.records.iter().find(|(p, _)| *p == path).unwrap_or_else(|| panic!("no op for {path}: {:?}", created.ops));
    assert!(record.1.is_some());

    env.pds.delete_record(&alice, &rkey);
    let deleted = next_commit(&mut stream, &alice.did, &path);
    assert!(deleted.ops.iter().any(|op| op.action == Action::Delete && op.path == path), "{:?}", deleted.ops);
    let proven = prove_commit(&deleted, &key, &limits).unwrap_or_else(|e| panic!("the delete does not prove itself: {e}"));
    assert_eq!(proven.records.iter().find(|(p, _)| *p == path).map(|(_, cid)| *cid), Some(None), "the deletion is proven: absent under the signed root");
    assert_eq!(Some(proven.prev_data), deleted.prev_data);
    assert!(proven.rev > created.rev, "revs only grow");
    // The frame's own blocks make an absence proof that the verifier accepts as a deletion
    // (what the watcher stores: no rollback to the older proof of the record).
    let car = atproto_sig_core::commit_proof::record_proof(&deleted, &path, &limits).unwrap();
    let verdict = atproto_sig_core::verify::verify(&atproto_sig_core::verify::ProofInput {
        car: &car,
        key: atproto_sig_core::verify::KeySource::Key(&key),
        expect: atproto_sig_core::verify::Expectation { did: &alice.did, rkey: Some(&rkey), digest: Some(&digest), repository: None },
        now_micros: containerd_verifier::clock::now_micros(None).unwrap(),
        max_clock_skew_micros: atproto_sig_core::verify::DEFAULT_CLOCK_SKEW_MICROS,
        limits: &Limits::default(),
    });
    assert_eq!(verdict.reason, atproto_sig_core::Reason::RecordDeleted, "{}", verdict.message);

    // The same frame, forged: another key, or a prevData the ops do not invert to.
    let bob = env.pds.create_account("firehose2");
    let bob_document = http("GET", &format!("{}/{}", env.pds.plc, bob.did), &[], None).2;
    let bob_key = DidDocument::parse(&bob_document, &bob.did, &Limits::default()).unwrap().signing_key.unwrap();
    assert_eq!(prove_commit(&deleted, &bob_key, &limits), Err(CommitProofError::Signature));
    let forged = CommitEvent { prev_data: created.prev_data, ..deleted.clone() };
    assert!(matches!(prove_commit(&forged, &key, &limits), Err(CommitProofError::Inversion { .. })));
}

/// `watch` against the reference PDS: an image admitted with its proof cached for an hour;
/// its record deleted by its owner; the watcher, subscribed to the PDS, stores the absence
/// proof the `#commit` carries, and the next pull is blocked (`record-deleted`) long before
/// the proof's TTL.
#[test]
fn watch_revokes_a_deleted_record_before_its_ttl() {
    let env = env();
    let alice = env.pds.create_account("watch1");
    let r = &env.registry.host;
    let digest = env.registry.push_image("watch1.test/app", "v1", "watch1");
    let rkey = env.pds.put_manifest(&alice, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
    let config =
        format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{r:?}]\nbudget = \"8s\"\nproof_ttl = \"1h\"\n", env.pds.plc, env.pds.pds);
    let policy = harness::policy(
        &[(&alice.handle, &alice.did, None)],
        &format!("  - name: signed\n    scope: \"{r}/**\"\n    require: {{ signature: true }}\n    action: enforce\n"),
        "{ action: enforce, require: { signature: true } }",
    );
    let verifier = harness::Verifier::new(&config, &policy);
    let image = format!("{r}/watch1.test/app:v1");
    let pull = verifier.pull(&image, &digest);
    assert_eq!(pull.code, Some(0), "{}", pull.stdout);
    // A second node with the same cached proof and no watcher: the control.
    let control = harness::Verifier::new(&config, &policy);
    assert_eq!(control.pull(&image, &digest).code, Some(0));

    let log = verifier.dir.path().join("watch.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["watch", "--run-for", "60s"])
        .env("ATPROTO_VERIFIER_CONFIG", &verifier.config)
        .env("ATPROTO_VERIFIER_LOG", "debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _watch = harness::Guard(Some(child));
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("subscribed to") {
        assert!(started.elapsed() < Duration::from_secs(20), "watch did not subscribe: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still admitted from the cache (the TTL is an hour).
    assert_eq!(verifier.pull(&image, &digest).code, Some(0));

    env.pds.delete_record(&alice, &rkey);
    let deleted = Instant::now();
    let blocked = loop {
        let pull = verifier.pull(&image, &digest);
        if pull.code == Some(1) {
            break pull;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "still admitted 10 s after the deletion: {}\n{}",
            pull.stdout,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(blocked.stdout.starts_with("record-deleted"), "{}", blocked.stdout);
    // Without the watcher, the deleted image is still admitted from the cached proof (its TTL).
    let still = control.pull(&image, &digest);
    assert_eq!(still.code, Some(0), "the control node was not expected to know yet: {}", still.stdout);
    // The watcher logs after the cache write the pull read: wait for the line.
    let text = harness::wait_for_log(&log, "proven by the #commit itself", Duration::from_secs(5));
    assert!(text.contains("revoked (the record is deleted)") && text.contains("proven by the #commit itself"), "{text}");
    eprintln!("blocked {:?} after the deletion", deleted.elapsed());
}
