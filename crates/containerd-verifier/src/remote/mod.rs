//! The world, passed in: what a decision (or a batch job, or a long-running adapter) reaches
//! the outside through. A [`Fetch`] for HTTP, a [`Resolve`] for DNS, and, for the firehose
//! watcher, a [`Subscribe`] for streams of frames. The words these traits speak ([`Deadline`],
//! [`NetError`], [`Fetched`], [`Tls`], [`Exchange`]) live here, beside them, so every module
//! imports this one and this one imports none of them.
//!
//! The binary's real implementations are `ureq` (HTTP) and `dns` (the system's nameservers),
//! put together in one place, [`system`]; engine tests and the whole-engine fuzz target use
//! the in-memory ones in `memory` (feature `testkit`), so every remote answer can be chosen,
//! hostile ones included, with no server and no socket. Everything here is `Send + Sync`: one
//! [`Remote`] serves every worker thread of a server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod dns;
pub mod http;
#[cfg(any(test, feature = "testkit"))]
pub mod memory;
pub mod polite;
pub mod system;
pub mod ureq;
pub mod ws;

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

    /// A deadline at `end`.
    pub fn at(end: Instant) -> Deadline {
        Deadline { end }
    }

    /// When it passes.
    pub fn end(&self) -> Instant {
        self.end
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// True once passed.
    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// `wanted`, or less when less is left.
    pub fn clamp(&self, wanted: Duration) -> Duration {
        wanted.min(self.remaining())
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
    /// The host asked us (HTTP 429 or 503 with `Retry-After` or `RateLimit-*`) not to ask again
    /// for a while: not asked before then.
    #[error("{host} asks us to wait {wait_secs}s before asking again (HTTP 429/503): not asked before then")]
    RateLimited { host: String, wait_secs: u64 },
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

/// One HTTP exchange, as the client facade ([`http::Http`]) hands it to a [`Fetch`]: the URL
/// is already checked (http or https), the timeout already clamped to the decision's budget.
pub struct Exchange<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, String)],
    pub body: Option<&'a [u8]>,
    /// TLS settings of the endpoint (hosts.toml `ca`, `client`, `skip_verify`).
    pub tls: &'a Tls,
    /// The most this exchange may take.
    pub timeout: Duration,
    /// The end of the whole decision's budget (a timeout past it is `NetError::Deadline`).
    pub deadline: Deadline,
    /// Largest body read; more is `NetError::TooLarge`.
    pub limit: usize,
}

/// HTTP: one request, one response read in full within `limit`, no redirects followed.
pub trait Fetch: Send + Sync {
    fn exchange(&self, exchange: &Exchange<'_>) -> Result<Fetched, NetError>;
}

/// DNS: the TXT records of one name (none for NXDOMAIN), within `timeout`.
pub trait Resolve: Send + Sync {
    fn txt(&self, name: &str, timeout: Duration) -> Result<Vec<String>, DnsError>;
}

/// Why a DNS question got no answer: always a network failure, never "no such record".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("no time left for DNS")]
    NoTime,
    #[error("{0:?} is not a DNS name")]
    BadName(String),
    #[error("no nameserver configured")]
    NoServer,
    #[error("{server}: {problem}")]
    Failed { server: String, problem: String },
    #[error("{0}")]
    Malformed(String),
}

/// One message of a stream (a WebSocket frame's payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Binary(Vec<u8>),
    Text(String),
}

/// An open stream of frames from one source.
pub trait Stream: Send {
    /// The next frame, waiting at most `timeout` (`NetError::Timeout` when none came);
    /// `Ok(None)` once the source closed the stream. A frame over `limit` bytes is
    /// `NetError::TooLarge` and ends the stream.
    fn next(&mut self, timeout: Duration, limit: usize) -> Result<Option<Frame>, NetError>;
    /// Sends a text message to the source (Jetstream's `options_update`).
    fn send_text(&mut self, text: &str) -> Result<(), NetError>;
}

/// Streams (the firehose's `subscribeRepos`, Jetstream): the seam the watcher reads events
/// through, as the engine reads documents through [`Fetch`]. It is separate from [`Remote`]
/// because only the watcher subscribes; a decision never does.
pub trait Subscribe: Send + Sync {
    /// Opens `url` (ws or wss), connecting within `timeout`.
    fn subscribe(&self, url: &str, timeout: Duration) -> Result<Box<dyn Stream>, NetError>;
}

/// The outside world of decisions: shared by every decision and every worker thread.
#[derive(Clone)]
pub struct Remote {
    pub fetch: Arc<dyn Fetch>,
    pub resolve: Arc<dyn Resolve>,
}

impl Remote {
    /// A world made of these two.
    pub fn new(fetch: Arc<dyn Fetch>, resolve: Arc<dyn Resolve>) -> Remote {
        Remote { fetch, resolve }
    }

    /// A world that refuses every exchange and every DNS question: for jobs that must decide
    /// from what this node holds alone (`policy test`), so no request can slip through.
    pub fn unreachable() -> Remote {
        Remote::new(Arc::new(Unreachable), Arc::new(Unreachable))
    }
}

/// [`Remote::unreachable`]'s two halves.
struct Unreachable;

impl Fetch for Unreachable {
    fn exchange(&self, exchange: &Exchange<'_>) -> Result<Fetched, NetError> {
        Err(NetError::BadUrl(format!("{} (this job makes no network request)", exchange.url)))
    }
}

impl Resolve for Unreachable {
    fn txt(&self, _name: &str, _timeout: Duration) -> Result<Vec<String>, DnsError> {
        Err(DnsError::NoServer)
    }
}

pub use http::{Http, InFlight, is_loopback_host, is_loopback_url};

#[cfg(test)]
mod tests {
    use super::*;

    /// One world for every worker thread: `Remote` (and what it holds) is `Send + Sync`.
    #[test]
    fn the_world_is_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Remote>();
        shared::<ureq::UreqFetch>();
        shared::<dns::SystemResolve>();
        shared::<http::InFlight>();
    }

    /// Each decision's in-flight marker is its own: two decisions never see each other's.
    #[test]
    fn each_decision_marks_its_own_request_in_flight() {
        let web = Arc::new(memory::MemoryFetch::new());
        web.delay("https://slow.test/x", Duration::from_millis(300));
        let (mine, theirs) = (http::InFlight::default(), http::InFlight::default());
        let client = Http::new(web, Duration::from_secs(1), Deadline::after(Duration::from_secs(1)), mine.clone());
        std::thread::scope(|s| {
            let waiting = s.spawn(|| client.get("https://slow.test/x", &[], 10));
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(mine.origin().as_deref(), Some("https://slow.test"));
            assert_eq!(theirs.origin(), None);
            let _ = waiting.join();
        });
        assert_eq!(mine.origin(), None, "cleared once answered");
    }

    /// Trust roots are a value built from the config: a new one after a reload reads the new
    /// `ca_bundle` (here: an unreadable one, said in its source).
    #[test]
    fn trust_roots_follow_the_config_they_were_built_from() {
        let plain = ureq::TrustRoots::new(None);
        let reloaded = ureq::TrustRoots::new(Some(PathBuf::from("/nonexistent/ca.pem")));
        assert!(!plain.get().source.contains("ca_bundle"), "{}", plain.get().source);
        assert!(reloaded.get().source.contains("/nonexistent/ca.pem"), "{}", reloaded.get().source);
    }
}
