//! The one way remote material is read (DID documents, handle resolutions, proofs, referrer
//! hints): a copy in this node's cache within its TTL (and not due under the [`Refresh`]
//! mode) is used as is; otherwise, online, the entry's lock is taken within the deadline
//! (parallel pulls fetch once: another process may have refreshed it while we waited), the
//! material is fetched and handed to the caller's `accept` (which alone stores it, through
//! `knowledge`), and when the network fails a copy past its TTL but within `max_stale` stands
//! in (and says so). Offline, whatever the cache holds is handed back for the offline rules to
//! judge.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::lookup::atproto::LookupError;
use crate::material::store::{Cache, Dated, Freshness, Kind, freshness};
use crate::remote::{Deadline, NetError};

/// When cached material within its TTL is fetched again anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refresh {
    /// Only past its TTL (every decision).
    #[default]
    WhenExpired,
    /// Past half its TTL (`cache refresh`, so a pull rarely meets an expired entry).
    PastHalfLife,
    /// Always (a signed hint said it changed: the watcher; a bundle being made).
    Always,
}

impl Refresh {
    /// True when an entry fetched at `fetched_at` is due for a fetch at `now` under `ttl`.
    pub fn due(self, fetched_at: i64, now: i64, ttl_micros: i64) -> bool {
        freshness(fetched_at, now, self.effective_ttl(ttl_micros), 0) != Freshness::Fresh
    }

    /// The TTL under which a cached entry is used without fetching.
    fn effective_ttl(self, ttl: i64) -> i64 {
        match self {
            Refresh::WhenExpired => ttl,
            Refresh::PastHalfLife => ttl / 2,
            Refresh::Always => 0,
        }
    }
}

/// How long material is fresh, and how long past that it may stand in for a failed fetch.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub ttl_micros: i64,
    pub max_stale_micros: i64,
}

/// What a read found.
#[derive(Debug)]
pub enum Got<T> {
    /// This node's cache, within the TTL.
    Cached(T),
    /// Fetched just now (stored if the caller's `keep` accepted it).
    Fetched(T),
    /// The fetch failed on the network; the cached copy, past its TTL but within `max_stale`.
    Stale(T, NetError),
    /// Offline: the cached copy, whatever its age.
    Offline(T),
}

/// Why a read found nothing.
#[derive(Debug)]
pub enum Miss<E = LookupError> {
    /// Offline, and nothing usable cached.
    Offline,
    /// The fetch answered that there is nothing (not cached).
    Nothing,
    /// The fetch failed, and no copy could stand in.
    Lookup(E),
}

/// A fetch error that may be a network failure (only those let a stale copy stand in).
pub trait FetchError: Sized {
    /// The network failure, or the error unchanged.
    fn network(self) -> Result<NetError, Self>;
    /// The error for a network failure.
    fn from_network(e: NetError) -> Self;
}

impl FetchError for LookupError {
    fn network(self) -> Result<NetError, Self> {
        match self {
            LookupError::Network(e) => Ok(e),
            other => Err(other),
        }
    }

    fn from_network(e: NetError) -> Self {
        LookupError::Network(e)
    }
}

/// One cache entry's place and lifetime, and how it is read.
pub struct Material<'a> {
    pub cache: &'a Cache,
    pub kind: Kind,
    pub key: &'a [&'a str],
    pub now: i64,
    pub lifetime: Lifetime,
    pub refresh: Refresh,
    /// The entry's lock is waited for until then at most (then the fetch goes ahead unlocked).
    pub deadline: Deadline,
}

