//! Reading operator-supplied files with a size cap, and the clock.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A file that could not be read (distinct from one that was read and found invalid).
#[derive(Debug)]
pub struct InputError {
    pub path: PathBuf,
    pub problem: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {}: {}", self.path.display(), self.problem)
    }
}

/// Reads at most `max` bytes of `path`; a larger file is an error, not a truncation.
pub fn read_capped(path: &Path, max: usize) -> Result<Vec<u8>, InputError> {
    let error = |problem: String| InputError { path: path.to_owned(), problem };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).map_err(|e| error(e.to_string()))?;
    if bytes.len() > max {
        return Err(error(format!("larger than the {max}-byte limit")));
    }
    Ok(bytes)
}

/// A `--now` that is not a datetime.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--now {0:?} is not an RFC 3339 datetime such as 2026-01-01T00:00:00Z")]
pub struct BadNow(pub String);

/// Now, in microseconds since the Unix epoch, or the `--now` override (RFC 3339).
pub fn now_micros(override_time: Option<&str>) -> Result<i64, BadNow> {
    match override_time {
        Some(text) => atproto_sig_core::syntax::parse_datetime_micros(text).ok_or_else(|| BadNow(text.chars().take(100).collect())),
        None => Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))),
    }
}
