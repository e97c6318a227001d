//! A Jetstream source (the v1 `/subscribe` API): JSON events filtered by the server to the
//! watched DIDs and `io.atcr.manifest`. Its events carry no signature and no proof, so every
//! one is a hint: a re-check of the named record (or, for `identity`/`account`, of every
//! cached record of the DID). The cursor is Jetstream's `time_us`; one older than Jetstream
//! keeps ([`REPLAY_KEPT`]) cannot be replayed, so it counts as a gap.

use std::time::Duration;

use atproto_sig_core::record::MANIFEST_COLLECTION;
use serde::Deserialize;

use super::queue::{Depth, Job};
use super::sources::{Follow, account};
use crate::remote::Frame;

/// Jetstream refuses more wanted DIDs than this on one subscription.
pub const MAX_DIDS: usize = 10_000;
/// Largest event accepted (Jetstream events are small; records are capped far below this).
const MAX_EVENT_BYTES: usize = 1 << 20;
/// How far back Jetstream is assumed to replay (its default event TTL is 24 h): an older
/// cursor is a gap.
const REPLAY_KEPT: Duration = Duration::from_secs(12 * 3600);
/// Longest query string sent; more DIDs go in an `options_update` message after `requireHello`.
const MAX_QUERY: usize = 4096;

#[derive(Debug, Deserialize)]
struct Event {
    did: String,
    time_us: i64,
    kind: String,
    #[serde(default)]
    commit: Option<Commit>,
    #[serde(default)]
    account: Option<Account>,
}

#[derive(Debug, Deserialize)]
struct Commit {
    #[serde(default)]
    operation: String,
    #[serde(default)]
    collection: String,
    #[serde(default)]
    rkey: String,
}

#[derive(Debug, Deserialize)]
struct Account {
    #[serde(default)]
    active: bool,
    #[serde(default)]
    status: Option<String>,
}

fn encode(value: &str) -> String {
    crate::lookup::atproto::query(&[("v", value)]).trim_start_matches("v=").to_owned()
}

/// The subscription URL, and whether the DIDs must follow in an `options_update` message.
fn subscription(url: &str, dids: &std::collections::BTreeSet<String>, cursor: Option<i64>) -> (String, bool) {
    let mut query = format!("wantedCollections={}", encode(MANIFEST_COLLECTION));
    let listed: String = dids.iter().map(|d| format!("&wantedDids={}", encode(d))).collect();
    let hello = listed.len() > MAX_QUERY;
    if hello {
        query.push_str("&requireHello=true");
    } else {
        query.push_str(&listed);
    }
    // The cap this client enforces, so Jetstream skips what it would refuse.
    query.push_str(&format!("&maxMessageSizeBytes={MAX_EVENT_BYTES}"));
    if let Some(cursor) = cursor {
        query.push_str(&format!("&cursor={cursor}"));
    }
    (format!("{url}?{query}"), hello)
}

pub(super) fn follow(follow: &mut Follow<'_>, url: &str) {
    let watcher = follow.watcher;
    let timeout = watcher.config.connect_timeout.0.max(Duration::from_secs(5));
    while follow.alive() {
        let (stored, covered) = follow.resume();
        let resume = stored.as_ref().map(|e| e.cursor);
        let now = crate::clock::now_micros(None).unwrap_or(0);
        if resume.is_some_and(|c| c > latest_position(watcher, now)) {
            // A position past this node's clock was never a real one: whatever came after the
            // true position may have been skipped. Followed live from here, after a full re-check.
            super::cursor::forget(&watcher.cache(), &follow.name);
            follow.gap("the stored cursor is in the future", None);
            continue;
        }
        let (target, hello) = subscription(url, &follow.dids, resume);
        let opened = watcher.subscribe.subscribe(&target, timeout).and_then(|mut stream| {
            if hello {
                let update = serde_json::json!({
                    "type": "options_update",
                    "payload": { "wantedCollections": [MANIFEST_COLLECTION], "wantedDids": follow.dids.iter().collect::<Vec<_>>(), "maxMessageSizeBytes": MAX_EVENT_BYTES },
                });
                stream.send_text(&update.to_string())?;
            }
            Ok(stream)
        });
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                follow.connect_failed(url, &e);
                continue;
            }
        };
        crate::log::info(&format!("watch: subscribed to {url} (Jetstream) for {} DIDs", follow.dids.len()));
        watcher.health.connected(&follow.name, true);
        let first = resume.unwrap_or(now);
        if resume.is_some_and(|c| now.saturating_sub(c) > i64::try_from(REPLAY_KEPT.as_micros()).unwrap_or(i64::MAX)) {
            follow.gap("the cursor is older than Jetstream is assumed to keep", Some(first));
        } else if !covered {
            follow.recheck_all(Depth::Records, "not-followed-before", Some(first));
        }
        let served = follow.read(stream.as_mut(), url, MAX_EVENT_BYTES, resume, stored, |follow, frame, last| {
            if let Frame::Text(text) = frame {
                event(follow, &text, last);
            }
            true
        });
        follow.ended(&served);
    }
}

