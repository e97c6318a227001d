//! The HTTP client facade of one decision, over any [`Fetch`]: URLs checked, per-request
//! timeouts clamped to what is left of the decision budget, a size cap on every body, requests
//! counted, and the one in flight marked for whoever watches the decision ([`InFlight`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Deadline, Exchange, Fetch, Fetched, NetError, Tls};

/// The HTTP client facade of one decision: checks URLs, clamps every request's timeout to what
/// is left of the budget, counts requests, marks the one in flight for the watchdog, and hands
/// the exchange to a [`Fetch`] (ureq on the wire, or an in-memory web in tests).
pub struct Http {
    fetch: Arc<dyn Fetch>,
    tls: Tls,
    request_timeout: Duration,
    deadline: Deadline,
    /// Shared by every client derived with `with_tls`, so a decision counts all its requests.
    requests: Arc<AtomicUsize>,
    in_flight: InFlight,
}

impl Http {
    /// A client over `fetch`, marking its requests in `in_flight`.
    pub fn new(fetch: Arc<dyn Fetch>, request_timeout: Duration, deadline: Deadline, in_flight: InFlight) -> Http {
        Http { fetch, tls: Tls::default(), request_timeout, deadline, requests: Arc::new(AtomicUsize::new(0)), in_flight }
    }

    /// A client for endpoints with their own TLS settings, sharing budget and counters.
    pub fn with_tls(&self, tls: &Tls) -> Http {
        Http {
            fetch: Arc::clone(&self.fetch),
            tls: tls.clone(),
            request_timeout: self.request_timeout,
            deadline: self.deadline,
            requests: Arc::clone(&self.requests),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Requests made so far by this client.
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
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
            return Err(NetError::BadUrl(crate::limits::short(&crate::limits::without_userinfo(url), 200)));
        }
        let timeout = self.timeout()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let _waiting = self.in_flight.begin(url);
        self.fetch.exchange(&Exchange { method, url, headers, body, tls: &self.tls, timeout, deadline: self.deadline, limit })
    }
}

/// The request in flight of one decision, if any: when its time budget runs out, whoever
/// watches the decision (the containerd entry's watchdog, a server's request timer) names what
/// it was waiting for, and blames the network only when it really was waiting on it. Each
/// decision has its own; clones share it.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    origin: Arc<Mutex<Option<String>>>,
}

impl InFlight {
    /// Marks a request to `url` in flight for as long as the guard lives.
    fn begin(&self, url: &str) -> Waiting<'_> {
        let origin: String = crate::limits::without_userinfo(url).split('/').take(3).collect::<Vec<_>>().join("/");
        *self.slot() = Some(origin);
        Waiting { in_flight: self }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.origin.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The origin of the request in flight right now, if any.
    pub fn origin(&self) -> Option<String> {
        self.slot().clone()
    }
}

/// A request in flight.
struct Waiting<'a> {
    in_flight: &'a InFlight,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        *self.in_flight.slot() = None;
    }
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