impl Material<'_> {
    /// True when the cache holds a fresh entry that `usable` accepts (no fetch would be made).
    pub fn is_fresh<T: DeserializeOwned + Dated>(&self, usable: impl Fn(&T) -> bool) -> bool {
        let ttl = self.refresh.effective_ttl(self.lifetime.ttl_micros);
        self.refresh != Refresh::Always
            && self.cache.read::<T>(self.kind, self.key).is_some_and(|e| usable(&e) && freshness(e.fetched_at(), self.now, ttl, 0) == Freshness::Fresh)
    }

    /// Reads the material. `usable` filters cached entries (corrupt or unreadable ones count
    /// as missing); `fetch` gets it from the network (`Ok(None)`: there is none); `accept`
    /// gets a fetched entry and stores it if it may be stored (unverified material never is:
    /// `knowledge` decides), still under the entry's lock.
    pub fn get<T: Serialize + DeserializeOwned + Dated, E: FetchError>(
        &self,
        online: bool,
        usable: impl Fn(&T) -> bool,
        fetch: impl FnOnce() -> Result<Option<T>, E>,
        accept: impl FnOnce(&T),
    ) -> Result<Got<T>, Miss<E>> {
        let ttl = self.refresh.effective_ttl(self.lifetime.ttl_micros);
        let state = |entry: &T, max_stale: i64| freshness(entry.fetched_at(), self.now, ttl, max_stale);
        let cached: Option<T> = self.cache.read::<T>(self.kind, self.key).filter(|e| usable(e));
        if !online {
            return cached.map(Got::Offline).ok_or(Miss::Offline);
        }
        // Stale means "may stand in when the network fails": judged by the real TTL.
        let standing = cached.as_ref().map(|e| freshness(e.fetched_at(), self.now, self.lifetime.ttl_micros, self.lifetime.max_stale_micros));
        let cached = match (cached, standing) {
            (Some(entry), Some(_)) if state(&entry, 0) == Freshness::Fresh => return Ok(Got::Cached(entry)),
            (cached, _) => cached,
        };
        let _lock = self.cache.lock(self.kind, self.key, self.deadline);
        // Another process may have fetched it while this one waited for the lock.
        if self.refresh != Refresh::Always
            && let Some(entry) = self.cache.read::<T>(self.kind, self.key).filter(|e| usable(e) && state(e, 0) == Freshness::Fresh)
        {
            return Ok(Got::Cached(entry));
        }
        match fetch() {
            Ok(Some(entry)) => {
                accept(&entry);
                Ok(Got::Fetched(entry))
            }
            Ok(None) => Err(Miss::Nothing),
            Err(e) => match (e.network(), cached) {
                (Ok(net), Some(entry)) if matches!(standing, Some(Freshness::Stale | Freshness::Fresh)) => Ok(Got::Stale(entry, net)),
                (Ok(net), _) => Err(Miss::Lookup(E::from_network(net))),
                (Err(e), _) => Err(Miss::Lookup(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::store::HandleEntry;

    const TTL: i64 = 100;
    const STALE: i64 = 1000;

    fn material<'a>(cache: &'a Cache, now: i64) -> Material<'a> {
        Material {
            cache,
            kind: Kind::Handle,
            key: &["alice.test"],
            now,
            lifetime: Lifetime { ttl_micros: TTL, max_stale_micros: STALE },
            refresh: Refresh::WhenExpired,
            deadline: Deadline::after(std::time::Duration::from_secs(5)),
        }
    }

    fn entry(did: &str, at: i64) -> HandleEntry {
        HandleEntry { handle: "alice.test".into(), did: did.into(), fetched_at: at }
    }

    fn get(m: &Material<'_>, online: bool, answer: Result<Option<HandleEntry>, LookupError>, keep: bool) -> (Result<Got<HandleEntry>, Miss>, bool) {
        let called = std::cell::Cell::new(false);
        let got = m.get(
            online,
            |_| true,
            || {
                called.set(true);
                answer
            },
            |e| {
                if keep {
                    m.cache.write(m.kind, m.key, e);
                }
            },
        );
        (got, called.get())
    }

    #[test]
    fn one_sequence_for_every_material() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let net = || Err(LookupError::Network(NetError::Io("down".into())));

        // Nothing cached: fetched, and stored only if kept.
        let (got, called) = get(&material(&cache, 0), true, Ok(Some(entry("did:a", 0))), false);
        assert!(called && matches!(got, Ok(Got::Fetched(ref e)) if e.did == "did:a"));
        assert!(cache.read::<HandleEntry>(Kind::Handle, &["alice.test"]).is_none(), "not kept, not stored");
        let (got, _) = get(&material(&cache, 0), true, Ok(Some(entry("did:a", 0))), true);
        assert!(matches!(got, Ok(Got::Fetched(_))));

        // Within the TTL: the cache, and no fetch at all.
        let (got, called) = get(&material(&cache, TTL - 1), true, net(), true);
        assert!(!called && matches!(got, Ok(Got::Cached(ref e)) if e.did == "did:a"));

        // Past the TTL, network down: the stale copy stands in, within max_stale only.
        let (got, called) = get(&material(&cache, TTL + 1), true, net(), true);
        assert!(called && matches!(got, Ok(Got::Stale(ref e, _)) if e.did == "did:a"));
        let (got, _) = get(&material(&cache, TTL + STALE + 1), true, net(), true);
        assert!(matches!(got, Err(Miss::Lookup(LookupError::Network(_)))));

        // Past the TTL, the server says something else: no stale copy, the answer counts.
        let (got, _) = get(&material(&cache, TTL + 1), true, Err(LookupError::NotFound("gone".into())), true);
        assert!(matches!(got, Err(Miss::Lookup(LookupError::NotFound(_)))));
        let (got, _) = get(&material(&cache, TTL + 1), true, Ok(None), true);
        assert!(matches!(got, Err(Miss::Nothing)));

        // Offline: whatever is cached, whatever its age; never a fetch.
        let (got, called) = get(&material(&cache, TTL + STALE * 10), false, net(), true);
        assert!(!called && matches!(got, Ok(Got::Offline(_))));
        let empty = tempfile::tempdir().unwrap();
        let (got, _) = get(&material(&Cache::new(empty.path()), 0), false, net(), true);
        assert!(matches!(got, Err(Miss::Offline)));
    }

    #[test]
    fn refresh_modes_fetch_earlier_and_stand_in_by_the_real_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let (_, _) = get(&material(&cache, 0), true, Ok(Some(entry("did:a", 0))), true);
        let net = || Err(LookupError::Network(NetError::Io("down".into())));
        // Within the TTL but past half of it: fresh for a decision, due for `cache refresh`.
        let half = Material { refresh: Refresh::PastHalfLife, ..material(&cache, TTL / 2 + 1) };
        let (got, called) = get(&material(&cache, TTL / 2 + 1), true, net(), true);
        assert!(!called && matches!(got, Ok(Got::Cached(_))));
        let (got, called) = get(&half, true, Ok(Some(entry("did:b", TTL / 2 + 1))), true);
        assert!(called && matches!(got, Ok(Got::Fetched(ref e)) if e.did == "did:b"));
        // Always: fetched even when just fetched; a network failure lets the copy stand in.
        let always = Material { refresh: Refresh::Always, ..material(&cache, TTL / 2 + 2) };
        let (got, called) = get(&always, true, net(), true);
        assert!(called && matches!(got, Ok(Got::Stale(ref e, _)) if e.did == "did:b"));
    }

    #[test]
    fn a_held_lock_is_waited_for_only_until_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let holder = cache.lock(Kind::Handle, &["alice.test"], Deadline::after(std::time::Duration::from_secs(1)));
        assert!(holder.is_some());
        let started = std::time::Instant::now();
        let short = Material { deadline: Deadline::after(std::time::Duration::from_millis(150)), ..material(&cache, 0) };
        let (got, called) = get(&short, true, Ok(Some(entry("did:a", 0))), true);
        assert!(called && matches!(got, Ok(Got::Fetched(_))), "fetched unlocked once the wait ran out");
        let waited = started.elapsed();
        assert!(waited >= std::time::Duration::from_millis(100) && waited < std::time::Duration::from_secs(1), "{waited:?}");
    }
}
