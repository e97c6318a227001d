//! The watcher against sources that lie about positions, send what it refuses, or accept and
//! fail: in-memory streams, no network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cursor::{self, CursorEntry, dids_digest};
use super::*;
use crate::config::WatchSource;
use crate::remote::Frame;
use crate::remote::memory::{MemoryFetch, MemoryResolve, MemorySubscribe};

const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
const OTHER: &str = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
const SOURCE: &str = "ws://jet.test/subscribe";

struct Setup {
    dir: tempfile::TempDir,
    fetch: Arc<MemoryFetch>,
    subscribe: Arc<MemorySubscribe>,
}

impl Setup {
    fn new() -> Setup {
        Setup { dir: tempfile::tempdir().unwrap(), fetch: Arc::new(MemoryFetch::new()), subscribe: Arc::new(MemorySubscribe::new()) }
    }

    fn watcher(&self) -> Watcher {
        let policy_path = self.dir.path().join("policy.yaml");
        std::fs::write(
            &policy_path,
            format!("version: 1.0\ntrustedDIDs:\n  {DID}: {{ name: a }}\npolicies:\n  - name: prod\n    scope: \"registry.test/**\"\n    require: {{ signature: true }}\n    action: enforce\n"),
        )
        .unwrap();
        let config = Config {
            policy: policy_path.clone(),
            cache_dir: self.dir.path().join("cache"),
            plc_directory: "https://plc.test".into(),
            watch_source: WatchSource::Jetstream,
            watch_url: Some("ws://jet.test".into()),
            watch_poll_interval: crate::config::Span(Duration::from_secs(1)),
            ..Config::default()
        };
        let policy = crate::engine::request::load_policy(&policy_path).unwrap();
        let remote = Remote::new(self.fetch.clone(), Arc::new(MemoryResolve::new()));
        Watcher::new(config, policy, remote, self.subscribe.clone())
    }

    fn cache(&self) -> crate::material::store::Cache {
        crate::material::store::Cache::new(&self.dir.path().join("cache"))
    }

    /// The subscription URL without a cursor.
    fn live() -> String {
        format!("{SOURCE}?wantedCollections=io.atcr.manifest&wantedDids={DID}&maxMessageSizeBytes={}", 1 << 20)
    }
}

fn now() -> i64 {
    crate::clock::now_micros(None).unwrap()
}

fn event(did: &str, time_us: i64) -> Frame {
    Frame::Text(
        serde_json::json!({"did": did, "time_us": time_us, "kind": "commit",
            "commit": {"operation": "delete", "collection": "io.atcr.manifest", "rkey": "3kabc"}})
        .to_string(),
    )
}

fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(prefix).and_then(|rest| rest.trim().parse().ok()))
}

#[test]
fn a_position_past_the_clock_or_of_an_unwatched_did_never_becomes_the_cursor() {
    let setup = Setup::new();
    let now = now();
    let day = 86_400_000_000;
    let honest = now - 1_000_000;
    setup.subscribe.serve(
        &Setup::live(),
        vec![event(OTHER, now + 10 * day), event(DID, now + 10 * day), event(DID, honest), event(OTHER, honest + 500)],
        false,
    );
    setup.watcher().run(Some(Instant::now() + Duration::from_millis(2500)));
    let stored = cursor::load(&setup.cache(), SOURCE).expect("a cursor");
    assert_eq!(stored.cursor, honest, "the cursor moved to an unsigned position");
}

#[test]
fn a_stored_cursor_in_the_future_is_a_gap_and_never_resumed_from() {
    let setup = Setup::new();
    let future = now() + 86_400_000_000;
    let dids: std::collections::BTreeSet<String> = [DID.to_owned()].into();
    cursor::store(&setup.cache(), &CursorEntry { source: SOURCE.into(), cursor: future, dids: dids_digest(&dids), updated_at: now() });
    setup.subscribe.serve(&Setup::live(), vec![], false);
    let watcher = setup.watcher();
    let health = watcher.health();
    watcher.run(Some(Instant::now() + Duration::from_millis(1500)));
    let subscribed = setup.subscribe.subscribed();
    assert!(subscribed.iter().all(|u| !u.contains(&future.to_string())), "resumed from the future: {subscribed:?}");
    assert_eq!(metric(&health.render(), &format!("atproto_verifier_watch_gaps_total{{source=\"{SOURCE}\"}}")), Some(1));
    assert!(cursor::load(&setup.cache(), SOURCE).is_none_or(|e| e.cursor < future));
}

