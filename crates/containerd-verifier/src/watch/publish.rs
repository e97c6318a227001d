//! `watch --publish oci://…`: the fleet's publisher. Every watched DID is published once at
//! start, then again whenever its repository changes (a `#commit` touching
//! `io.atcr.manifest`, or a signed re-check of it): the nodes reading the registry
//! (`watch_source = "registry"`) then learn a revocation within their poll interval. A
//! publication whose content (fetch times aside) is the one already published is not pushed,
//! unless it is due for its fetch times' sake (`proof_ttl / 2`): every node fetches each new one. Pending
//! DIDs are a set (a burst of events is one publication); one thread publishes, so the PDS
//! sees at most one bundle fetch per DID at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use atproto_sig_core::crypto::PrivateKey;

use super::Watcher;
use crate::fleet::Location;

/// Where and how the watcher publishes.
pub struct Publishing {
    location: Location,
    key: Option<PrivateKey>,
    pending: Mutex<BTreeSet<String>>,
    wake: Condvar,
    /// Per DID, the record keys its last publication carried: a record not among them is new,
    /// and its proof is attached to its image. None until the DID's first publication.
    carried: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Per DID, what its last publication said ([`crate::fleet::publish::content_of`]) and when.
    last: Mutex<BTreeMap<String, (String, Instant)>>,
}

/// How long after a failed publication a DID due for its fetch times is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How often a DID whose knowledge did not change is published again all the same: its fetch
/// times are what keep online nodes off the PDS, and they count for `proof_ttl`.
fn refresh_every(config: &crate::config::Config) -> Duration {
    (config.proof_ttl.0 / 2).max(Duration::from_secs(30))
}

impl Publishing {
    pub fn new(location: Location, key: Option<PrivateKey>) -> Publishing {
        Publishing {
            location,
            key,
            pending: Mutex::new(BTreeSet::new()),
            wake: Condvar::new(),
            carried: Mutex::new(BTreeMap::new()),
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// The records of `published` that its DID's previous publication (by this process) did not
    /// carry; none on the first publication (those images were pushed before it started).
    fn new_records(&self, published: &crate::fleet::publish::Published) -> Vec<crate::fleet::publish::PublishedRecord> {
        let now: BTreeSet<String> = published.records.iter().map(|r| r.rkey.clone()).collect();
        let before = self.carried.lock().unwrap_or_else(PoisonError::into_inner).insert(published.did.clone(), now);
        match before {
            None => Vec::new(),
            Some(before) => published.records.iter().filter(|r| !before.contains(&r.rkey)).cloned().collect(),
        }
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
    let refresh = refresh_every(&watcher.config);
    while !watcher.stopping() {
        // Publications due for their fetch times' sake.
        let due: Vec<String> = publishing
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, (_, at))| at.elapsed() >= refresh)
            .map(|(d, _)| d.clone())
            .collect();
        for did in due {
            publishing.mark(&did);
        }
        for did in publishing.take(Duration::from_millis(500)) {
            if watcher.stopping() {
                return;
            }
            // Only DIDs still watched (the policy may have dropped one since).
            if !watcher.watched().dids.contains(&did) && !watcher.policy().trusted.iter().any(|t| t.did == did) {
                continue;
            }
            // Knowledge that did not change is not published again before it is due: every node
            // fetches each new publication, so an event that changed nothing costs them nothing.
            let unchanged = |did: &str, content: &str| {
                let last = publishing.last.lock().unwrap_or_else(PoisonError::into_inner);
                last.get(did).is_some_and(|(held, at)| held == content && at.elapsed() < refresh)
            };
            let result = crate::fleet::publish::publish_unless(
                &watcher.config,
                &watcher.remote,
                &publishing.location,
                std::slice::from_ref(&did),
                publishing.key.as_ref(),
                unchanged,
            );
            match result {
                Ok(published) if published.is_empty() => crate::log::debug(&format!("watch: {did}: nothing new to publish")),
                Ok(published) => {
                    for p in published {
                        watcher.health.published(true);
                        crate::log::info(&format!(
                            "watch: published {} ({}, {} bytes, {} identity requests) to {}",
                            p.did,
                            p.digest,
                            p.bundle_bytes,
                            p.identity_requests,
                            publishing.location.canonical()
                        ));
                        publishing.last.lock().unwrap_or_else(PoisonError::into_inner).insert(p.did.clone(), (p.content.clone(), Instant::now()));
                        for record in publishing.new_records(&p) {
                            attach(watcher, &p, &record);
                        }
                    }
                }
                Err(e) => {
                    watcher.health.published(false);
                    crate::log::warn(&format!(
                        "watch: publishing {did} to {}: {e} — retried at its next change, or in {}s",
                        publishing.location.canonical(),
                        RETRY_AFTER_FAILURE.as_secs()
                    ));
                    // Due again after a pause, not at every turn of this loop (each attempt
                    // costs the PDS and the registry requests).
                    if let Some(entry) = publishing.last.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&did) {
                        entry.1 = Instant::now().checked_sub(refresh.saturating_sub(RETRY_AFTER_FAILURE)).unwrap_or_else(Instant::now);
                    }
                }
            }
        }
    }
}

/// Attaches the proof of a newly created record to its image, in the first of
/// `atproto_registries` (`host/<handle>/<repository>@<digest>`), through `attach`'s own path:
/// the image is verified by the ordinary decision first. A node whose registry mirror carries
/// the artifact then decides the image's first pull from it, before its next poll of the index.
fn attach(watcher: &Watcher, published: &crate::fleet::publish::Published, record: &crate::fleet::publish::PublishedRecord) {
    let (Some(host), Some(handle)) = (watcher.config.atproto_registries.first(), published.handle.as_deref()) else {
        crate::log::info(&format!("watch: at://{}/io.atcr.manifest/{}: not attached (no atproto registry or no handle)", published.did, record.rkey));
        return;
    };
    let image = format!("{host}/{handle}/{}@{}", record.repository, record.digest);
    match crate::cli::attach::attach_image(&image, &watcher.config, &watcher.remote) {
        Ok(line) => crate::log::info(&format!("watch: {line}")),
        Err((_, message, _)) => crate::log::warn(&format!("watch: attaching the proof of the new record to {image}: {message}")),
    }
}
