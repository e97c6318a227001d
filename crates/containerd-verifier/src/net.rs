//! HTTP for resolution and registries: one blocking ureq agent (no async runtime), explicit
//! connect and per-request timeouts clamped to what is left of the decision budget, a size cap
//! on every body, no automatic redirects (callers decide whether a redirect may cross hosts),
//! and errors that stay network errors: a timeout is never a bad signature.

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The decision budget ran out before or during the request.
    Deadline,
    /// The request took longer than its own timeout.
    Timeout(String),
    /// DNS, connect or TLS failure.
    Connect(String),
    /// The body was larger than allowed.
    TooLarge(usize),
    /// Anything else on the wire.
    Io(String),
    /// A URL we refuse to request.
    BadUrl(String),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Deadline => write!(f, "the time budget ran out"),
            NetError::Timeout(url) => write!(f, "{url} did not answer in time"),
            NetError::Connect(e) => write!(f, "cannot connect: {e}"),
            NetError::TooLarge(limit) => write!(f, "response larger than {limit} bytes"),
            NetError::Io(e) => write!(f, "{e}"),
            NetError::BadUrl(u) => write!(f, "refusing to request {u:?}"),
        }
    }
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

/// Where trusted roots come from: the system's CA store (`SSL_CERT_FILE` / `SSL_CERT_DIR` or
/// the distribution's bundle) plus `ca_bundle` from config.toml; the compiled-in Mozilla roots
/// only when the system has none. Loaded on the first https request, never on a warm pull.
static EXTRA_BUNDLE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Names the extra CA bundle (config.toml `ca_bundle`); first call wins.
pub fn set_extra_bundle(path: Option<PathBuf>) {
    let _ = EXTRA_BUNDLE.set(path);
}

fn pem_certificates(pem: &[u8]) -> Vec<ureq::tls::Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(Result::ok)
        .filter_map(|item| match item {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// The roots every https request trusts, and where they came from (for `doctor`).
pub fn default_roots() -> &'static (Vec<ureq::tls::Certificate<'static>>, String) {
    static ROOTS: std::sync::OnceLock<(Vec<ureq::tls::Certificate<'static>>, String)> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let system = rustls_native_certs::load_native_certs();
        let mut roots: Vec<ureq::tls::Certificate<'static>> = system.certs.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
        let mut source = format!("{} roots from the system store", roots.len());
        if let Some(Some(path)) = EXTRA_BUNDLE.get() {
            match crate::input::read_capped(path, 4 << 20) {
                Ok(pem) => {
                    let extra = pem_certificates(&pem);
                    source.push_str(&format!(" + {} from {}", extra.len(), path.display()));
                    roots.extend(extra);
                }
                Err(e) => crate::log::warn(&format!("ca_bundle {}: {} (ignored)", path.display(), e.problem)),
            }
        }
        (roots, source)
    })
}

fn agent(connect_timeout: Duration, tls: &Tls) -> ureq::Agent {
    let mut tls_config = ureq::tls::TlsConfig::builder().disable_verification(tls.skip_verify);
    let (defaults, _) = default_roots();
    let mut roots = defaults.clone();
    for file in &tls.ca_files {
        if let Ok(pem) = crate::input::read_capped(file, 4 << 20) {
            roots.extend(pem_certificates(&pem));
        }
    }
    tls_config = if roots.is_empty() {
        tls_config.root_certs(ureq::tls::RootCerts::WebPki)
    } else {
        tls_config.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
    };
    if let Some(client) = tls.client_pairs.iter().find_map(|(cert, key)| client_cert(cert, key.as_deref())) {
        tls_config = tls_config.client_cert(Some(client));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(USER_AGENT)
        .timeout_connect(Some(connect_timeout))
        .timeout_resolve(Some(connect_timeout))
        .tls_config(tls_config.build())
        .build()
        .into()
}

/// A client certificate from a PEM certificate file and its key (in `key`, or in the same file).
fn client_cert(cert: &Path, key: Option<&Path>) -> Option<ureq::tls::ClientCert> {
    let cert_pem = crate::input::read_capped(cert, 1 << 20).ok()?;
    let key_pem = match key {
        Some(k) => crate::input::read_capped(k, 1 << 20).ok()?,
        None => cert_pem.clone(),
    };
    let chain = pem_certificates(&cert_pem);
    let key = ureq::tls::parse_pem(&key_pem).filter_map(Result::ok).find_map(|item| match item {
        ureq::tls::PemItem::PrivateKey(k) => Some(k),
        _ => None,
    })?;
    (!chain.is_empty()).then(|| ureq::tls::ClientCert::new_with_certs(&chain, key))
}

/// The HTTP client for one decision. Its agent is built on the first request, so a decision
/// that needs no network never loads trust roots.
pub struct Http {
    agent: std::cell::OnceCell<ureq::Agent>,
    tls: Tls,
    request_timeout: Duration,
    connect_timeout: Duration,
    deadline: Deadline,
    /// Shared by every client derived with `with_tls`, so a decision counts all its requests.
    requests: Rc<Cell<usize>>,
}

const USER_AGENT: &str = concat!("atproto-verifier/", env!("CARGO_PKG_VERSION"));

impl Http {
    pub fn new(connect_timeout: Duration, request_timeout: Duration, deadline: Deadline) -> Http {
        Http { agent: std::cell::OnceCell::new(), tls: Tls::default(), request_timeout, connect_timeout, deadline, requests: Rc::new(Cell::new(0)) }
    }

    /// A client for endpoints with their own TLS settings, sharing budget and counters.
    pub fn with_tls(&self, tls: &Tls) -> Http {
        Http {
            agent: std::cell::OnceCell::new(),
            tls: tls.clone(),
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
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
        let started = Instant::now();
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        let request = builder.body(body.map(<[u8]>::to_vec).unwrap_or_default()).map_err(|e| NetError::BadUrl(e.to_string()))?;
        let agent = self.agent.get_or_init(|| agent(self.connect_timeout, &self.tls));
        let request = agent.configure_request(request).timeout_global(Some(timeout)).build();
        let response = agent.run(request).map_err(|e| classify(e, url, started, timeout, self.deadline))?;
        let status = response.status().as_u16();
        let response_headers = response.headers().iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))).collect();
        let mut body = response.into_body();
        let bytes = if method == "HEAD" {
            Vec::new()
        } else {
            body.with_config().limit(limit as u64).read_to_vec().map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => NetError::TooLarge(limit),
                other => classify(other, url, started, timeout, self.deadline),
            })?
        };
        Ok(Fetched { status, headers: response_headers, body: bytes })
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

fn classify(error: ureq::Error, url: &str, started: Instant, timeout: Duration, deadline: Deadline) -> NetError {
    let short_url: String = url.split('?').next().unwrap_or(url).chars().take(200).collect();
    match error {
        ureq::Error::Timeout(_) if deadline.expired() => NetError::Deadline,
        ureq::Error::Timeout(_) => NetError::Timeout(short_url),
        ureq::Error::HostNotFound => NetError::Connect(format!("{short_url}: host not found")),
        ureq::Error::ConnectionFailed => NetError::Connect(format!("{short_url}: connection failed")),
        ureq::Error::Io(e) if started.elapsed() >= timeout => NetError::Timeout(format!("{short_url} ({e})")),
        ureq::Error::Io(e) => NetError::Connect(format!("{short_url}: {e}")),
        ureq::Error::BodyExceedsLimit(n) => NetError::TooLarge(n as usize),
        other => NetError::Io(format!("{short_url}: {other}")),
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
