//! The node's clock: the only clock a decision reads, read once by the adapter and passed in
//! (`Request::now_micros`), or overridden with `--now` for file-only checks.

/// A `--now` that is not a datetime.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--now {0:?} is not an RFC 3339 datetime such as 2026-01-01T00:00:00Z")]
pub struct BadNow(pub String);

/// Now, in microseconds since the Unix epoch, or the `--now` override (RFC 3339).
pub fn now_micros(override_time: Option<&str>) -> Result<i64, BadNow> {
    match override_time {
        Some(text) => atproto_sig_core::syntax::parse_datetime_micros(text).ok_or_else(|| BadNow(crate::limits::short(text, 100))),
        None => Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))),
    }
}
