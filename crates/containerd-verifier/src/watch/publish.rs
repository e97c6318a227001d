//! `watch --publish oci://…`: the fleet's publisher. Every watched DID is published once at
//! start, then again whenever its repository changes (a `#commit` touching
//! `io.atcr.manifest`, or a signed re-check of it): the nodes reading the registry
//! (`watch_source = "registry"`) then learn a revocation within their poll interval. Pending
//! DIDs are a set (a burst of events is one publication); one thread publishes, so the PDS
//! sees at most one bundle fetch per DID at a time.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use atproto_sig_core::crypto::PrivateKey;

use super::Watcher;
use crate::fleet::Location;

/// Where and how the watcher publishes.
pub struct Publishing {
    location: Location,
    key: Option<PrivateKey>,
    pending: Mutex<BTreeSet<String>>,
    wake: Condvar,
}

impl Publishing {
    pub fn new(location: Location, key: Option<PrivateKey>) -> Publishing {
        Publishing { location, key, pending: Mutex::new(BTreeSet::new()), wake: Condvar::new() }
    }

    /// Asks for `did` to be published again.
    pub(super) fn mark(&self, did: &str) {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(did.to_owned());
        self.wake.notify_one();
    }

    /// The DIDs waiting, taken (waiting up to `timeout` for one).
    fn take(&self, timeout: Duration) -> Vec<String> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.is_empty() {
            pending = self.wake.wait_timeout(pending, timeout).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        std::mem::take(&mut *pending).into_iter().collect()
    }
}

/// The publishing thread: until the watcher stops.
pub(super) fn run(watcher: &Watcher, publishing: &Publishing) {
    for did in &watcher.watched().dids {
        publishing.mark(did);
    }
    while !watcher.stopping() {
        for did in publishing.take(Duration::from_millis(500)) {
            if watcher.stopping() {
                return;
            }
            // Only DIDs still watched (the policy may have dropped one since).
            if !watcher.watched().dids.contains(&did) && !watcher.policy().trusted.iter().any(|t| t.did == did) {
                continue;
            }
            match crate::fleet::publish::publish(&watcher.config, &watcher.remote, &publishing.location, std::slice::from_ref(&did), publishing.key.as_ref()) {
                Ok(published) => {
                    for p in published {
                        watcher.health.published(true);
                        crate::log::info(&format!(
                            "watch: published {} ({}, {} bytes) to {}",
                            p.did,
                            p.digest,
                            p.bundle_bytes,
                            publishing.location.canonical()
                        ));
                    }
                }
                Err(e) => {
                    watcher.health.published(false);
                    crate::log::warn(&format!("watch: publishing {did} to {}: {e} — retried at its next change or restart", publishing.location.canonical()));
                }
            }
        }
    }
}
