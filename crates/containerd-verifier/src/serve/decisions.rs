//! Decisions a server has made, kept in memory: what one image decision answers ([`Decided`]),
//! the bounded cache of them, and single flight (identical concurrent requests wait for one
//! computation). Keys carry the generation of the config and policy they were made under, so
//! a reload never answers from a decision the new policy did not make.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use atproto_sig_core::Reason;
use atproto_sig_core::policy::{Decision, Outcome};
use tokio::sync::oneshot;

use crate::engine::Class;

/// One image's decision, as every server shape reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The canonical image with the digest decided (none when the reference was refused first).
    pub image: Option<String>,
    /// The digest decided.
    pub digest: Option<String>,
    pub outcome: Outcome,
    pub reason: Reason,
    pub message: String,
    pub rule: Option<String>,
    /// DIDs whose signatures the decision rests on.
    pub signers: Vec<String>,
    pub class: Class,
    /// What to do about it, for people (empty when nothing to add).
    pub hint: String,
    /// The rule lets an admission server pin the tag to the digest decided.
    pub pin_digest: bool,
}

impl Decided {
    /// A decision the server made without the engine (overload, deadline, a bad key).
    pub fn undecided(reason: Reason, message: String, hint: &str) -> Decided {
        Decided {
            image: None,
            digest: None,
            outcome: Outcome::Reject,
            reason,
            message,
            rule: None,
            signers: Vec::new(),
            class: Class::Undecided,
            hint: hint.to_owned(),
            pin_digest: false,
        }
    }

    /// From the engine's decision.
    pub fn of(decision: &Decision, image: Option<String>, digest: Option<String>, hint: &str, pin_digest: bool) -> Decided {
        Decided {
            image,
            digest,
            outcome: decision.outcome,
            reason: decision.reason,
            message: decision.message.clone(),
            rule: decision.rule.clone(),
            signers: decision.signers.clone(),
            class: Class::of(decision),
            hint: hint.to_owned(),
            pin_digest,
        }
    }
}

/// What a decision is cached by: the canonical image reference (with its tag or digest) and
/// the generation of the config and policy in force.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub image: String,
    pub generation: u64,
}

/// How [`Decisions::join`] answers.
pub enum Joined {
    /// Decided recently: the answer.
    Cached(Arc<Decided>),
    /// Being decided for another request: wait for it.
    Waiting(oneshot::Receiver<Arc<Decided>>),
    /// Nobody is deciding it: the caller must start the decision (or [`Decisions::abandon`] it).
    Lead(oneshot::Receiver<Arc<Decided>>),
}

/// Counters of the cache, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub joined: u64,
    pub misses: u64,
    pub entries: usize,
    pub evicted: u64,
}

struct Inner {
    done: HashMap<Key, (Arc<Decided>, Instant)>,
    flying: HashMap<Key, Vec<oneshot::Sender<Arc<Decided>>>>,
    stats: CacheStats,
}

/// The decision cache and the decisions in flight.
pub struct Decisions {
    inner: Mutex<Inner>,
    /// Most decisions kept; the one closest to expiry goes first.
    capacity: usize,
}

