//! Where the watcher listens, and the loop that follows each source: connect (capped backoff
//! with jitter), resume from the stored cursor, hand each event on, notice gaps, save the
//! position; while a stream is down for longer than `watch_poll_interval`, poll instead.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use atproto_sig_core::Limits;
use atproto_sig_core::firehose::{Frame as Event, MAX_FRAME_BYTES, decode_frame};
use atproto_sig_core::syntax::parse_datetime_micros;

use super::cursor::{self, CursorEntry, dids_digest};
use super::queue::{Depth, Job};
use super::{Watched, Watcher, commit, jitter_sleep};
use crate::config::WatchSource;
use crate::material::knowledge::repo_of;
use crate::material::read::Refresh;
use crate::remote::{Frame, NetError, Stream};

/// One thing to follow, and the DIDs it is followed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// `subscribeRepos` of a PDS (`kind` "pds") or a relay ("relay"); `url` without a cursor.
    Firehose { url: String, kind: &'static str, dids: Arc<BTreeSet<String>> },
    /// A Jetstream instance's `/subscribe`; `name` tells chunks of more than
    /// [`super::jetstream::MAX_DIDS`] DIDs apart.
    Jetstream { url: String, name: String, dids: Arc<BTreeSet<String>> },
    /// No stream: `getLatestCommit` of each DID every `watch_poll_interval`.
    Poll { dids: Arc<BTreeSet<String>> },
    /// The fleet's registry (`bundle_source`): its index every `watch_poll_interval`.
    Registry { source: String, dids: Arc<BTreeSet<String>> },
}

impl Source {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Source::Firehose { kind, .. } => kind,
            Source::Jetstream { .. } => "jetstream",
            Source::Poll { .. } => "poll",
            Source::Registry { .. } => "registry",
        }
    }
}

/// `wss://host[/path]` with `path` when it has none.
fn with_path(url: &str, path: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') { trimmed.to_owned() } else { format!("{trimmed}{path}") }
}

/// The sources for the watched set under the config's `watch_source`.
pub(super) fn plan(watcher: &Watcher, watched: &Watched) -> Vec<Source> {
    let dids = &watched.dids;
    if dids.is_empty() {
        return Vec::new();
    }
    let config = &watcher.config;
    match (config.watch_source, config.watch_url.as_deref()) {
        (WatchSource::Relay, Some(url)) => {
            vec![Source::Firehose { url: with_path(url, "/xrpc/com.atproto.sync.subscribeRepos"), kind: "relay", dids: Arc::new(dids.clone()) }]
        }
        (WatchSource::Jetstream, Some(url)) => {
            let url = with_path(url, "/subscribe");
            let all: Vec<String> = dids.iter().cloned().collect();
            if all.len() > super::jetstream::MAX_DIDS {
                crate::log::warn(&format!(
                    "watch: {} DIDs are more than one Jetstream subscription takes ({}): {} sockets (a relay takes any number on one)",
                    all.len(),
                    super::jetstream::MAX_DIDS,
                    all.len().div_ceil(super::jetstream::MAX_DIDS)
                ));
            }
            all.chunks(super::jetstream::MAX_DIDS)
                .enumerate()
                .map(|(n, chunk)| Source::Jetstream {
                    url: url.clone(),
                    name: if n == 0 { url.clone() } else { format!("{url}#{}", n + 1) },
                    dids: Arc::new(chunk.iter().cloned().collect()),
                })
                .collect()
        }
        (WatchSource::Poll, _) => vec![Source::Poll { dids: Arc::new(dids.clone()) }],
        (WatchSource::Registry, _) => match &config.bundle_source {
            Some(source) => vec![Source::Registry { source: source.clone(), dids: Arc::new(dids.clone()) }],
            None => Vec::new(),
        },
        _ => {
            // One socket per PDS, for the DIDs it hosts.
            let policy = watcher.policy();
            let session = watcher.session(&policy, Refresh::WhenExpired);
            let mut by_pds: std::collections::BTreeMap<String, BTreeSet<String>> = std::collections::BTreeMap::new();
            for did in dids {
                match session.document(did) {
                    Ok((document, _)) => match document.pds {
                        Some(pds) => {
                            by_pds.entry(pds).or_default().insert(did.clone());
                        }
                        None => crate::log::warn(&format!("watch: {did} names no PDS: not watched")),
                    },
                    Err(v) => crate::log::warn(&format!("watch: {did}: {} — not watched until its document resolves", v.message)),
                }
            }
            by_pds
                .into_iter()
                .map(|(pds, dids)| {
                    let ws = pds.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
                    Source::Firehose { url: format!("{}/xrpc/com.atproto.sync.subscribeRepos", ws.trim_end_matches('/')), kind: "pds", dids: Arc::new(dids) }
                })
                .collect()
        }
    }
}

