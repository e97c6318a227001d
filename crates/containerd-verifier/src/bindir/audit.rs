//! The audit log: one JSON line per decision, appended with one `write()` under `O_APPEND`, so
//! concurrent verifiers never interleave within a line.

use std::io::Write;

use serde_json::Value as Json;

use crate::config::Config;

/// Appends `record` to the configured audit log, if any; a failure is said, never blocking.
pub(crate) fn record(config: &Config, record: Json) {
    let Some(path) = &config.audit_log else { return };
    // A log others can write is no record: not written to, and said.
    if let Err(why) = crate::fsio::check_private(path) {
        crate::log::warn(&format!("audit log not written: {why} — this decision is not recorded; chmod 600 it (atproto-verifier doctor)"));
        return;
    }
    let line = format!("{record}\n");
    use std::os::unix::fs::OpenOptionsExt;
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(crate::fsio::nofollow())
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = result {
        // Reported on every decision it fails for, never blocking the pull.
        crate::log::warn(&format!(
            "audit log {} cannot be written: {e} — this decision is not recorded; check the directory exists and is writable (atproto-verifier doctor)",
            path.display()
        ));
    }
}

/// This node's clock, as an RFC 3339 time for the record.
pub(crate) fn now_string() -> String {
    atproto_sig_core::syntax::format_datetime_micros(crate::clock::now_micros(None).unwrap_or(0))
}
