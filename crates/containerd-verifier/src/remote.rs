//! What a decision reaches the outside world through, passed in: a [`Fetch`] for HTTP and a
//! [`Resolve`] for DNS. The binary passes the real ones (`ureq_fetch::UreqFetch`,
//! `dns::SystemResolve`); engine tests and the whole-engine fuzz target pass in-memory ones
//! ([`MemoryFetch`], [`MemoryResolve`]), so every remote answer can be chosen, including
//! hostile ones, with no server and no socket.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::net::{Deadline, Fetched, NetError, Tls};

/// One HTTP exchange, as the client facade (`net::Http`) hands it to a [`Fetch`]: the URL is
/// already checked (http or https), the timeout already clamped to the decision's budget.
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
pub trait Fetch {
    fn exchange(&self, exchange: &Exchange<'_>) -> Result<Fetched, NetError>;
}

/// DNS: the TXT records of one name (none for NXDOMAIN), within `timeout`.
pub trait Resolve {
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

/// The outside world of one decision (or one batch of them).
#[derive(Clone)]
pub struct Remote {
    pub fetch: Rc<dyn Fetch>,
    pub resolve: Rc<dyn Resolve>,
}

impl Remote {
    /// The real network: ureq (TLS roots loaded on first use) and the system's nameservers.
    pub fn system(connect_timeout: Duration) -> Remote {
        Remote { fetch: Rc::new(crate::ureq_fetch::UreqFetch::new(connect_timeout)), resolve: Rc::new(crate::dns::SystemResolve { timeout: connect_timeout }) }
    }
}

/// An in-memory web: answers by exact URL (query string included), or by URL without its
/// query, else 404. Every exchange is logged, so tests can assert what was (not) requested.
#[derive(Default)]
pub struct MemoryFetch {
    routes: RefCell<HashMap<String, Result<Fetched, NetError>>>,
    log: RefCell<Vec<String>>,
}

impl MemoryFetch {
    pub fn new() -> MemoryFetch {
        MemoryFetch::default()
    }

    /// Answers `url` with `status` and `body`.
    pub fn serve(&self, url: &str, status: u16, body: impl Into<Vec<u8>>) {
        self.routes.borrow_mut().insert(url.to_owned(), Ok(Fetched { status, headers: Vec::new(), body: body.into() }));
    }

    /// Fails every exchange with `url` this way.
    pub fn fail(&self, url: &str, error: NetError) {
        self.routes.borrow_mut().insert(url.to_owned(), Err(error));
    }

    /// The URLs requested so far, in order.
    pub fn requested(&self) -> Vec<String> {
        self.log.borrow().clone()
    }
}

impl Fetch for MemoryFetch {
    fn exchange(&self, exchange: &Exchange<'_>) -> Result<Fetched, NetError> {
        self.log.borrow_mut().push(exchange.url.to_owned());
        let routes = self.routes.borrow();
        let without_query = exchange.url.split('?').next().unwrap_or(exchange.url);
        let answer = routes.get(exchange.url).or_else(|| routes.get(without_query)).cloned();
        match answer {
            Some(Ok(response)) if response.body.len() > exchange.limit => Err(NetError::TooLarge(exchange.limit)),
            Some(Ok(response)) if exchange.method == "HEAD" => Ok(Fetched { body: Vec::new(), ..response }),
            Some(answer) => answer,
            None => Ok(Fetched { status: 404, headers: Vec::new(), body: b"{\"error\":\"NotFound\"}".to_vec() }),
        }
    }
}

/// In-memory DNS: TXT records by name; unknown names are NXDOMAIN.
#[derive(Default)]
pub struct MemoryResolve {
    records: RefCell<HashMap<String, Result<Vec<String>, DnsError>>>,
}

impl MemoryResolve {
    pub fn new() -> MemoryResolve {
        MemoryResolve::default()
    }

    pub fn serve(&self, name: &str, records: Vec<String>) {
        self.records.borrow_mut().insert(name.to_owned(), Ok(records));
    }

    pub fn fail(&self, name: &str, error: DnsError) {
        self.records.borrow_mut().insert(name.to_owned(), Err(error));
    }
}

impl Resolve for MemoryResolve {
    fn txt(&self, name: &str, _timeout: Duration) -> Result<Vec<String>, DnsError> {
        self.records.borrow().get(name).cloned().unwrap_or(Ok(Vec::new()))
    }
}
