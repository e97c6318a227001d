//! What `watch` counts, rendered as Prometheus text: into `watch_metrics_file` (node-exporter's
//! textfile collector), and into `serve`'s `/metrics` when the watcher runs inside it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One source's health.
#[derive(Clone, Debug, Default)]
struct Source {
    kind: &'static str,
    connected: bool,
    /// This node's clock at the last event (microseconds).
    last_event: Option<i64>,
    /// The last event's own time, behind this node's clock (microseconds).
    lag: Option<i64>,
    connects: u64,
    gaps: u64,
    /// Connections that ended before delivering anything (each backs off longer).
    failures: u64,
    /// False once a connection ended before delivering anything, until one delivers.
    unhealthy: bool,
}

#[derive(Default)]
struct Counters {
    sources: BTreeMap<String, Source>,
    events: BTreeMap<(&'static str, &'static str), u64>,
    rechecks: BTreeMap<&'static str, u64>,
    recheck_failures: u64,
    revocations: BTreeMap<&'static str, u64>,
    /// `watch --publish`: publications by result (true: pushed).
    publications: BTreeMap<bool, u64>,
    changes: u64,
    key_changes: BTreeMap<bool, u64>,
    accounts: BTreeMap<String, u64>,
    watched: usize,
    pending: usize,
    /// What is on the node (containerd's store): images removed, containers still running a
    /// revoked image at the last survey, surveys by result.
    images_removed: u64,
    revoked_running: Option<usize>,
    surveys: BTreeMap<bool, u64>,
}

/// The counters, shared by every thread of the watcher.
#[derive(Default)]
pub struct Health {
    counters: Mutex<Counters>,
}

/// Known `#account` statuses (anything else is counted as `other`: a label set stays bounded).
const STATUSES: [&str; 7] = ["active", "takendown", "suspended", "deleted", "deactivated", "desynchronized", "throttled"];

impl Health {
    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn source(&self, name: &str, kind: &'static str) {
        self.lock().sources.entry(name.to_owned()).or_default().kind = kind;
    }

    pub fn connected(&self, name: &str, connected: bool) {
        let mut c = self.lock();
        let source = c.sources.entry(name.to_owned()).or_default();
        if connected && !source.connected {
            source.connects += 1;
        }
        source.connected = connected;
    }

    /// An event from `name`, of `kind` (`commit`, `identity`, …), with `outcome` (`proven`,
    /// `hint`, `ignored`), dated `event_time` by the source.
    pub fn event(&self, name: &str, kind: &'static str, outcome: &'static str, now: i64, event_time: Option<i64>) {
        let mut c = self.lock();
        *c.events.entry((kind, outcome)).or_insert(0) += 1;
        let source = c.sources.entry(name.to_owned()).or_default();
        source.last_event = Some(now);
        if let Some(t) = event_time {
            source.lag = Some(now.saturating_sub(t).max(0));
        }
    }

    /// A connection of `name` ended before delivering anything.
    pub fn failed(&self, name: &str) {
        let mut c = self.lock();
        let source = c.sources.entry(name.to_owned()).or_default();
        source.failures += 1;
        source.unhealthy = true;
    }

    /// `name` delivered a message.
    pub fn delivered(&self, name: &str) {
        if let Some(source) = self.lock().sources.get_mut(name) {
            source.unhealthy = false;
        }
    }

    pub fn gap(&self, name: &str) {
        self.lock().sources.entry(name.to_owned()).or_default().gaps += 1;
    }

    pub fn recheck(&self, why: &'static str) {
        *self.lock().rechecks.entry(why).or_insert(0) += 1;
    }

    pub fn recheck_failed(&self) {
        self.lock().recheck_failures += 1;
    }

    /// A cached record revoked (deleted): `how` is `proven-by-event` or `recheck`.
    pub fn revoked(&self, how: &'static str) {
        *self.lock().revocations.entry(how).or_insert(0) += 1;
    }

    /// A publication pushed (or not) by `watch --publish`.
    pub fn published(&self, ok: bool) {
        *self.lock().publications.entry(ok).or_insert(0) += 1;
    }

