//! A Prometheus textfile (node-exporter's textfile collector) written by the refresh timer:
//! pull decisions by outcome and reason (counted from the audit log), cache contents and the
//! age of their oldest entry, and the last refresh's results. Written atomically (temp file,
//! rename), as the collector requires.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::config::Config;
use crate::material::store::{Cache, DidEntry, Kind, ProofEntry};

/// Largest audit log read for counting (the newest part of a larger one).
const MAX_AUDIT_BYTES: u64 = crate::limits::NodeLimits::DEFAULT.audit_log_read as u64;

/// Decision counts from the audit log: (outcome, reason) -> count.
fn decision_counts(path: &Path) -> BTreeMap<(String, String), u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut counts = BTreeMap::new();
    let Ok(mut file) = std::fs::File::open(path) else { return counts };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_AUDIT_BYTES)));
    let mut text = String::new();
    let _ = file.take(MAX_AUDIT_BYTES).read_to_string(&mut text);
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let field = |k: &str| record.get(k).and_then(serde_json::Value::as_str).unwrap_or("unknown").to_owned();
        *counts.entry((field("outcome"), field("reason"))).or_insert(0) += 1;
    }
    counts
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The textfile's contents.
pub fn render(config: &Config, cache: &Cache, now_micros: i64, refreshed: usize, failed: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP atproto_verifier_decisions_total Pull decisions recorded in the audit log, by outcome and reason code.");
    let _ = writeln!(out, "# TYPE atproto_verifier_decisions_total counter");
    if let Some(audit) = &config.audit_log {
        for ((outcome, reason), n) in decision_counts(audit) {
            let _ = writeln!(out, "atproto_verifier_decisions_total{{outcome=\"{}\",reason=\"{}\"}} {n}", escape(&outcome), escape(&reason));
        }
    }
    let age = |t: i64| (now_micros.saturating_sub(t).max(0) as f64) / 1e6;
    let dids: Vec<i64> = cache.all::<DidEntry>(Kind::Did).into_iter().map(|(_, e)| e.fetched_at).collect();
    let proofs: Vec<i64> = cache.all::<ProofEntry>(Kind::Proof).into_iter().map(|(_, e)| e.fetched_at).collect();
    let _ = writeln!(out, "# HELP atproto_verifier_cache_entries Entries in the verifier's cache.");
    let _ = writeln!(out, "# TYPE atproto_verifier_cache_entries gauge");
    let _ = writeln!(out, "atproto_verifier_cache_entries{{kind=\"did\"}} {}", dids.len());
    let _ = writeln!(out, "atproto_verifier_cache_entries{{kind=\"proof\"}} {}", proofs.len());
    let _ = writeln!(out, "# HELP atproto_verifier_cache_oldest_age_seconds Age of the oldest cache entry (since this node fetched or imported it).");
    let _ = writeln!(out, "# TYPE atproto_verifier_cache_oldest_age_seconds gauge");
    for (kind, times) in [("did", &dids), ("proof", &proofs)] {
        if let Some(oldest) = times.iter().min() {
            let _ = writeln!(out, "atproto_verifier_cache_oldest_age_seconds{{kind=\"{kind}\"}} {:.0}", age(*oldest));
        }
    }
    let _ = writeln!(out, "# HELP atproto_verifier_refresh_entries Entries the last cache refresh refreshed or failed to refresh.");
    let _ = writeln!(out, "# TYPE atproto_verifier_refresh_entries gauge");
    let _ = writeln!(out, "atproto_verifier_refresh_entries{{result=\"refreshed\"}} {refreshed}");
    let _ = writeln!(out, "atproto_verifier_refresh_entries{{result=\"failed\"}} {failed}");
    let _ = writeln!(out, "# HELP atproto_verifier_refresh_last_run_timestamp_seconds When the last cache refresh ran.");
    let _ = writeln!(out, "# TYPE atproto_verifier_refresh_last_run_timestamp_seconds gauge");
    let _ = writeln!(out, "atproto_verifier_refresh_last_run_timestamp_seconds {:.0}", now_micros as f64 / 1e6);
    out
}

/// Writes the textfile atomically, if `metrics_file` is configured.
pub fn write(config: &Config, cache: &Cache, now_micros: i64, refreshed: usize, failed: usize) -> Result<(), MetricsError> {
    let Some(path) = &config.metrics_file else { return Ok(()) };
    let failed_with = |problem: String| MetricsError { path: path.display().to_string(), problem };
    let text = render(config, cache, now_micros, refreshed, failed);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| failed_with(e.to_string()))?;
    std::io::Write::write_all(&mut temp, text.as_bytes()).map_err(|e| failed_with(e.to_string()))?;
    // node-exporter reads it as another user.
    let _ = std::fs::set_permissions(temp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644));
    temp.persist(path).map_err(|e| failed_with(e.error.to_string()))?;
    Ok(())
}

/// The textfile could not be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("metrics_file {path}: {problem}")]
pub struct MetricsError {
    pub path: String,
    pub problem: String,
}
