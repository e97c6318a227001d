//! Politeness towards the hosts we ask (PDSes, the PLC directory, handle hosts, registries):
//! a host that answers HTTP 429 or 503 with `Retry-After` (or `RateLimit-Reset` once
//! `RateLimit-Remaining` is 0) is not asked again before the time it names, by any thread of
//! this process nor, through a small file beside the cache, by any other process of this node
//! (the containerd entry runs once per pull); the refusal is its own error
//! ([`NetError::RateLimited`]: undecided, with the wait, and cached material within `max_stale`
//! stands in meanwhile). Requests in flight to one host are bounded across threads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{Exchange, Fetch, Fetched, NetError};

/// The longest wait a host may ask for: a hostile `Retry-After` cannot silence a host for ever.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Requests in flight to one host at once, across every thread of the process.
pub const PER_HOST: usize = 8;

#[derive(Default)]
struct Hosts {
    /// host → not before (this process's monotonic clock).
    paused: HashMap<String, Instant>,
    /// host → requests in flight.
    in_flight: HashMap<String, usize>,
}

/// A [`Fetch`] that honours rate limits and bounds requests per host.
pub struct Polite {
    inner: Arc<dyn Fetch>,
    hosts: Mutex<Hosts>,
    freed: Condvar,
    /// Where pauses are shared with the node's other processes (none: this process only).
    dir: Option<PathBuf>,
}

impl Polite {
    pub fn new(inner: Arc<dyn Fetch>, dir: Option<PathBuf>) -> Polite {
        Polite { inner, hosts: Mutex::new(Hosts::default()), freed: Condvar::new(), dir }
    }

    fn lock(&self) -> MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn file(&self, host: &str) -> Option<PathBuf> {
        let name: String = Sha256::digest(host.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.dir.as_ref().map(|d| d.join(name))
    }

    /// How long `host` still asks us to wait, if it does.
    fn pause_left(&self, host: &str) -> Option<Duration> {
        let now = Instant::now();
        if let Some(until) = self.lock().paused.get(host).copied().filter(|u| *u > now) {
            return Some(until - now);
        }
        // Another process of this node may have been told (unix seconds in the file).
        let until = crate::fsio::read_capped(&self.file(host)?, 64).ok().and_then(|b| String::from_utf8(b).ok()).and_then(|t| t.trim().parse::<u64>().ok())?;
        let left = Duration::from_secs(until).checked_sub(SystemTime::now().duration_since(UNIX_EPOCH).ok()?)?;
        Some(left.min(MAX_WAIT))
    }

    fn pause(&self, host: &str, wait: Duration) {
        let wait = wait.min(MAX_WAIT);
        {
            let mut hosts = self.lock();
            // Pauses that ran out are dropped: the map holds only hosts that still ask us to wait.
            let now = Instant::now();
            hosts.paused.retain(|_, until| *until > now);
            hosts.paused.insert(host.to_owned(), now + wait);
        }
        if let (Some(path), Ok(now)) = (self.file(host), SystemTime::now().duration_since(UNIX_EPOCH)) {
            // Best effort: a node whose cache is not writable by this user pauses this process only.
            let until = (now + wait).as_secs() + 1;
            let _ = std::fs::create_dir_all(path.parent().unwrap_or(&path)).and_then(|()| {
                let temp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&temp, until.to_string()).and_then(|()| std::fs::rename(&temp, &path))
            });
        }
    }

    /// Takes one of `host`'s request slots, waiting at most until `by`.
    fn take_slot(&self, host: &str, by: Instant) -> Result<Slot<'_>, NetError> {
        let mut hosts = self.lock();
        loop {
            let n = hosts.in_flight.entry(host.to_owned()).or_insert(0);
            if *n < PER_HOST {
                *n += 1;
                return Ok(Slot { polite: self, host: host.to_owned() });
            }
            let now = Instant::now();
            if now >= by {
                return Err(NetError::Timeout(format!("{host} (already {PER_HOST} requests in flight from this process)")));
            }
            hosts = self.freed.wait_timeout(hosts, by - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// One request slot of a host, given back when dropped.
struct Slot<'a> {
    polite: &'a Polite,
    host: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut hosts = self.polite.lock();
        if let Some(n) = hosts.in_flight.get_mut(&self.host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                hosts.in_flight.remove(&self.host);
            }
        }
        self.polite.freed.notify_all();
    }
}

/// The `host[:port]` of a URL (lowercased; userinfo dropped).
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit('@').next().unwrap_or("").to_ascii_lowercase()
}

/// The wait a 429 or 503 answer asks for: `Retry-After` (seconds or an HTTP date), else
/// `RateLimit-Reset` (seconds) when `RateLimit-Remaining` is 0. None: no wait named.
pub fn asked_wait(fetched: &Fetched, now: SystemTime) -> Option<Duration> {
    if !matches!(fetched.status, 429 | 503) {
        return None;
    }
    if let Some(value) = fetched.header("retry-after").map(str::trim) {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds).min(MAX_WAIT));
        }
        if let Some(at) = parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_WAIT));
        }
    }
    let remaining = fetched.header("ratelimit-remaining").and_then(|v| v.trim().parse::<u64>().ok());
    let reset = fetched.header("ratelimit-reset").and_then(|v| v.trim().parse::<u64>().ok());
    match (remaining, reset) {
        (Some(0), Some(seconds)) => Some(Duration::from_secs(seconds).min(MAX_WAIT)),
        // A 429 that names no time: a short pause all the same, so a burst does not hammer it.
        _ if fetched.status == 429 => Some(Duration::from_secs(1)),
        _ => None,
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 requires senders to use.
fn parse_http_date(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].iter().position(|m| m == month)? + 1;
    let rfc3339 = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    let micros = atproto_sig_core::syntax::parse_datetime_micros(&rfc3339)?;
    UNIX_EPOCH.checked_add(Duration::from_micros(u64::try_from(micros).ok()?))
}