#[test]
fn a_message_over_the_cap_is_a_gap_never_a_reconnect_loop() {
    let setup = Setup::new();
    let position = now() - 60_000_000;
    let dids: std::collections::BTreeSet<String> = [DID.to_owned()].into();
    cursor::store(&setup.cache(), &CursorEntry { source: SOURCE.into(), cursor: position, dids: dids_digest(&dids), updated_at: now() });
    // At the stored position the source sends a message over the cap, every time it is asked.
    let at_cursor = format!("{}&cursor={position}", Setup::live());
    setup.subscribe.serve(&at_cursor, vec![Frame::Text("x".repeat((1 << 20) + 1))], false);
    setup.subscribe.serve(&Setup::live(), vec![event(DID, now() - 1000)], false);
    let watcher = setup.watcher();
    let health = watcher.health();
    watcher.run(Some(Instant::now() + Duration::from_millis(3000)));
    let subscribed = setup.subscribe.subscribed();
    assert_eq!(subscribed.iter().filter(|u| **u == at_cursor).count(), 1, "{subscribed:?}");
    assert!(subscribed.iter().any(|u| *u == Setup::live()), "{subscribed:?}");
    let text = health.render();
    assert_eq!(metric(&text, &format!("atproto_verifier_watch_gaps_total{{source=\"{SOURCE}\"}}")), Some(1), "{text}");
}

#[test]
fn a_source_that_accepts_and_delivers_nothing_backs_off_is_unhealthy_and_is_polled() {
    let setup = Setup::new();
    setup.subscribe.serve(&Setup::live(), vec![], true);
    let watcher = setup.watcher();
    let health = watcher.health();
    watcher.run(Some(Instant::now() + Duration::from_millis(3500)));
    // 1 s, then 2 s between attempts: three connections at most in 3.5 s, not one every 200 ms.
    let attempts = setup.subscribe.subscribed().len();
    assert!((2..=3).contains(&attempts), "{attempts} connections");
    let text = health.render();
    assert_eq!(metric(&text, &format!("atproto_verifier_watch_source_healthy{{source=\"{SOURCE}\"}}")), Some(0), "{text}");
    assert!(metric(&text, &format!("atproto_verifier_watch_source_failures_total{{source=\"{SOURCE}\"}}")) >= Some(2), "{text}");
    // Polled meanwhile: the DID's document was asked for.
    assert!(setup.fetch.requested().iter().any(|u| u.contains(DID)), "{:?}", setup.fetch.requested());
}

/// A `#identity` frame of `did` at `seq`, dated `time` (the source's word).
fn identity_frame(did: &str, seq: i64, time: i64) -> Frame {
    use atproto_sig_core::cbor::{Map, Value, encode};
    let header = Value::Map(Map(vec![("op".into(), Value::Integer(1)), ("t".into(), Value::Text("#identity".into()))]));
    let body = Value::Map(Map(vec![
        ("did".into(), Value::Text(did.into())),
        ("seq".into(), Value::Integer(seq)),
        ("time".into(), Value::Text(atproto_sig_core::syntax::format_datetime_micros(time))),
    ]));
    let mut bytes = encode(&header);
    bytes.extend(encode(&body));
    Frame::Binary(bytes)
}

#[test]
fn a_firehose_position_moves_only_for_watched_dids_dated_within_the_clock() {
    let setup = Setup::new();
    let now = now();
    // A relay: the stream is followed for its sequence (gaps), the cursor only for what counts.
    setup.subscribe.serve(
        "ws://relay.test/xrpc/com.atproto.sync.subscribeRepos",
        vec![identity_frame(DID, 10, now - 1_000_000), identity_frame(DID, 11, now + 86_400_000_000), identity_frame(OTHER, 12, now - 500_000)],
        false,
    );
    let mut watcher = setup.watcher();
    watcher.config.watch_source = WatchSource::Relay;
    watcher.config.watch_url = Some("ws://relay.test".into());
    let health = watcher.health();
    watcher.run(Some(Instant::now() + Duration::from_millis(2500)));
    let stored = cursor::load(&setup.cache(), "ws://relay.test/xrpc/com.atproto.sync.subscribeRepos").expect("a cursor");
    assert_eq!(stored.cursor, 10, "moved by a future-dated or unwatched frame");
    // 10, 11, 12 are contiguous: no gap was seen, though the cursor stayed at 10.
    assert_eq!(metric(&health.render(), "atproto_verifier_watch_gaps_total{source=\"ws://relay.test/xrpc/com.atproto.sync.subscribeRepos\"}"), Some(0));
}