/// The furthest a Jetstream position (`time_us`, an unsigned claim) may be: this node's clock
/// plus `clock_skew`.
fn latest_position(watcher: &super::Watcher, now: i64) -> i64 {
    now.saturating_add(i64::try_from(watcher.config.clock_skew.0.as_micros()).unwrap_or(i64::MAX))
}

/// Where an event may move the cursor (`time_us`, an unsigned claim): only for a DID this
/// source was asked for, and only up to `latest` (this node's clock + `clock_skew`).
fn position(time_us: i64, watched: bool, latest: i64) -> Option<i64> {
    (watched && time_us > 0 && time_us <= latest).then_some(time_us)
}

/// A Jetstream message's DID and the position it may move the cursor to, for the fuzz
/// target: the same parse and rule as the watcher's.
#[cfg(feature = "testkit")]
pub fn event_position(text: &str, watched: &std::collections::BTreeSet<String>, latest: i64) -> Option<(String, Option<i64>)> {
    let event = serde_json::from_str::<Event>(text).ok()?;
    let at = position(event.time_us, watched.contains(&event.did), latest);
    Some((event.did, at))
}

/// One Jetstream event: a hint for a watched DID.
fn event(follow: &Follow<'_>, text: &str, last: &mut Option<i64>) {
    let watcher = follow.watcher;
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let Ok(event) = serde_json::from_str::<Event>(text) else {
        watcher.health.event(&follow.name, "undecodable", "ignored", now, None);
        return;
    };
    if event.time_us <= 0 {
        return;
    }
    if !follow.dids.contains(&event.did) {
        // Not asked for: it says nothing about where this node's stream stands.
        watcher.health.event(&follow.name, "other", "ignored", now, Some(event.time_us));
        return;
    }
    if let Some(at) = position(event.time_us, true, latest_position(watcher, now)) {
        *last = Some(last.map_or(at, |l| l.max(at)));
    } else {
        crate::log::debug(&format!("watch: {}: an event dated past this node's clock (time_us {}): not a position", follow.name, event.time_us));
    }
    let job = |depth, why| Job::new(&event.did, depth, why).at(&follow.name, Some(event.time_us));
    match (event.kind.as_str(), &event.commit, &event.account) {
        ("commit", Some(commit), _) if commit.collection == MANIFEST_COLLECTION && !commit.rkey.is_empty() => {
            watcher.health.event(&follow.name, "commit", "hint", now, Some(event.time_us));
            crate::log::debug(&format!("watch: Jetstream: {} {} {}: re-checking", event.did, commit.operation, commit.rkey));
            watcher.queue.push(job(Depth::Records, "jetstream-commit").records([commit.rkey.clone()]));
        }
        ("identity", _, _) => {
            watcher.health.event(&follow.name, "identity", "hint", now, Some(event.time_us));
            watcher.queue.push(job(Depth::Records, "identity").announced());
        }
        ("account", _, Some(a)) => {
            watcher.health.event(&follow.name, "account", "hint", now, Some(event.time_us));
            account(watcher, &event.did, a.active, a.status.as_deref());
            watcher.queue.push(job(Depth::Records, "account"));
        }
        _ => watcher.health.event(&follow.name, "other", "ignored", now, Some(event.time_us)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sets_go_in_the_query_large_ones_after_hello() {
        let few: std::collections::BTreeSet<String> = ["did:plc:aaa".to_owned()].into();
        let (url, hello) = subscription("ws://127.0.0.1:6008/subscribe", &few, Some(5));
        assert_eq!(url, "ws://127.0.0.1:6008/subscribe?wantedCollections=io.atcr.manifest&wantedDids=did:plc:aaa&maxMessageSizeBytes=1048576&cursor=5");
        assert!(!hello);
        let many: std::collections::BTreeSet<String> = (0..500).map(|n| format!("did:plc:{n:024}")).collect();
        let (url, hello) = subscription("ws://127.0.0.1:6008/subscribe", &many, None);
        assert!(hello && url.contains("&requireHello=true") && url.len() < 200, "{url}");
    }
}
