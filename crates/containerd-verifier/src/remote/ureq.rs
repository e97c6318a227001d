//! HTTP on the wire: the [`Fetch`] the binary uses. One blocking ureq agent per TLS setting
//! (no async runtime), shared by every thread, built on first use so a decision that needs no
//! network never loads trust roots ([`TrustRoots`], a value built from the config: a new
//! `UreqFetch` after a config reload trusts the new `ca_bundle`); no automatic redirects (callers decide whether a redirect may cross hosts); errors
//! that stay network errors: a timeout is never a bad signature.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{Deadline, Exchange, Fetch, Fetched, NetError, Tls};
use crate::limits::NodeLimits;

const USER_AGENT: &str = concat!("atproto-verifier/", env!("CARGO_PKG_VERSION"));

/// Most distinct TLS settings an agent is kept for (hosts.toml endpoints of one node); past
/// it, agents are built per request rather than kept.
const MAX_AGENTS: usize = 64;

/// ureq agents, one per TLS setting met so far (a decision meets one or two).
pub struct UreqFetch {
    connect_timeout: Duration,
    roots: TrustRoots,
    agents: Mutex<Vec<(Tls, ureq::Agent)>>,
}

impl UreqFetch {
    pub fn new(connect_timeout: Duration, roots: TrustRoots) -> UreqFetch {
        UreqFetch { connect_timeout, roots, agents: Mutex::new(Vec::new()) }
    }

    fn agent(&self, tls: &Tls) -> ureq::Agent {
        let mut agents = self.agents.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, agent)) = agents.iter().find(|(t, _)| t == tls) {
            return agent.clone();
        }
        let agent = agent(self.connect_timeout, &self.roots, tls);
        if agents.len() < MAX_AGENTS {
            agents.push((tls.clone(), agent.clone()));
        }
        agent
    }
}

impl Fetch for UreqFetch {
    fn exchange(&self, x: &Exchange<'_>) -> Result<Fetched, NetError> {
        let started = Instant::now();
        let mut builder = ureq::http::Request::builder().method(x.method).uri(x.url);
        for (name, value) in x.headers {
            builder = builder.header(*name, value.as_str());
        }
        let request = builder.body(x.body.map(<[u8]>::to_vec).unwrap_or_default()).map_err(|e| NetError::BadUrl(e.to_string()))?;
        let agent = self.agent(x.tls);
        let request = agent.configure_request(request).timeout_global(Some(x.timeout)).build();
        let response = agent.run(request).map_err(|e| classify(e, x.url, started, x.timeout, x.deadline))?;
        let status = response.status().as_u16();
        let headers = response.headers().iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))).collect();
        let mut body = response.into_body();
        let bytes = if x.method == "HEAD" {
            Vec::new()
        } else {
            body.with_config().limit(x.limit as u64).read_to_vec().map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => NetError::TooLarge(x.limit),
                other => classify(other, x.url, started, x.timeout, x.deadline),
            })?
        };
        Ok(Fetched { status, headers, body: bytes })
    }
}

/// Where trusted roots come from: the system's CA store (`SSL_CERT_FILE` / `SSL_CERT_DIR` or
/// the distribution's bundle) plus `ca_bundle` from config.toml; the compiled-in Mozilla roots
/// only when the system has none. Loaded on the first https request, never on a warm pull.
pub struct TrustRoots {
    extra_bundle: Option<PathBuf>,
    loaded: OnceLock<Roots>,
}

/// Loaded roots, and where they came from (for `doctor`).
pub struct Roots {
    pub certificates: Arc<Vec<ureq::tls::Certificate<'static>>>,
    pub source: String,
}

impl TrustRoots {
    /// The system's roots, plus those of `extra_bundle` (config.toml `ca_bundle`).
    pub fn new(extra_bundle: Option<PathBuf>) -> TrustRoots {
        TrustRoots { extra_bundle, loaded: OnceLock::new() }
    }

    /// The roots, loaded on first use.
    pub fn get(&self) -> &Roots {
        self.loaded.get_or_init(|| {
            let system = rustls_native_certs::load_native_certs();
            let mut roots: Vec<ureq::tls::Certificate<'static>> =
                system.certs.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
            let mut source = format!("{} roots from the system store", roots.len());
            if let Some(path) = &self.extra_bundle {
                match crate::fsio::read_capped(path, NodeLimits::DEFAULT.pem_file) {
                    Ok(pem) => {
                        let extra = pem_certificates(&pem);
                        source.push_str(&format!(" + {} from {}", extra.len(), path.display()));
                        roots.extend(extra);
                    }
                    Err(e) => {
                        // A node-level condition, not one decision's: said once, when loaded.
                        crate::log::warn(&format!("ca_bundle {}: {} (ignored)", path.display(), e.problem));
                        source.push_str(&format!(" (ca_bundle {} ignored: {})", path.display(), e.problem));
                    }
                }
            }
            Roots { certificates: Arc::new(roots), source }
        })
    }
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

fn agent(connect_timeout: Duration, trust: &TrustRoots, tls: &Tls) -> ureq::Agent {
    let mut tls_config = ureq::tls::TlsConfig::builder().disable_verification(tls.skip_verify);
    let defaults = &trust.get().certificates;
    let mut extra = Vec::new();
    for file in &tls.ca_files {
        if let Ok(pem) = crate::fsio::read_capped(file, NodeLimits::DEFAULT.pem_file) {
            extra.extend(pem_certificates(&pem));
        }
    }
    let roots = if extra.is_empty() { Arc::clone(defaults) } else { Arc::new(defaults.iter().cloned().chain(extra).collect()) };
    tls_config =
        if roots.is_empty() { tls_config.root_certs(ureq::tls::RootCerts::WebPki) } else { tls_config.root_certs(ureq::tls::RootCerts::Specific(roots)) };
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
    let cert_pem = crate::fsio::read_capped(cert, NodeLimits::DEFAULT.pem_file).ok()?;
    let key_pem = match key {
        Some(k) => crate::fsio::read_capped(k, NodeLimits::DEFAULT.pem_file).ok()?,
        None => cert_pem.clone(),
    };
    let chain = pem_certificates(&cert_pem);
    let key = ureq::tls::parse_pem(&key_pem).filter_map(Result::ok).find_map(|item| match item {
        ureq::tls::PemItem::PrivateKey(k) => Some(k),
        _ => None,
    })?;
    (!chain.is_empty()).then(|| ureq::tls::ClientCert::new_with_certs(&chain, key))
}

fn classify(error: ureq::Error, url: &str, started: Instant, timeout: Duration, deadline: Deadline) -> NetError {
    let short_url = crate::limits::short(&crate::limits::without_userinfo(url.split('?').next().unwrap_or(url)), 200);
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
