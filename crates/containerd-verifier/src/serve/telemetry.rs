//! What a server counts, and `/metrics` (Prometheus text format 0.0.4): decisions by outcome
//! and reason, request latency by route, the decision cache, work in flight and queued,
//! requests refused for overload, reloads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::decisions::{CacheStats, Decided};
use crate::engine::outcome_label;

/// What `/metrics` reports about the server itself besides the counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerState {
    pub ready: bool,
    /// The config or policy on disk failed to load; the previous generation is in force.
    pub reload_failing: bool,
    /// When the serving certificate expires (seconds since the epoch).
    pub certificate_expires: Option<u64>,
}

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    total: u64,
    sum: f64,
}

/// The counters.
#[derive(Default)]
pub struct Telemetry {
    /// (outcome, reason) → images answered.
    answered: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Decisions the engine computed (not answered from the cache).
    computed: AtomicU64,
    /// route → latency.
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    in_flight: AtomicI64,
    queued: AtomicI64,
    overloaded: AtomicU64,
    deadline_passed: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    tls_reloads: AtomicU64,
    connections: AtomicI64,
    connections_refused: AtomicU64,
    evicted_handshakes: AtomicU64,
    evicted_idle: AtomicU64,
}

impl Telemetry {
    pub fn answered(&self, decided: &Decided) {
        let mut answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        *answered.entry((outcome_label(decided.outcome), decided.reason.code())).or_insert(0) += 1;
    }

    pub fn computed(&self, _decided: &Decided) {
        self.computed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_done(&self, route: &'static str, elapsed: Duration) {
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let histogram = latency.entry(route).or_default();
        let seconds = elapsed.as_secs_f64();
        for (count, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        histogram.total += 1;
        histogram.sum += seconds;
    }

    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn queued(&self, delta: i64) {
        self.queued.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn deadline_passed(&self) {
        self.deadline_passed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloaded(&self, ok: bool) {
        if ok { &self.reloads } else { &self.reload_failures }.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tls_reloaded(&self) {
        self.tls_reloads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection(&self, delta: i64) {
        self.connections.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed to make room for a newer one: `handshake` (still in its TLS
    /// handshake) or `idle` (established, no request in flight).
    pub fn evicted(&self, phase: &'static str) {
        if phase == "handshake" { &self.evicted_handshakes } else { &self.evicted_idle }.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, cache: CacheStats, state: &ServerState) -> String {
        let ready = state.ready;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[String]| {
            let _ = writeln!(out, "# HELP atproto_verifier_{name} {help}");
            let _ = writeln!(out, "# TYPE atproto_verifier_{name} {kind}");
            for line in lines {
                let _ = writeln!(out, "atproto_verifier_{name}{line}");
            }
        };
        let answered: Vec<String> = self
            .answered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((outcome, reason), n)| format!("{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"))
            .collect();
        metric("admission_decisions_total", "counter", "Images answered, by outcome and reason code (cached answers included).", &answered);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0);
        metric(
            "admission_decisions_computed_total",
            "counter",
            "Decisions the engine computed (cache misses that ran).",
            &[format!(" {}", load(&self.computed))],
        );
        metric("admission_cache_hits_total", "counter", "Images answered from the in-memory decision cache.", &[format!(" {}", cache.hits)]);
        metric(
            "admission_cache_joined_total",
            "counter",
            "Images that waited for an identical decision in flight (single flight).",
            &[format!(" {}", cache.joined)],
        );
        metric("admission_cache_misses_total", "counter", "Images that started a decision.", &[format!(" {}", cache.misses)]);
        metric("admission_cache_entries", "gauge", "Decisions held in memory.", &[format!(" {}", cache.entries)]);
        metric("admission_in_flight", "gauge", "Requests being answered.", &[format!(" {}", gauge(&self.in_flight))]);
        metric("admission_queued", "gauge", "Decisions waiting for a worker.", &[format!(" {}", gauge(&self.queued))]);
        metric(
            "admission_overloaded_total",
            "counter",
            "Requests refused at once because the work queue or the request limit was full.",
            &[format!(" {}", load(&self.overloaded))],
        );
        metric(
            "admission_deadline_exceeded_total",
            "counter",
            "Images not decided before the request's deadline.",
            &[format!(" {}", load(&self.deadline_passed))],
        );
        metric("admission_connections", "gauge", "Open client connections.", &[format!(" {}", gauge(&self.connections))]);
        metric(
            "admission_connections_refused_total",
            "counter",
            "Connections closed at once because every connection slot was answering a request.",
            &[format!(" {}", load(&self.connections_refused))],
        );
        metric(
            "admission_connections_evicted_total",
            "counter",
            "Connections closed to make room for a newer one, by phase (handshake: still in TLS; idle: no request in flight).",
            &[format!("{{phase=\"handshake\"}} {}", load(&self.evicted_handshakes)), format!("{{phase=\"idle\"}} {}", load(&self.evicted_idle))],
        );
        metric(
            "admission_reloads_total",
            "counter",
            "Config and policy reloads, by result.",
            &[format!("{{result=\"ok\"}} {}", load(&self.reloads)), format!("{{result=\"failed\"}} {}", load(&self.reload_failures))],
        );
        metric("admission_tls_reloads_total", "counter", "Certificate reloads.", &[format!(" {}", load(&self.tls_reloads))]);
        metric("admission_ready", "gauge", "1 when a trust policy is loaded and the server is not draining.", &[format!(" {}", u8::from(ready))]);
        metric(
            "admission_reload_failing",
            "gauge",
            "1 while the config or policy files on disk do not load (the previous ones are in force).",
            &[format!(" {}", u8::from(state.reload_failing))],
        );
        if let Some(expires) = state.certificate_expires {
            metric(
                "admission_tls_certificate_expiry_timestamp_seconds",
                "gauge",
                "When the serving certificate in force expires (seconds since the epoch).",
                &[format!(" {expires}")],
            );
        }
        let latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lines = Vec::new();
        for (route, histogram) in latency.iter() {
            for (count, bound) in histogram.counts.iter().zip(BUCKETS) {
                lines.push(format!("_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"));
            }
            lines.push(format!("_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", histogram.total));
            lines.push(format!("_sum{{route=\"{route}\"}} {}", histogram.sum));
            lines.push(format!("_count{{route=\"{route}\"}} {}", histogram.total));
        }
        metric("admission_request_duration_seconds", "histogram", "Time to answer a request, by route.", &lines);
        out
    }
}