/// What a source thread needs to know about itself.
pub(super) struct Follow<'w> {
    pub watcher: &'w Watcher,
    pub name: String,
    pub dids: Arc<BTreeSet<String>>,
    generation: u64,
    until: Option<Instant>,
    last_poll: Option<Instant>,
    /// Since when nothing has been delivered (the source was last heard from).
    down_since: Instant,
    /// The backoff before the next connection attempt.
    backoff: Duration,
    /// The last sequence number a firehose delivered (for gaps), whatever its DID: apart from
    /// the position saved, which only watched DIDs' events dated within the clock move.
    seen: std::cell::Cell<Option<i64>>,
}

/// First and longest wait between connection attempts.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What one connection delivered before it ended.
pub(super) struct Served {
    pub frames: usize,
}

impl Follow<'_> {
    pub(super) fn alive(&self) -> bool {
        !self.watcher.stopping() && self.watcher.generation.load(Ordering::SeqCst) == self.generation && self.until.is_none_or(|u| Instant::now() < u)
    }

    /// Sleeps `d` (jittered) in slices, returning early once this source should stop.
    pub(super) fn pause(&self, d: Duration) {
        jitter_sleep(d, || self.alive());
    }

    /// Waits at most `d` (jittered below it): for a poll whose interval bounds staleness.
    pub(super) fn pause_within(&self, d: Duration) {
        super::jitter_sleep_within(d, || self.alive());
    }

    /// The stored position, and whether it covered exactly these DIDs.
    pub(super) fn resume(&self) -> (Option<CursorEntry>, bool) {
        let stored = cursor::load(&self.watcher.cache(), &self.name);
        let covered = stored.as_ref().is_some_and(|e| e.dids == dids_digest(&self.dids));
        (stored, covered)
    }

    /// Saves `position`, held back before the oldest re-check still owed to this source.
    pub(super) fn save(&self, position: Option<i64>, previous: Option<&CursorEntry>) {
        let Some(position) = position else { return };
        let owed = self.watcher.queue.oldest_unfinished(&self.name);
        let cursor = owed.map_or(position, |o| position.min(o.saturating_sub(1)));
        // The set is covered once nothing owed to it is left (its first re-checks included).
        let dids = if owed.is_none() { dids_digest(&self.dids) } else { previous.map(|e| e.dids.clone()).unwrap_or_default() };
        let entry = CursorEntry { source: self.name.clone(), cursor, dids, updated_at: crate::clock::now_micros(None).unwrap_or(0) };
        if previous != Some(&entry) {
            cursor::store(&self.watcher.cache(), &entry);
        }
    }

    /// Every DID of this source re-checked `depth`, owed at `seq`.
    pub(super) fn recheck_all(&self, depth: Depth, why: &'static str, seq: Option<i64>) {
        for did in self.dids.iter() {
            self.watcher.queue.push(Job::new(did, depth, why).at(&self.name, seq));
        }
    }

    /// Events may have been missed: the signed collection of every DID of this source.
    pub(super) fn gap(&self, why: &str, seq: Option<i64>) {
        self.watcher.health.gap(&self.name);
        crate::log::warn(&format!(
            "watch: {}: {why}: events may have been missed — re-checking the signed collection state of its {} DIDs",
            self.name,
            self.dids.len()
        ));
        self.recheck_all(Depth::Full, "gap", seq);
    }

    /// After a failed connect, or while a stream delivers nothing: poll when the source has
    /// been silent for a poll interval (at most once per interval).
    pub(super) fn poll_while_down(&mut self) {
        let interval = self.watcher.config.watch_poll_interval.0;
        if self.down_since.elapsed() >= interval && self.last_poll.is_none_or(|t| t.elapsed() >= interval) {
            self.last_poll = Some(Instant::now());
            crate::log::info(&format!(
                "watch: {} has delivered nothing for {}s: polling its {} DIDs",
                self.name,
                self.down_since.elapsed().as_secs(),
                self.dids.len()
            ));
            poll_once(self);
        }
    }

    /// A connection could not be opened: said, polled if down long enough, waited out.
    pub(super) fn connect_failed(&mut self, url: &str, error: &NetError) {
        crate::log::warn(&format!("watch: {url}: {error} — retrying in {}s", self.backoff.as_secs()));
        self.watcher.health.connected(&self.name, false);
        self.watcher.health.failed(&self.name);
        self.poll_while_down();
        self.pause(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// A connection ended: one that delivered something is reconnected at once (after a
    /// breath); one that delivered nothing is a failure and backs off like a refused connect,
    /// so a source that accepts and then fails cannot make a reconnect loop.
    pub(super) fn ended(&mut self, served: &Served) {
        self.watcher.health.connected(&self.name, false);
        if !self.alive() {
            return;
        }
        if served.frames > 0 {
            self.backoff = BACKOFF_FIRST;
            self.pause(Duration::from_millis(200));
        } else {
            self.watcher.health.failed(&self.name);
            crate::log::warn(&format!("watch: {}: the stream ended before delivering anything — retrying in {}s", self.name, self.backoff.as_secs()));
            self.poll_while_down();
            self.pause(self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Reads `stream` until it closes, fails, or this source should stop: each frame to
    /// `handle` (false: reopen the stream), the position saved every second and at the end.
    /// A message over `limit` is skipped as a gap (the signed collection of every DID of this
    /// source is re-checked, and the stream is reopened live, past it): it never wedges the
    /// source at one position. While nothing arrives for a poll interval, the DIDs are polled.
    pub(super) fn read(
        &mut self,
        stream: &mut dyn Stream,
        url: &str,
        limit: usize,
        resume: Option<i64>,
        stored: Option<CursorEntry>,
        mut handle: impl FnMut(&Follow<'_>, Frame, &mut Option<i64>) -> bool,
    ) -> Served {
        let mut last = resume;
        self.seen.set(resume);
        let mut previous = stored;
        let mut saved = Instant::now();
        let mut served = Served { frames: 0 };
        while self.alive() {
            match stream.next(Duration::from_secs(1), limit) {
                Ok(Some(frame)) => {
                    served.frames += 1;
                    self.down_since = Instant::now();
                    self.watcher.health.delivered(&self.name);
                    if !handle(self, frame, &mut last) {
                        break;
                    }
                }
                Err(NetError::Timeout(_)) => self.poll_while_down(),
                Ok(None) => {
                    crate::log::info(&format!("watch: {url} closed the stream — reconnecting"));
                    break;
                }
                Err(NetError::TooLarge(cap)) => {
                    // Counted as delivered: the source is alive, it sent something we refuse.
                    served.frames += 1;
                    self.gap(&format!("a message over {cap} bytes was skipped"), last.map(|l| l.saturating_add(1)));
                    cursor::forget(&self.watcher.cache(), &self.name);
                    return served;
                }
                Err(e) => {
                    crate::log::warn(&format!("watch: {url}: {e} — reconnecting"));
                    break;
                }
            }
            if saved.elapsed() >= Duration::from_secs(1) {
                saved = Instant::now();
                self.save(last, previous.as_ref());
                previous = cursor::load(&self.watcher.cache(), &self.name);
            }
        }
        self.save(last, previous.as_ref());
        served
    }
}

/// Follows `source` until its generation ends or the watcher stops.
pub(super) fn follow(watcher: &Watcher, source: &Source, generation: u64, until: Option<Instant>) {
    let (name, dids) = match source {
        Source::Firehose { url, dids, .. } => (url.clone(), dids.clone()),
        Source::Jetstream { name, dids, .. } => (name.clone(), dids.clone()),
        Source::Poll { dids } => ("poll".to_owned(), dids.clone()),
        Source::Registry { source, dids } => (source.clone(), dids.clone()),
    };
    watcher.health.source(&name, source.kind());
    let mut follow = Follow {
        watcher,
        name,
        dids,
        generation,
        until,
        last_poll: None,
        down_since: Instant::now(),
        backoff: BACKOFF_FIRST,
        seen: std::cell::Cell::new(None),
    };
    match source {
        Source::Firehose { url, .. } => firehose(&mut follow, url),
        Source::Jetstream { url, .. } => super::jetstream::follow(&mut follow, url),
        Source::Poll { .. } => {
            while follow.alive() {
                poll_once(&follow);
                follow.pause(watcher.config.watch_poll_interval.0);
            }
        }
        Source::Registry { .. } => {
            while follow.alive() {
                registry_once(&follow);
                // Within the interval, never past it: a node is at most one interval behind the
                // registry (plus the import), as README promises.
                follow.pause_within(watcher.config.watch_poll_interval.0);
            }
        }
    }
}

/// One read of the fleet's registry: its index, then each changed artifact of a watched DID
/// imported by the knowledge rules (what it revokes is revoked here, in the shared cache).
fn registry_once(follow: &Follow<'_>) {
    let watcher = follow.watcher;
    let now = crate::clock::now_micros(None).unwrap_or(0);
    // Room for a herd: when a new publication appears every node fetches it at once, and a
    // fetch cut short is retried from scratch at the next poll.
    let budget = (watcher.config.watch_poll_interval.0 * 5).clamp(Duration::from_secs(10), Duration::from_secs(60));
    let wanted = watcher.policy().trusted.iter().map(|t| t.did.clone()).collect();
    let synced = crate::fleet::pull::sync_for(&watcher.config, &watcher.cache(), &watcher.remote, now, crate::remote::Deadline::after(budget), &wanted);
    if synced.problems.is_empty() {
        watcher.health.connected(&follow.name, true);
        watcher.health.delivered(&follow.name);
    } else {
        watcher.health.connected(&follow.name, false);
        watcher.health.failed(&follow.name);
        for problem in &synced.problems {
            crate::log::warn(&format!("watch: {problem}"));
        }
    }
    for uri in &synced.revoked {
        crate::log::info(&format!("watch: {uri} revoked (from the fleet's registry)"));
        watcher.health.revoked("registry");
    }
    for did in &synced.imported_dids {
        watcher.changed(did);
    }
}

/// One round of polling: a DID whose latest rev is newer than the newest this node verified
/// gets a full signed re-check (the rev itself is unsigned: only a hint).
fn poll_once(follow: &Follow<'_>) {
    let watcher = follow.watcher;
    let policy = watcher.policy();
    let cache = watcher.cache();
    for did in follow.dids.iter() {
        if !follow.alive() {
            return;
        }
        let session = watcher.session(&policy, Refresh::WhenExpired);
        let latest = session.document(did).map_err(|v| v.message).and_then(|(document, _)| {
            let pds = document.pds.ok_or_else(|| "names no PDS".to_owned())?;
            let http = session.http().ok_or_else(|| "offline".to_owned())?;
            crate::lookup::atproto::fetch_latest_rev(http, &pds, did).map_err(|e| e.to_string())
        });
        match latest {
            Ok(rev) if repo_of(&cache, did).newest.is_none_or(|held| held.rev < rev) => {
                watcher.queue.push(Job::new(did, Depth::Full, "poll-new-rev"));
            }
            Ok(_) => {}
            Err(e) => crate::log::debug(&format!("watch: poll {did}: {e}")),
        }
    }
}

/// `subscribeRepos` of a PDS or relay.
fn firehose(follow: &mut Follow<'_>, url: &str) {
    let watcher = follow.watcher;
    let timeout = watcher.config.connect_timeout.0.max(Duration::from_secs(5));
    while follow.alive() {
        let (stored, covered) = follow.resume();
        let resume = stored.as_ref().map(|e| e.cursor);
        let target = resume.map_or_else(|| url.to_owned(), |c| format!("{url}?cursor={c}"));
        let mut stream = match watcher.subscribe.subscribe(&target, timeout) {
            Ok(stream) => stream,
            Err(e) => {
                follow.connect_failed(url, &e);
                continue;
            }
        };
        let resuming = resume.map(|c| format!(", resuming after seq {c}")).unwrap_or_default();
        crate::log::info(&format!("watch: subscribed to {url} for {} DIDs{resuming}", follow.dids.len()));
        watcher.health.connected(&follow.name, true);
        if !covered {
            // Not followed before from here (first start, or DIDs added): what happened to
            // them before now is asked of their PDS.
            follow.recheck_all(Depth::Records, "not-followed-before", Some(resume.unwrap_or(0).saturating_add(1)));
        }
        let served = follow.read(stream.as_mut(), url, MAX_FRAME_BYTES, resume, stored, |follow, frame_read, last| match frame_read {
            Frame::Binary(bytes) => frame(follow, &bytes, last),
            Frame::Text(_) => true,
        });
        follow.ended(&served);
    }
}

/// Handles one firehose frame; false when the stream must be reopened.
fn frame(follow: &Follow<'_>, bytes: &[u8], last: &mut Option<i64>) -> bool {
    let watcher = follow.watcher;
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let event = match decode_frame(bytes, &Limits::default()) {
        Ok(event) => event,
        Err(e) => {
            watcher.health.event(&follow.name, "undecodable", "ignored", now, None);
            crate::log::debug(&format!("watch: {}: undecodable frame: {e}", follow.name));
            return true;
        }
    };
    let (seq, time) = match &event {
        Event::Commit(e) => (e.seq, &e.time),
        Event::Sync(e) => (e.seq, &e.time),
        Event::Identity(e) => (e.seq, &e.time),
        Event::Account(e) => (e.seq, &e.time),
        Event::Info { name, message } => {
            if name == "OutdatedCursor" {
                follow.gap(
                    &format!("the cursor is older than the source keeps ({})", message.as_deref().unwrap_or("OutdatedCursor")),
                    last.map(|l| l.saturating_add(1)),
                );
            }
            return true;
        }
        Event::Error { error, message } => {
            crate::log::warn(&format!("watch: {}: error frame {error}: {}", follow.name, message.as_deref().unwrap_or("")));
            if error == "FutureCursor" {
                // The source's sequence was reset: our position means nothing there now.
                cursor::forget(&watcher.cache(), &follow.name);
                *last = None;
                follow.seen.set(None);
                follow.gap("the source does not know our cursor (FutureCursor: its sequence was reset)", None);
            }
            return false;
        }
        _ => return true,
    };
    match follow.seen.get() {
        Some(l) if seq == l => return true,
        Some(l) if seq < l => follow.gap(&format!("its sequence went backwards ({l} to {seq})"), Some(seq)),
        Some(l) if seq > l.saturating_add(1) => follow.gap(&format!("a sequence jump from {l} to {seq}"), Some(seq)),
        _ => {}
    }
    follow.seen.set(Some(seq));
    let event_time = parse_datetime_micros(time);
    let watched = |did: &str| follow.dids.contains(did);
    // A position is a claim: it moves the saved cursor only for a watched DID's event dated
    // within this node's clock + clock_skew.
    let subject = match &event {
        Event::Commit(e) => e.repo.as_str(),
        Event::Sync(e) => e.did.as_str(),
        Event::Identity(e) => e.did.as_str(),
        Event::Account(e) => e.did.as_str(),
        _ => "",
    };
    let latest = now.saturating_add(watcher.config.clock_skew.micros());
    if watched(subject) && event_time.is_some_and(|t| t <= latest) {
        *last = Some(last.map_or(seq, |l| l.max(seq)));
    }
    let at = |job: Job| job.at(&follow.name, Some(seq));
    match &event {
        Event::Commit(e) if watched(&e.repo) => {
            let outcome = commit::handle(watcher, e, &follow.name);
            watcher.health.event(&follow.name, "commit", outcome, now, event_time);
        }
        Event::Sync(e) if watched(&e.did) => {
            watcher.health.event(&follow.name, "sync", "hint", now, event_time);
            watcher.queue.push(at(Job::new(&e.did, Depth::Full, "sync")));
        }
        Event::Identity(e) if watched(&e.did) => {
            watcher.health.event(&follow.name, "identity", "hint", now, event_time);
            watcher.queue.push(at(Job::new(&e.did, Depth::Records, "identity").announced()));
        }
        Event::Account(e) if watched(&e.did) => {
            watcher.health.event(&follow.name, "account", "hint", now, event_time);
            account(watcher, &e.did, e.active, e.status.as_deref());
            watcher.queue.push(at(Job::new(&e.did, Depth::Records, "account")));
        }
        _ => watcher.health.event(&follow.name, "other", "ignored", now, event_time),
    }
    true
}

/// Reports an `#account` change of a watched DID (its host's word: the re-check decides).
pub(super) fn account(watcher: &Watcher, did: &str, active: bool, status: Option<&str>) {
    let status = status.unwrap_or(if active { "active" } else { "inactive" });
    watcher.health.account(status);
    if active {
        crate::log::info(&format!("watch: {did}: its account is {status} again at its host: re-checking"));
    } else {
        crate::log::warn(&format!(
            "watch: {did}: its host reports the account {} — re-checking; while its PDS serves no repository, its images are not admitted from fresh proofs",
            crate::limits::short(&crate::limits::printable(status), 40)
        ));
    }
}
