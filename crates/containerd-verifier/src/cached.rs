//! The one way remote material is read (DID documents, handle resolutions, proofs, referrer
//! hints): a copy in this node's cache within its TTL is used as is; otherwise, online, the
//! entry's lock is taken (parallel pulls fetch once: another process may have refreshed it
//! while we waited), the material is fetched and stored if the caller accepts it, and when the
//! network fails a copy past its TTL but within `max_stale` stands in (and says so). Offline,
//! whatever the cache holds is handed back for the offline rules to judge.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{Cache, Freshness, Kind, freshness};
use crate::net::NetError;
use crate::resolve::LookupError;

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

/// One cache entry's place and lifetime.
pub struct Material<'a> {
    pub cache: &'a Cache,
    pub kind: Kind,
    pub key: &'a [&'a str],
    pub now: i64,
    pub lifetime: Lifetime,
}

impl Material<'_> {
    /// Reads the material. `fetched_at` says when an entry was fetched (this node's clock);
    /// `usable` filters cached entries (corrupt or unreadable ones count as missing); `fetch`
    /// gets it from the network (`Ok(None)`: there is none); `keep` decides whether a fetched
    /// entry may be stored (unverified material never is).
    pub fn get<T: Serialize + DeserializeOwned, E: FetchError>(
        &self,
        online: bool,
        fetched_at: impl Fn(&T) -> i64,
        usable: impl Fn(&T) -> bool,
        fetch: impl FnOnce() -> Result<Option<T>, E>,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Got<T>, Miss<E>> {
        let state = |entry: &T, max_stale: i64| freshness(fetched_at(entry), self.now, self.lifetime.ttl_micros, max_stale);
        let cached: Option<T> = self.cache.read::<T>(self.kind, self.key).filter(|e| usable(e));
        if !online {
            return cached.map(Got::Offline).ok_or(Miss::Offline);
        }
        let freshness_now = cached.as_ref().map(|e| state(e, self.lifetime.max_stale_micros));
        let cached = match (cached, freshness_now) {
            (Some(entry), Some(Freshness::Fresh)) => return Ok(Got::Cached(entry)),
            (cached, _) => cached,
        };
        let _lock = self.cache.lock(self.kind, self.key);
        if let Some(entry) = self.cache.read::<T>(self.kind, self.key).filter(|e| usable(e) && state(e, 0) == Freshness::Fresh) {
            return Ok(Got::Cached(entry));
        }
        match fetch() {
            Ok(Some(entry)) => {
                if keep(&entry) {
                    self.cache.write(self.kind, self.key, &entry);
                }
                Ok(Got::Fetched(entry))
            }
            Ok(None) => Err(Miss::Nothing),
            Err(e) => match (e.network(), cached) {
                (Ok(net), Some(entry)) if freshness_now == Some(Freshness::Stale) => Ok(Got::Stale(entry, net)),
                (Ok(net), _) => Err(Miss::Lookup(E::from_network(net))),
                (Err(e), _) => Err(Miss::Lookup(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::HandleEntry;

    const TTL: i64 = 100;
    const STALE: i64 = 1000;

    fn material<'a>(cache: &'a Cache, now: i64) -> Material<'a> {
        Material { cache, kind: Kind::Handle, key: &["alice.test"], now, lifetime: Lifetime { ttl_micros: TTL, max_stale_micros: STALE } }
    }

    fn entry(did: &str, at: i64) -> HandleEntry {
        HandleEntry { handle: "alice.test".into(), did: did.into(), fetched_at: at }
    }

    fn get(m: &Material<'_>, online: bool, answer: Result<Option<HandleEntry>, LookupError>, keep: bool) -> (Result<Got<HandleEntry>, Miss>, bool) {
        let called = std::cell::Cell::new(false);
        let got = m.get(
            online,
            |e: &HandleEntry| e.fetched_at,
            |_| true,
            || {
                called.set(true);
                answer
            },
            |_| keep,
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
}
