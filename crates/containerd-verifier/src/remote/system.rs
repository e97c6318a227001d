//! The composition root: the one file that names the real world's implementations (ureq for
//! HTTP, the system's nameservers for DNS). Everything else takes a [`Remote`].

use std::sync::Arc;

use super::Remote;
use super::dns::SystemResolve;
use super::ureq::{TrustRoots, UreqFetch};
use crate::config::Config;

/// The real network as `config` says: connect timeout, trust roots (the system's plus
/// `ca_bundle`, loaded on the first https request). Build a new one after a config reload.
pub fn system(config: &Config) -> Remote {
    Remote::new(
        Arc::new(UreqFetch::new(config.connect_timeout.0, TrustRoots::new(config.ca_bundle.clone()))),
        Arc::new(SystemResolve::new(config.connect_timeout.0)),
    )
}