impl Fetch for Polite {
    fn exchange(&self, exchange: &Exchange<'_>) -> Result<Fetched, NetError> {
        let host = host_of(exchange.url);
        if let Some(left) = self.pause_left(&host) {
            // Rounded up: a wait of 120 s asked a moment ago still reads 120 s.
            let wait_secs = (left + Duration::from_millis(999)).as_secs().max(1);
            return Err(NetError::RateLimited { host, wait_secs });
        }
        let _slot = self.take_slot(&host, Instant::now() + exchange.timeout)?;
        let fetched = self.inner.exchange(exchange)?;
        if let Some(wait) = asked_wait(&fetched, SystemTime::now()) {
            self.pause(&host, wait);
            return Err(NetError::RateLimited { host, wait_secs: wait.as_secs().max(1) });
        }
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::memory::MemoryFetch;
    use crate::remote::{Deadline, Tls};

    fn get(fetch: &dyn Fetch, url: &str) -> Result<Fetched, NetError> {
        fetch.exchange(&Exchange {
            method: "GET",
            url,
            headers: &[],
            body: None,
            tls: &Tls::default(),
            timeout: Duration::from_secs(2),
            deadline: Deadline::after(Duration::from_secs(2)),
            limit: 1 << 20,
        })
    }

    #[test]
    fn a_host_that_asks_us_to_wait_is_not_asked_again_before_then_by_any_process() {
        let dir = tempfile::tempdir().unwrap();
        let web = Arc::new(MemoryFetch::new());
        web.serve_with_headers("https://pds.test/a", 429, vec![("retry-after".into(), "30".into())], "slow down");
        web.serve("https://other.test/a", 200, "fine");
        let polite = Polite::new(web.clone(), Some(dir.path().to_owned()));
        let first = get(&polite, "https://pds.test/a");
        assert!(matches!(first, Err(NetError::RateLimited { ref host, wait_secs: 30 }) if host == "pds.test"), "{first:?}");
        let asked = web.requested().len();
        // Not asked again, whatever the path; other hosts are not affected.
        assert!(matches!(get(&polite, "https://PDS.test/b"), Err(NetError::RateLimited { .. })));
        assert_eq!(web.requested().len(), asked);
        assert!(get(&polite, "https://other.test/a").is_ok());
        // Another process of this node (a new Polite over the same directory) waits too.
        let other_process = Polite::new(web.clone(), Some(dir.path().to_owned()));
        assert!(matches!(get(&other_process, "https://pds.test/a"), Err(NetError::RateLimited { wait_secs, .. }) if (25..=32).contains(&wait_secs)));
        assert_eq!(web.requested().len(), asked + 1, "only other.test was asked");
    }

    #[test]
    fn waits_are_read_from_retry_after_dates_and_ratelimit_headers_and_capped() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let answer = |status, headers: &[(&str, &str)]| Fetched {
            status,
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: Vec::new(),
        };
        assert_eq!(asked_wait(&answer(503, &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]), now), Some(Duration::from_secs(0)));
        let later = UNIX_EPOCH + Duration::from_secs(784_111_777 - 120);
        assert_eq!(asked_wait(&answer(503, &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]), later), Some(Duration::from_secs(120)));
        assert_eq!(asked_wait(&answer(429, &[("ratelimit-remaining", "0"), ("ratelimit-reset", "42")]), now), Some(Duration::from_secs(42)));
        assert_eq!(asked_wait(&answer(429, &[("retry-after", "999999999")]), now), Some(MAX_WAIT));
        assert_eq!(asked_wait(&answer(429, &[]), now), Some(Duration::from_secs(1)));
        // A 503 naming no time is an ordinary failure; a 200 is never a pause.
        assert_eq!(asked_wait(&answer(503, &[]), now), None);
        assert_eq!(asked_wait(&answer(200, &[("retry-after", "30")]), now), None);
    }

    #[test]
    fn requests_in_flight_to_one_host_are_bounded_across_threads() {
        let web = Arc::new(MemoryFetch::new());
        web.serve("https://busy.test/x", 200, "ok");
        web.delay("https://busy.test/x", Duration::from_millis(200));
        let polite = Arc::new(Polite::new(web.clone(), None));
        let peak = Arc::new(Mutex::new(0usize));
        let threads: Vec<_> = (0..PER_HOST * 2)
            .map(|_| {
                let (polite, peak) = (Arc::clone(&polite), Arc::clone(&peak));
                std::thread::spawn(move || {
                    let result = get(&*polite, "https://busy.test/x");
                    let now = polite.lock().in_flight.get("busy.test").copied().unwrap_or(0);
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(now);
                    result.is_ok()
                })
            })
            .collect();
        let ok = threads.into_iter().map(|t| t.join().unwrap()).filter(|ok| *ok).count();
        assert_eq!(ok, PER_HOST * 2, "every request was made, in turns");
        assert!(*peak.lock().unwrap() <= PER_HOST);
        assert!(polite.lock().in_flight.is_empty(), "every slot given back");
    }

    #[test]
    fn hosts_are_authorities_without_userinfo() {
        assert_eq!(host_of("https://user:pw@PDS.Example:8443/xrpc?x=1"), "pds.example:8443");
        assert_eq!(host_of("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
    }
}
