//! The server's TLS: certificate, key and (optionally) the CA client certificates must chain
//! to, read from PEM files and reloaded when they change. A reload that fails (a half-written
//! pair, a key that does not match) keeps the configuration in force and is tried again on
//! the next change; connections already open keep the configuration they started with.
//!
//! TLS 1.3 and 1.2 (Gatekeeper requires 1.3; the API server negotiates 1.3 too), ring as the
//! provider (as ureq's client side), HTTP/1.1 by ALPN.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM file read (a chain with a few certificates is a few KiB).
const MAX_PEM_BYTES: usize = 1 << 20;

/// Which requests must present a client certificate chaining to `client_ca`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// The Gatekeeper provider route only (the API server presents no certificate unless
    /// configured to; probes present none): checked per request.
    Provider,
    /// Every connection, in the handshake.
    All,
}

/// The files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    crate::fsio::read_capped(path, MAX_PEM_BYTES).map_err(|e| e.to_string())
}

/// When the serving (first) certificate of a chain expires, in seconds since the epoch
/// (`None` when it cannot be read: rustls checks the chain itself).
pub fn expiry(leaf: &CertificateDer<'_>) -> Option<u64> {
    use x509_cert::der::Decode as _;
    let certificate = x509_cert::Certificate::from_der(leaf.as_ref()).ok()?;
    Some(certificate.tbs_certificate().validity().not_after.to_unix_duration().as_secs())
}

/// A server configuration from `files`, and when its certificate expires.
pub fn load(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Option<u64>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    let Some(leaf) = certs.first() else {
        return Err(format!("{}: no certificate in it", files.cert.display()));
    };
    let expires = expiry(leaf);
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                let cert = cert.map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
                roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match files.client_auth {
                ClientAuth::All => verifier.build(),
                ClientAuth::Provider => verifier.allow_unauthenticated().build(),
            }
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), expires))
}

type Stamps = Vec<Option<(u64, SystemTime)>>;

fn stamps(files: &TlsFiles) -> Stamps {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.len(), m.modified().ok()?))))
        .collect()
}

/// The configuration in force, reloaded on change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The files as last loaded successfully.
    loaded: Mutex<Stamps>,
    /// The last failure, said once per distinct message.
    failure: Mutex<Option<String>>,
    /// When the certificate in force expires (seconds since the epoch).
    expires: Mutex<Option<u64>>,
}

impl Tls {
    pub fn new(files: TlsFiles) -> Result<Tls, String> {
        let stamp = stamps(&files);
        let (config, expires) = load(&files)?;
        Ok(Tls { files, current: RwLock::new(config), loaded: Mutex::new(stamp), failure: Mutex::new(None), expires: Mutex::new(expires) })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reloads when a file changed since the last good load; true when a new one is in force.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.files);
        if *self.loaded.lock().unwrap_or_else(PoisonError::into_inner) == now {
            return false;
        }
        match load(&self.files) {
            Ok((config, expires)) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
                *self.expires.lock().unwrap_or_else(PoisonError::into_inner) = expires;
                *self.loaded.lock().unwrap_or_else(PoisonError::into_inner) = now;
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
                crate::log::info("TLS certificate reloaded");
                true
            }
            Err(e) => {
                let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
                if failure.as_deref() != Some(&e) {
                    crate::log::warn(&format!("TLS reload failed: {e} — still serving the previous certificate (tried again while the files change)"));
                    *failure = Some(e);
                }
                false
            }
        }
    }

    /// When the certificate in force expires (seconds since the epoch), if readable.
    pub fn expires(&self) -> Option<u64> {
        *self.expires.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether connections must be checked per request for a client certificate.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.files.client_ca.as_ref().map(|_| self.files.client_auth)
    }
}
