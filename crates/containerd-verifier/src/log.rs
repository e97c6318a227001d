//! Diagnostic lines on stderr, in logfmt (`level=warn msg="…"`), one per line. containerd
//! copies a verifier's stderr into its debug log, where key=value lines read like its own.
//! Under systemd (`JOURNAL_STREAM` set, as for the refresh service) each line starts with the
//! sd-daemon priority prefix (`<4>` for a warning), so the journal files it at its level.
//! The level is `--log-level`, else `ATPROTO_VERIFIER_LOG`, else `info`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Environment variable naming the log level.
pub const LOG_ENV: &str = "ATPROTO_VERIFIER_LOG";

/// Severity, in syslog numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    fn parse(text: &str) -> Option<Level> {
        match text.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }
}

/// 0 means "not set yet": the environment (or `info`) is read on first use.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// Sets the level (the `--log-level` flag).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

fn level() -> u8 {
    match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let level = std::env::var(LOG_ENV).ok().and_then(|v| Level::parse(&v)).unwrap_or(Level::Info) as u8;
            LEVEL.store(level, Ordering::Relaxed);
            level
        }
        n => n,
    }
}

/// The line for `msg` at `level`, with `fields` (values quoted when they need it).
pub fn format_line(level: Level, msg: &str, fields: &[(&str, &str)], journal: bool) -> String {
    let quote = |v: &str| {
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=') { v.to_owned() } else { format!("{v:?}") }
    };
    let mut line = String::new();
    if journal {
        line.push_str(&format!("<{}>", level as u8));
    }
    line.push_str(&format!("level={} msg={}", level.name(), quote(msg)));
    for (k, v) in fields {
        line.push_str(&format!(" {k}={}", quote(v)));
    }
    line.replace('\n', " ")
}

/// Writes `msg` to stderr if `level` is enabled.
pub fn log(level: Level, msg: &str, fields: &[(&str, &str)]) {
    if (level as u8) <= self::level() {
        eprintln!("{}", format_line(level, msg, fields, std::env::var_os("JOURNAL_STREAM").is_some()));
    }
}

pub fn warn(msg: &str) {
    log(Level::Warn, msg, &[]);
}

pub fn info(msg: &str) {
    log(Level::Info, msg, &[]);
}

pub fn debug(msg: &str) {
    log(Level::Debug, msg, &[]);
}

/// Where the diagnostics of one decision (or one job) go: collected, so the adapter says them
/// with the decision they belong to (containerd's debug log, a server's log line with its
/// request id), or straight to stderr (one-shot commands). Clones share the collection.
#[derive(Clone, Debug, Default)]
pub struct Notes {
    lines: Option<Arc<Mutex<Vec<String>>>>,
}

impl Notes {
    /// Notes kept for the caller to take.
    pub fn collect() -> Notes {
        Notes { lines: Some(Arc::default()) }
    }

    /// Notes written to stderr as they come.
    pub fn stderr() -> Notes {
        Notes { lines: None }
    }

    fn lines(&self) -> Option<std::sync::MutexGuard<'_, Vec<String>>> {
        self.lines.as_ref().map(|l| l.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A note (info level).
    pub fn push(&self, line: String) {
        match self.lines() {
            Some(mut lines) => lines.push(line),
            None => info(&line),
        }
    }

    /// A problem worth a warning (said as `warning: …` among collected notes).
    pub fn warn(&self, line: String) {
        match self.lines() {
            Some(mut lines) => lines.push(format!("warning: {line}")),
            None => warn(&line),
        }
    }

    /// The collected notes, taken (none for stderr notes).
    pub fn take(&self) -> Vec<String> {
        self.lines().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_lines_with_journal_priorities() {
        assert_eq!(format_line(Level::Warn, "cache entry corrupt", &[("path", "/var/x y")], false), "level=warn msg=\"cache entry corrupt\" path=\"/var/x y\"");
        assert_eq!(format_line(Level::Info, "ok", &[("n", "3")], true), "<6>level=info msg=ok n=3");
        assert!(!format_line(Level::Error, "two\nlines", &[], false).contains('\n'));
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
    }
}