    /// A cached proof replaced by a newer one (the record changed, or a fresh proof).
    pub fn changed(&self) {
        self.lock().changes += 1;
    }

    pub fn key_changed(&self, announced: bool) {
        *self.lock().key_changes.entry(announced).or_insert(0) += 1;
    }

    pub fn account(&self, status: &str) {
        let status = if STATUSES.contains(&status) { status } else { "other" };
        *self.lock().accounts.entry(status.to_owned()).or_insert(0) += 1;
    }

    pub fn watched(&self, n: usize) {
        self.lock().watched = n;
    }

    pub fn pending(&self, n: usize) {
        self.lock().pending = n;
    }

    /// A survey of containerd's store: `removed` images removed, `running` containers still
    /// running a revoked image (None: containerd could not be asked).
    pub fn node_survey(&self, removed: usize, running: Option<usize>) {
        let mut c = self.lock();
        c.images_removed += removed as u64;
        *c.surveys.entry(running.is_some()).or_insert(0) += 1;
        if running.is_some() {
            c.revoked_running = running;
        }
    }

    /// Revocations so far (any way).
    pub fn revocations(&self) -> u64 {
        self.lock().revocations.values().sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let c = self.lock();
        let mut out = String::new();
        let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP atproto_verifier_watch_{name} {help}\n# TYPE atproto_verifier_watch_{name} {kind}");
        };
        family(&mut out, "watched_dids", "gauge", "DIDs watched (the trust policy's and those of cached proofs).");
        let _ = writeln!(out, "atproto_verifier_watch_watched_dids {}", c.watched);
        family(&mut out, "pending_rechecks", "gauge", "Signed re-checks waiting or running.");
        let _ = writeln!(out, "atproto_verifier_watch_pending_rechecks {}", c.pending);
        family(&mut out, "source_connected", "gauge", "1 while the source's stream is open.");
        for (name, s) in &c.sources {
            let _ = writeln!(out, "atproto_verifier_watch_source_connected{{source=\"{}\",kind=\"{}\"}} {}", esc(name), s.kind, u8::from(s.connected));
        }
        family(&mut out, "source_healthy", "gauge", "0 after a connection ended without delivering anything, until one delivers.");
        for (name, s) in &c.sources {
            let _ = writeln!(out, "atproto_verifier_watch_source_healthy{{source=\"{}\"}} {}", esc(name), u8::from(!s.unhealthy));
        }
        family(&mut out, "source_failures_total", "counter", "Connections that ended before delivering anything, by source.");
        for (name, s) in &c.sources {
            let _ = writeln!(out, "atproto_verifier_watch_source_failures_total{{source=\"{}\"}} {}", esc(name), s.failures);
        }
        family(&mut out, "source_connects_total", "counter", "Streams opened, by source.");
        for (name, s) in &c.sources {
            let _ = writeln!(out, "atproto_verifier_watch_source_connects_total{{source=\"{}\"}} {}", esc(name), s.connects);
        }
        family(&mut out, "last_event_timestamp_seconds", "gauge", "When the source's last event arrived (this node's clock).");
        for (name, s) in &c.sources {
            if let Some(t) = s.last_event {
                let _ = writeln!(out, "atproto_verifier_watch_last_event_timestamp_seconds{{source=\"{}\"}} {:.3}", esc(name), t as f64 / 1e6);
            }
        }
        family(&mut out, "lag_seconds", "gauge", "How far the last event's own time was behind this node's clock.");
        for (name, s) in &c.sources {
            if let Some(lag) = s.lag {
                let _ = writeln!(out, "atproto_verifier_watch_lag_seconds{{source=\"{}\"}} {:.3}", esc(name), lag as f64 / 1e6);
            }
        }
        family(&mut out, "gaps_total", "counter", "Gaps the source could not replay (each makes a full re-check of its DIDs).");
        for (name, s) in &c.sources {
            let _ = writeln!(out, "atproto_verifier_watch_gaps_total{{source=\"{}\"}} {}", esc(name), s.gaps);
        }
        family(&mut out, "events_total", "counter", "Events of watched DIDs, by kind and what was made of them.");
        for ((kind, outcome), n) in &c.events {
            let _ = writeln!(out, "atproto_verifier_watch_events_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}");
        }
        family(&mut out, "rechecks_total", "counter", "Signed re-checks from the PDS, by cause.");
        for (why, n) in &c.rechecks {
            let _ = writeln!(out, "atproto_verifier_watch_rechecks_total{{why=\"{why}\"}} {n}");
        }
        family(&mut out, "recheck_failures_total", "counter", "Re-checks that could not fetch signed material (network, PDS).");
        let _ = writeln!(out, "atproto_verifier_watch_recheck_failures_total {}", c.recheck_failures);
        family(&mut out, "revocations_total", "counter", "Cached records proven deleted, by how.");
        for how in ["proven-by-event", "recheck", "registry"] {
            let _ = writeln!(out, "atproto_verifier_watch_revocations_total{{how=\"{how}\"}} {}", c.revocations.get(how).copied().unwrap_or(0));
        }
        family(&mut out, "publications_total", "counter", "Bundles published to the fleet's registry by watch --publish, by result.");
        for (ok, result) in [(true, "pushed"), (false, "failed")] {
            let _ = writeln!(out, "atproto_verifier_watch_publications_total{{result=\"{result}\"}} {}", c.publications.get(&ok).copied().unwrap_or(0));
        }
        family(&mut out, "proof_updates_total", "counter", "Cached proofs replaced by newer signed ones.");
        let _ = writeln!(out, "atproto_verifier_watch_proof_updates_total {}", c.changes);
        family(&mut out, "key_changes_total", "counter", "Signing keys of watched DIDs that changed (announced: after an #identity event).");
        for announced in [true, false] {
            let _ =
                writeln!(out, "atproto_verifier_watch_key_changes_total{{announced=\"{announced}\"}} {}", c.key_changes.get(&announced).copied().unwrap_or(0));
        }
        family(&mut out, "images_removed_total", "counter", "Revoked images removed from containerd's store (on_revoke = \"remove-image\").");
        let _ = writeln!(out, "atproto_verifier_watch_images_removed_total {}", c.images_removed);
        family(&mut out, "revoked_containers_running", "gauge", "Containers still running an image whose record is deleted, at the last survey of containerd.");
        if let Some(running) = c.revoked_running {
            let _ = writeln!(out, "atproto_verifier_watch_revoked_containers_running {running}");
        }
        family(&mut out, "node_surveys_total", "counter", "Surveys of containerd's store, by result (failed: containerd could not be asked).");
        for (ok, result) in [(true, "done"), (false, "failed")] {
            let _ = writeln!(out, "atproto_verifier_watch_node_surveys_total{{result=\"{result}\"}} {}", c.surveys.get(&ok).copied().unwrap_or(0));
        }
        family(&mut out, "account_events_total", "counter", "#account events of watched DIDs, by status.");
        for (status, n) in &c.accounts {
            let _ = writeln!(out, "atproto_verifier_watch_account_events_total{{status=\"{status}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_bounded_labels() {
        let health = Health::default();
        health.source("ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos", "pds");
        health.connected("ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos", true);
        health.event("ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos", "commit", "proven", 10_000_000, Some(9_500_000));
        health.revoked("proven-by-event");
        health.key_changed(false);
        health.account("deactivated");
        health.account("some-new-status\"");
        let text = health.render();
        for line in [
            "atproto_verifier_watch_source_connected{source=\"ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos\",kind=\"pds\"} 1",
            "atproto_verifier_watch_lag_seconds{source=\"ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos\"} 0.500",
            "atproto_verifier_watch_events_total{kind=\"commit\",outcome=\"proven\"} 1",
            "atproto_verifier_watch_revocations_total{how=\"proven-by-event\"} 1",
            "atproto_verifier_watch_key_changes_total{announced=\"false\"} 1",
            "atproto_verifier_watch_account_events_total{status=\"other\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(health.revocations(), 1);
    }
}
