//! The firehose as a real PDS serves it: `com.atproto.sync.subscribeRepos` of the reference
//! PDS (npm) on loopback, read through the watcher's WebSocket client (`remote::ws`). Each
//! `#commit` for a record written or deleted through the PDS must prove itself with the core's
//! inductive check (signature under the DID document's key, record state under the new root,
//! ops inverted to `prevData`), as sync 1.1 defines; a copy with one field changed must not;
//! and the deletion's frame yields an absence proof the verifier accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "harness.rs"]
mod harness;
#[path = "../support/pki.rs"]
mod pki;
#[path = "streams.rs"]
mod streams;

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
        known_blocks: None,
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

/// One signer, one image admitted with its proof cached for an hour, and a node to watch.
struct Scenario {
    alice: harness::Account,
    digest: String,
    rkey: String,
    image: String,
    verifier: harness::Verifier,
    config: String,
    policy: String,
}

impl Scenario {
    /// `extra`: config lines (the watch source).
    fn new(name: &str, extra: &str) -> Scenario {
        let env = env();
        let alice = env.pds.create_account(name);
        let r = &env.registry.host;
        let digest = env.registry.push_image(&format!("{name}.test/app"), "v1", name);
        let rkey = env.pds.put_manifest(&alice, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
        let config = format!(
            "plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{r:?}]\nbudget = \"8s\"\nproof_ttl = \"1h\"\n{extra}",
            env.pds.plc, env.pds.pds
        );
        let policy = harness::policy(
            &[(&alice.handle, &alice.did, None)],
            &format!("  - name: signed\n    scope: \"{r}/**\"\n    require: {{ signature: true }}\n    action: enforce\n"),
            "{ action: enforce, require: { signature: true } }",
        );
        let verifier = harness::Verifier::new(&config, &policy);
        let image = format!("{r}/{name}.test/app:v1");
        let pull = verifier.pull(&image, &digest);
        assert_eq!(pull.code, Some(0), "{}", pull.stdout);
        Scenario { alice, digest, rkey, image, verifier, config, policy }
    }

    /// Another node with the same config and its own cache, admitted once.
    fn control(&self) -> harness::Verifier {
        let control = harness::Verifier::new(&self.config, &self.policy);
        assert_eq!(control.pull(&self.image, &self.digest).code, Some(0));
        control
    }

    /// Starts `watch` on this node; returns once it has subscribed.
    fn watch(&self, log_name: &str) -> (harness::Guard, std::path::PathBuf) {
        let log = self.verifier.dir.path().join(log_name);
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["watch", "--run-for", "120s"])
            .env("ATPROTO_VERIFIER_CONFIG", &self.verifier.config)
            .env("ATPROTO_VERIFIER_LOG", "debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let guard = harness::Guard(Some(child));
        let text = harness::wait_for_log(&log, "subscribed to", Duration::from_secs(20));
        assert!(text.contains("subscribed to"), "watch did not subscribe: {text}");
        // A new watcher first re-checks what it did not follow before: let that finish, so
        // what a test does next is seen through the stream.
        if harness::wait_for_log(&log, "re-check (not-followed-before", Duration::from_secs(3)).contains("re-check (not-followed-before") {
            std::thread::sleep(Duration::from_millis(700));
        }
        (guard, log)
    }

    /// Pulls until blocked (at most `within`); returns how long after `since` it was.
    fn blocked_within(&self, since: Instant, within: Duration, log: &std::path::Path) -> Duration {
        loop {
            let pull = self.verifier.pull(&self.image, &self.digest);
            if pull.code == Some(1) {
                assert!(pull.stdout.starts_with("record-deleted"), "{}", pull.stdout);
                return since.elapsed();
            }
            assert!(
                since.elapsed() < within,
                "still admitted {within:?} after the deletion: {}\n{}",
                pull.stdout,
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `watch` against the reference PDS: its record deleted by its owner; the watcher, subscribed
/// to the PDS, stores the absence proof the `#commit` carries, and the next pull is blocked
/// (`record-deleted`) long before the proof's TTL, while a node without the watcher still
/// admits from its cached proof.
#[test]
fn watch_revokes_a_deleted_record_before_its_ttl() {
    let s = Scenario::new("watch1", "");
    let control = s.control();
    let (_watch, log) = s.watch("watch.log");
    assert_eq!(s.verifier.pull(&s.image, &s.digest).code, Some(0), "still admitted from the cache (the TTL is an hour)");
    env().pds.delete_record(&s.alice, &s.rkey);
    let after = s.blocked_within(Instant::now(), Duration::from_secs(10), &log);
    let still = control.pull(&s.image, &s.digest);
    assert_eq!(still.code, Some(0), "the control node was not expected to know yet: {}", still.stdout);
    // The watcher logs after the cache write the pull read: wait for the line.
    let text = harness::wait_for_log(&log, "proven by the #commit itself", Duration::from_secs(5));
    assert!(text.contains("revoked (the record is deleted)") && text.contains("proven by the #commit itself"), "{text}");
    eprintln!("blocked {after:?} after the deletion");
}

/// A deletion while `watch` is stopped: on restart it resumes from its stored cursor, the PDS
/// replays the deletion's `#commit`, and the image is blocked.
#[test]
fn a_deletion_while_watch_is_stopped_is_caught_from_its_cursor() {
    let s = Scenario::new("watch2", "");
    let (mut watch, log) = s.watch("watch-a.log");
    // An event of the watched DID, so the watcher holds a position, and time to store it.
    let digest2 = sha256(b"watch2-other");
    env().pds.put_manifest(&s.alice, &digest2, "other", "application/vnd.oci.image.manifest.v1+json");
    let cursors = s.verifier.dir.path().join("cache/v1/cursor");
    let started = Instant::now();
    while std::fs::read_dir(&cursors).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(15), "no cursor stored: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    watch.stop();
    env().pds.delete_record(&s.alice, &s.rkey);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.verifier.pull(&s.image, &s.digest).code, Some(0), "nothing watched: still admitted from the cached proof");
    let (_watch, log) = s.watch("watch-b.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("resuming after seq"), "{text}");
    s.blocked_within(Instant::now(), Duration::from_secs(10), &log);
    let text = harness::wait_for_log(&log, "proven by the #commit itself", Duration::from_secs(5));
    assert!(text.contains("revoked (the record is deleted)"), "{text}");
    assert!(!text.contains("not-followed-before"), "the stored cursor covered this DID: no blanket re-check: {text}");
}

/// Waits until `url`'s firehose carries a fresh commit of `did` (the upstream is connected).
fn wait_live(url: &str, account: &harness::Account) {
    let mut stream = WsSubscribe::new(TrustRoots::new(None)).subscribe(&format!("{url}/xrpc/com.atproto.sync.subscribeRepos"), Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    loop {
        let digest = sha256(format!("probe-{:?}", Instant::now()).as_bytes());
        let rkey = env().pds.put_manifest(account, &digest, "probe", "application/vnd.oci.image.manifest.v1+json");
        let path = format!("io.atcr.manifest/{rkey}");
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(Frame::Binary(bytes))) = stream.next(Duration::from_millis(200), atproto_sig_core::firehose::MAX_FRAME_BYTES) {
                if let Ok(Event::Commit(e)) = decode_frame(&bytes, &Limits::default()) {
                    if e.repo == account.did && e.ops.iter().any(|op| op.path == path) {
                        return;
                    }
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{url} carried no commit of {} within 30 s", account.did);
    }
}

/// The relay as the node's one socket: the deletion reaches the node through it, proves
/// itself (the relay passes blocks and prevData through), and blocks the next pull.
#[test]
fn a_relay_source_revokes_a_deleted_record() {
    let relay = streams::Relay::start();
    let s = Scenario::new("relay1", "");
    wait_live(&relay.url, &s.alice);
    let config = std::fs::read_to_string(&s.verifier.config).unwrap();
    std::fs::write(&s.verifier.config, format!("{config}watch_source = \"relay\"\nwatch_url = \"{}\"\n", relay.url)).unwrap();
    let (_watch, log) = s.watch("watch.log");
    env().pds.delete_record(&s.alice, &s.rkey);
    let after = s.blocked_within(Instant::now(), Duration::from_secs(10), &log);
    let text = harness::wait_for_log(&log, "proven by the #commit itself", Duration::from_secs(5));
    assert!(text.contains(&format!("subscribed to {}/xrpc/com.atproto.sync.subscribeRepos", relay.url)), "{text}");
    assert!(text.contains("proven by the #commit itself"), "{text}");
    eprintln!("relay: blocked {after:?} after the deletion");
}

/// Jetstream (the legacy v1 build, reading the PDS directly): its events are unsigned, so each
/// is a hint that makes a signed re-check. An update of a record that still exists changes
/// nothing; a deletion blocks the next pull, proven by the PDS's absence proof.
#[test]
fn a_jetstream_source_rechecks_and_revokes() {
    let jetstream = streams::Jetstream::start();
    let port = jetstream.port;
    let s = Scenario::new("jet1", &format!("watch_source = \"jetstream\"\nwatch_url = \"ws://127.0.0.1:{port}\"\n"));
    let (_watch, log) = s.watch("watch.log");
    // A second record of the same signer, cached, then rewritten (still exists): hints only.
    let r = &env().registry.host;
    let digest2 = env().registry.push_image("jet1.test/other", "v1", "jet1-other");
    let rkey2 = env().pds.put_manifest(&s.alice, &digest2, "other", "application/vnd.oci.image.manifest.v1+json");
    let image2 = format!("{r}/jet1.test/other:v1");
    assert_eq!(s.verifier.pull(&image2, &digest2).code, Some(0));
    let record = serde_json::json!({"$type": "io.atcr.manifest", "repository": "other", "digest": digest2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "schemaVersion": 2, "createdAt": "2026-11-02T00:00:00.000Z"});
    let (status, _, body) = harness::http(
        "POST",
        &format!("{}/xrpc/com.atproto.repo.putRecord", env().pds.pds),
        &[("authorization", &format!("Bearer {}", s.alice.token)), ("content-type", "application/json")],
        Some(
            serde_json::to_vec(&serde_json::json!({"repo": s.alice.did, "collection": "io.atcr.manifest", "rkey": rkey2, "validate": false, "record": record}))
                .unwrap(),
        ),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let text = harness::wait_for_log(&log, &format!("update {rkey2}"), Duration::from_secs(10));
    assert!(text.contains(&format!("update {rkey2}")), "no Jetstream event for the update: {text}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.verifier.pull(&image2, &digest2).code, Some(0), "an event for a record that still exists changes nothing");
    assert_eq!(s.verifier.pull(&s.image, &s.digest).code, Some(0));

    env().pds.delete_record(&s.alice, &s.rkey);
    let after = s.blocked_within(Instant::now(), Duration::from_secs(10), &log);
    let text = harness::wait_for_log(&log, "proven by its PDS on a re-check", Duration::from_secs(5));
    assert!(text.contains("revoked (the record is deleted), proven by its PDS on a re-check (jetstream-commit)"), "{text}");
    assert_eq!(s.verifier.pull(&image2, &digest2).code, Some(0), "the other image stays admitted");
    eprintln!("jetstream: blocked {after:?} after the deletion");
}

/// A fake relay that serves a real `#commit` of the watched DID with its commit block's
/// signature altered: it does not prove itself, so it is only a hint; the signed re-check
/// finds the record still there and the image stays admitted.
#[test]
fn a_frame_with_a_bad_signature_changes_nothing() {
    let s = Scenario::new("forged1", "");
    // A real delete frame of another record of the same DID, captured from the PDS.
    let url = format!("{}/xrpc/com.atproto.sync.subscribeRepos", env().pds.pds.replace("http://", "ws://"));
    let mut stream = WsSubscribe::new(TrustRoots::new(None)).subscribe(&url, Duration::from_secs(5)).unwrap();
    let decoy = env().pds.put_manifest(&s.alice, &sha256(b"forged1-decoy"), "decoy", "application/vnd.oci.image.manifest.v1+json");
    let _ = next_commit(&mut stream, &s.alice.did, &format!("io.atcr.manifest/{decoy}"));
    env().pds.delete_record(&s.alice, &decoy);
    let frame = loop {
        match stream.next(Duration::from_secs(15), atproto_sig_core::firehose::MAX_FRAME_BYTES).unwrap() {
            Some(Frame::Binary(bytes)) => {
                if let Ok(Event::Commit(e)) = decode_frame(&bytes, &Limits::default()) {
                    if e.repo == s.alice.did && e.ops.iter().any(|op| op.path.ends_with(&decoy)) {
                        break bytes;
                    }
                }
            }
            Some(Frame::Text(_)) => {}
            None => panic!("the PDS closed the stream"),
        }
    };
    // Retarget the deletion at the cached record and flip a byte of the 64-byte signature.
    let mut forged = frame.clone();
    let (from, to) = (decoy.as_bytes(), s.rkey.as_bytes());
    assert_eq!(from.len(), to.len());
    let at = forged.windows(from.len()).position(|w| w == from).unwrap();
    forged[at..at + to.len()].copy_from_slice(to);
    let sig = forged.windows(4).position(|w| w == b"\x63sig").unwrap() + 4 + 2;
    forged[sig] ^= 0x55;
    // The fake relay: every connection gets the forged frame, then silence.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let forged = forged.clone();
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(conn) else { return };
                let _ = ws.send(tungstenite::Message::binary(forged));
                std::thread::sleep(Duration::from_secs(120));
            });
        }
    });
    let config = std::fs::read_to_string(&s.verifier.config).unwrap();
    std::fs::write(&s.verifier.config, format!("{config}watch_source = \"relay\"\nwatch_url = \"ws://127.0.0.1:{port}\"\n")).unwrap();
    let (_watch, log) = s.watch("watch.log");
    let text = harness::wait_for_log(&log, "does not prove itself", Duration::from_secs(10));
    assert!(text.contains("does not prove itself"), "{text}");
    std::thread::sleep(Duration::from_millis(2500));
    let pull = s.verifier.pull(&s.image, &s.digest);
    assert_eq!(pull.code, Some(0), "a forged frame must not block: {}\n{}", pull.stdout, std::fs::read_to_string(&log).unwrap_or_default());
}

/// No stream at all (`watch_source = "poll"`): the latest commit's rev is polled; a newer one
/// makes a full signed re-check (the collection state), which proves the deletion.
#[test]
fn the_poll_source_revokes_from_the_collection_state() {
    let s = Scenario::new("poll1", "watch_source = \"poll\"\nwatch_poll_interval = \"1s\"\n");
    let log = s.verifier.dir.path().join("watch.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["watch", "--run-for", "60s"])
        .env("ATPROTO_VERIFIER_CONFIG", &s.verifier.config)
        .env("ATPROTO_VERIFIER_LOG", "debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _watch = harness::Guard(Some(child));
    // The first poll sees a rev this node never verified: the first full re-check runs.
    let text = harness::wait_for_log(&log, "poll-new-rev", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.verifier.pull(&s.image, &s.digest).code, Some(0), "{text}");
    env().pds.delete_record(&s.alice, &s.rkey);
    s.blocked_within(Instant::now(), Duration::from_secs(15), &log);
    let text = harness::wait_for_log(&log, "the signed collection state proves the record is gone", Duration::from_secs(5));
    assert!(text.contains("the signed collection state proves the record is gone"), "{text}");
}

/// A key rotation (the PDS's own flow: new key, PLC update, an empty commit, `#identity` and
/// `#sync`): the watcher refetches the DID document, warns that the key changed, and fetches
/// the cached proofs again, now signed under the new key: the image stays admitted.
#[test]
fn a_key_rotation_rechecks_proofs_under_the_new_key() {
    let s = Scenario::new("rotate1", "");
    let (_watch, log) = s.watch("watch.log");
    let key = env().pds.rotate_key(&s.alice);
    let text = harness::wait_for_log(&log, "changed from", Duration::from_secs(10));
    assert!(
        text.contains(&format!("the signing key of {} changed from", s.alice.did)) && text.contains(&format!("to {key} (after an #identity event)")),
        "{text}"
    );
    // The cached proof was fetched again: its commit now verifies under the new key only.
    std::thread::sleep(Duration::from_secs(2));
    let entry: serde_json::Value = std::fs::read_dir(s.verifier.dir.path().join("cache/v1/proof"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .find(|e: &serde_json::Value| e["rkey"] == s.rkey.as_str())
        .unwrap();
    let car = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, entry["car"].as_str().unwrap()).unwrap();
    let new_key = atproto_sig_core::crypto::PublicKey::from_did_key(&key).unwrap();
    assert!(containerd_verifier::material::knowledge::signed_rev(&car, &new_key).is_some(), "the cached proof is signed under the new key: {text}");
    let pull = s.verifier.pull(&s.image, &s.digest);
    assert_eq!(pull.code, Some(0), "{}", pull.stdout);
}

/// `serve --watch`: the admission server remembers decisions (`--decision-ttl 10m`), but a
/// record revoked by its watcher drops its signer's decisions at once: the next review of the
/// image is denied within seconds, not after ten minutes.
#[test]
fn serve_with_watch_forgets_a_revoked_decision_at_once() {
    let s = Scenario::new("servewatch1", "");
    let dir = s.verifier.dir.path().join("tls");
    let (cert, key) = pki::issue(&dir, "ca", "server");
    let port = harness::free_port();
    let log = s.verifier.dir.path().join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["serve", "--watch", "--listen", &format!("127.0.0.1:{port}"), "--decision-ttl", "10m", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("ATPROTO_VERIFIER_CONFIG", &s.verifier.config)
        .env("ATPROTO_VERIFIER_LOG", "debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _serve = harness::Guard(Some(child));
    let text = harness::wait_for_log(&log, "subscribed to", Duration::from_secs(20));
    assert!(text.contains("subscribed to"), "{text}");
    streams::wait_port(port, "serve");
    harness::wait_for_log(&log, "re-check (not-followed-before", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(700));
    let review = |uid: &str| -> bool {
        let body = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "default", "operation": "CREATE",
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": s.image}]}}
            }
        });
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(dir.join("ca.crt"))
            .args(["-H", "content-type: application/json", "--data-binary", &body.to_string(), &format!("https://127.0.0.1:{port}/validate")])
            .output()
            .expect("curl is missing: apt-get install curl");
        let answer: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        answer["response"]["allowed"].as_bool().unwrap()
    };
    assert!(review("u1"), "signed: admitted");
    assert!(review("u2"), "and remembered");
    env().pds.delete_record(&s.alice, &s.rkey);
    let deleted = Instant::now();
    let mut n = 3;
    while review(&format!("u{n}")) {
        assert!(deleted.elapsed() < Duration::from_secs(10), "still admitted 10 s after the deletion:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = harness::wait_for_log(&log, "dropped from memory", Duration::from_secs(5));
    assert!(text.contains(&format!("decisions resting on {} dropped from memory", s.alice.did)), "{text}");
}
