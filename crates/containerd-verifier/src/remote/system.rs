//! The composition root: the one file that names the real world's implementations (ureq for
//! HTTP, the system's nameservers for DNS). Everything else takes a [`Remote`].

use std::sync::Arc;

use super::Remote;
use super::dns::SystemResolve;
use super::polite::Polite;
use super::ureq::{TrustRoots, UreqFetch};
use crate::config::Config;

/// The real network as `config` says: connect timeout, trust roots (the system's plus
/// `ca_bundle`, loaded on the first https request). Build a new one after a config reload.
/// Every request goes through [`Polite`]: rate limits honoured across the node's processes
/// (pauses kept beside the cache), requests per host bounded across threads.
pub fn system(config: &Config) -> Remote {
    let wire = Arc::new(UreqFetch::new(config.connect_timeout.0, TrustRoots::new(config.ca_bundle.clone())));
    Remote::new(Arc::new(Polite::new(wire, Some(config.cache_dir.join("pacing")))), Arc::new(SystemResolve::new(config.connect_timeout.0)))
}
