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

/// An age for people: `840 ms`, `12 s`, `3 min 20 s`, `5 h 2 min`, `3 days 4 h` (two units
/// at most, rounded down).
pub fn human_age(micros: i64) -> String {
    let micros = micros.max(0);
    let (ms, s) = (micros / 1_000, micros / 1_000_000);
    let (min, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if ms < 1 => "less than a millisecond".to_owned(),
        _ if s < 1 => format!("{ms} ms"),
        _ if min < 1 => format!("{s} s"),
        _ if h < 1 => with_rest(min, "min", s % 60, "s"),
        _ if d < 1 => with_rest(h, "h", min % 60, "min"),
        _ => with_rest(d, if d == 1 { "day" } else { "days" }, h % 24, "h"),
    }
}

fn with_rest(major: i64, major_unit: &str, minor: i64, minor_unit: &str) -> String {
    if minor == 0 { format!("{major} {major_unit}") } else { format!("{major} {major_unit} {minor} {minor_unit}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_human_units() {
        assert_eq!(human_age(463_036), "463 ms");
        assert_eq!(human_age(12_400_000), "12 s");
        assert_eq!(human_age(200_000_000), "3 min 20 s");
        assert_eq!(human_age(3 * 3_600_000_000), "3 h");
        assert_eq!(human_age(86_400_000_000 + 4 * 3_600_000_000 + 1), "1 day 4 h");
        assert_eq!(human_age(-5), "less than a millisecond");
    }
}