impl Decisions {
    pub fn new(capacity: usize) -> Decisions {
        let inner = Inner { done: HashMap::new(), flying: HashMap::new(), stats: CacheStats::default() };
        Decisions { inner: Mutex::new(inner), capacity: capacity.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (every change is
        // one insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached decision for `key`, or a place in the queue for it.
    pub fn join(&self, key: &Key, now: Instant) -> Joined {
        let mut inner = self.lock();
        if let Some((decided, expires)) = inner.done.get(key) {
            if *expires > now {
                let decided = Arc::clone(decided);
                inner.stats.hits += 1;
                return Joined::Cached(decided);
            }
            inner.done.remove(key);
        }
        let (tx, rx) = oneshot::channel();
        if let Some(waiters) = inner.flying.get_mut(key) {
            waiters.push(tx);
            inner.stats.joined += 1;
            return Joined::Waiting(rx);
        }
        inner.flying.insert(key.clone(), vec![tx]);
        inner.stats.misses += 1;
        Joined::Lead(rx)
    }

    /// The decision for `key` is made: every waiter gets it; it is kept for `ttl` (not at all
    /// when zero), under `key` and, if given, under `also` (the same image by the digest
    /// decided).
    pub fn complete(&self, key: &Key, also: Option<Key>, decided: Decided, ttl: Duration, now: Instant) {
        let decided = Arc::new(decided);
        let mut inner = self.lock();
        let waiters = inner.flying.remove(key).unwrap_or_default();
        if !ttl.is_zero() {
            for key in std::iter::once(key.clone()).chain(also) {
                if inner.done.len() >= self.capacity {
                    inner.done.retain(|_, (_, expires)| *expires > now);
                }
                while inner.done.len() >= self.capacity {
                    let Some(first) = inner.done.iter().min_by_key(|(_, (_, expires))| *expires).map(|(k, _)| k.clone()) else { break };
                    inner.done.remove(&first);
                    inner.stats.evicted += 1;
                }
                inner.done.insert(key, (Arc::clone(&decided), now + ttl));
            }
        }
        drop(inner);
        for waiter in waiters {
            // A waiter that gave up (its deadline passed) has dropped its receiver: nothing to do.
            let _ = waiter.send(Arc::clone(&decided));
        }
    }

    /// The decision for `key` will not be made (the work queue is full): every waiter's
    /// receiver closes, which they answer as overload.
    pub fn abandon(&self, key: &Key) {
        self.lock().flying.remove(key);
    }

    /// Forgets every cached decision that rests on `did`'s signature (a revocation), and every
    /// decision of another generation; returns how many were dropped.
    pub fn evict_signer(&self, did: &str) -> usize {
        let mut inner = self.lock();
        let before = inner.done.len();
        inner.done.retain(|_, (decided, _)| !decided.signers.iter().any(|s| s == did));
        before - inner.done.len()
    }

    /// Forgets every cached decision made under another generation than `current`.
    pub fn retain_generation(&self, current: u64) {
        self.lock().done.retain(|key, _| key.generation == current);
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats { entries: inner.done.len(), ..inner.stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(image: &str) -> Key {
        Key { image: image.into(), generation: 1 }
    }

    fn admitted(signer: &str) -> Decided {
        let decision =
            Decision { outcome: Outcome::Admit, reason: Reason::Verified, message: "ok".into(), rule: Some("r".into()), signers: vec![signer.into()] };
        Decided::of(&decision, Some("atcr.io/a/b@sha256:1".into()), Some("sha256:1".into()), "", true)
    }

    #[test]
    fn one_computation_for_concurrent_requests_then_cached_until_expiry() {
        let decisions = Decisions::new(10);
        let now = Instant::now();
        let Joined::Lead(mut lead) = decisions.join(&key("a"), now) else { panic!("first request leads") };
        let Joined::Waiting(mut waiting) = decisions.join(&key("a"), now) else { panic!("second request waits") };
        decisions.complete(&key("a"), Some(key("a@d")), admitted("did:plc:a"), Duration::from_secs(5), now);
        assert_eq!(lead.try_recv().map(|d| d.reason), Ok(Reason::Verified));
        assert_eq!(waiting.try_recv().map(|d| d.reason), Ok(Reason::Verified));
        assert!(matches!(decisions.join(&key("a"), now + Duration::from_secs(4)), Joined::Cached(_)));
        // ... and under the digest it resolved to.
        assert!(matches!(decisions.join(&key("a@d"), now + Duration::from_secs(4)), Joined::Cached(_)));
        // Expired: decided again.
        assert!(matches!(decisions.join(&key("a"), now + Duration::from_secs(6)), Joined::Lead(_)));
        let stats = decisions.stats();
        assert_eq!((stats.hits, stats.joined, stats.misses), (2, 1, 2));
    }

    #[test]
    fn abandoned_flights_close_their_waiters_and_zero_ttl_is_not_kept() {
        let decisions = Decisions::new(10);
        let now = Instant::now();
        let Joined::Lead(mut lead) = decisions.join(&key("a"), now) else { panic!() };
        decisions.abandon(&key("a"));
        assert!(matches!(lead.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        let Joined::Lead(_) = decisions.join(&key("a"), now) else { panic!("abandoned: led again") };
        decisions.complete(&key("a"), None, Decided::undecided(Reason::NetworkError, "down".into(), ""), Duration::ZERO, now);
        assert!(matches!(decisions.join(&key("a"), now), Joined::Lead(_)));
    }

    #[test]
    fn bounded_and_evicted_by_signer_and_generation() {
        let decisions = Decisions::new(2);
        let now = Instant::now();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let _ = decisions.join(&key(name), now);
            decisions.complete(&key(name), None, admitted(&format!("did:plc:{name}")), Duration::from_secs(10 + i as u64), now);
        }
        // "a" expired first: it went.
        assert_eq!(decisions.stats().entries, 2);
        assert!(matches!(decisions.join(&key("a"), now), Joined::Lead(_)));
        assert!(matches!(decisions.join(&key("c"), now), Joined::Cached(_)));
        assert_eq!(decisions.evict_signer("did:plc:c"), 1);
        assert!(matches!(decisions.join(&key("c"), now), Joined::Lead(_)));
        decisions.retain_generation(2);
        assert_eq!(decisions.stats().entries, 0);
    }
}
