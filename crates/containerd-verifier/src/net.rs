//! HTTP for resolution and registries: one blocking ureq agent (no async runtime), explicit
//! connect and per-request timeouts clamped to what is left of the decision budget, a size cap
//! on every body, no automatic redirects (callers decide whether a redirect may cross hosts),
//! and errors that stay network errors: a timeout is never a bad signature.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::remote::{Exchange, Fetch};

/// The end of the time budget for one decision.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    end: Instant,
}

impl Deadline {
    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Deadline {
        Deadline { end: Instant::now() + budget }
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// True once passed.
    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }
}

/// Why a request produced no usable response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The decision budget ran out before or during the request.
    #[error("the time budget ran out")]
    Deadline,
    /// The request took longer than its own timeout.
    #[error("{0} did not answer in time")]
    Timeout(String),
    /// DNS, connect or TLS failure.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The body was larger than allowed.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// Anything else on the wire.
    #[error("{0}")]
    Io(String),
    /// A URL we refuse to request.
    #[error("refusing to request {0:?}")]
    BadUrl(String),
}

/// A response read in full (within its size cap).
#[derive(Clone, Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Fetched {
    /// First header value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// TLS choices for one endpoint (containerd hosts.toml `ca`, `client`, `skip_verify`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// Extra CA files, added to the trusted roots for that endpoint (as containerd adds them to
    /// the system pool).
    pub ca_files: Vec<PathBuf>,
    /// Client certificates: (certificate file, key file, or none when the first holds both).
    pub client_pairs: Vec<(PathBuf, Option<PathBuf>)>,
    /// Accept any certificate (hosts.toml `skip_verify = true`).
    pub skip_verify: bool,
}

/// The HTTP client facade of one decision: checks URLs, clamps every request's timeout to what
/// is left of the budget, counts requests, marks the one in flight for the watchdog, and hands
/// the exchange to a [`Fetch`] (ureq on the wire, or an in-memory web in tests).
pub struct Http {
    fetch: Rc<dyn Fetch>,
    tls: Tls,
    request_timeout: Duration,
    deadline: Deadline,
    /// Shared by every client derived with `with_tls`, so a decision counts all its requests.
    requests: Rc<Cell<usize>>,
}

impl Http {
    /// A client on the real network (ureq).
    pub fn new(connect_timeout: Duration, request_timeout: Duration, deadline: Deadline) -> Http {
        Http::with_fetch(Rc::new(crate::ureq_fetch::UreqFetch::new(connect_timeout)), request_timeout, deadline)
    }

    /// A client over any [`Fetch`].
    pub fn with_fetch(fetch: Rc<dyn Fetch>, request_timeout: Duration, deadline: Deadline) -> Http {
        Http { fetch, tls: Tls::default(), request_timeout, deadline, requests: Rc::new(Cell::new(0)) }
    }

    /// A client for endpoints with their own TLS settings, sharing budget and counters.
    pub fn with_tls(&self, tls: &Tls) -> Http {
        Http {
            fetch: Rc::clone(&self.fetch),
            tls: tls.clone(),
            request_timeout: self.request_timeout,
            deadline: self.deadline,
            requests: Rc::clone(&self.requests),
        }
    }

    /// Requests made so far by this client.
    pub fn request_count(&self) -> usize {
        self.requests.get()
    }

    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    fn timeout(&self) -> Result<Duration, NetError> {
        let remaining = self.deadline.remaining();
        if remaining < Duration::from_millis(20) {
            return Err(NetError::Deadline);
        }
        Ok(self.request_timeout.min(remaining))
    }

    /// GET with headers; the body is read up to `limit` bytes (more is an error).
    pub fn get(&self, url: &str, headers: &[(&str, String)], limit: usize) -> Result<Fetched, NetError> {
        self.send("GET", url, headers, None, limit)
    }

    /// Sends a request with an optional body.
    pub fn send(&self, method: &str, url: &str, headers: &[(&str, String)], body: Option<&[u8]>, limit: usize) -> Result<Fetched, NetError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(NetError::BadUrl(url.chars().take(200).collect()));
        }
        let timeout = self.timeout()?;
        self.requests.set(self.requests.get() + 1);
        let _waiting = Waiting::begin(url);
        self.fetch.exchange(&Exchange { method, url, headers, body, tls: &self.tls, timeout, deadline: self.deadline, limit })
    }
}

/// The request in flight, if any: when the time budget runs out, the watchdog names what the
/// decision was waiting for, and blames the network only when it really was waiting on it.
static WAITING_FOR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Marks a request in flight for as long as it lives.
struct Waiting;

impl Waiting {
    fn begin(url: &str) -> Waiting {
        let origin: String = url.split('/').take(3).collect::<Vec<_>>().join("/");
        if let Ok(mut slot) = WAITING_FOR.lock() {
            *slot = Some(origin);
        }
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut slot) = WAITING_FOR.lock() {
            *slot = None;
        }
    }
}

/// The origin of the request in flight right now, if any.
pub fn waiting_for() -> Option<String> {
    WAITING_FOR.lock().ok().and_then(|slot| slot.clone())
}

/// True for hosts where plain http is acceptable without being asked (loopback only).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or_default();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    is_loopback_host(authority)
}

/// True for `localhost` and loopback IP addresses (127.0.0.0/8, ::1), with or without a port.
/// Parsed as IP: `127.example.com` is a name like any other, not loopback.
pub fn is_loopback_host(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((addr, tail)) if tail.is_empty() || tail.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) => addr,
            _ => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_parsed_as_ip_not_as_a_prefix() {
        for url in ["http://127.0.0.1:5000/v2/", "http://127.1.2.3/", "http://[::1]:5000/x", "http://localhost:80", "https://LOCALHOST/"] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://127.evil.example/",
            "http://127.0.0.1.evil.example:5000/",
            "http://127.0.0.1@evil.example/",
            "http://[::2]:1/",
            "http://10.0.0.1/",
            "http://localhost.evil.example/",
            "ftp://127.0.0.1/",
            "http://127.0.0.1:x/",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
}
