//! The material of one decision, or of one batch of lookups ([`Session`]): config, policy,
//! cache, clients, files, clock, deadline, what the decision noted along the way; and the DID
//! document step.

#![allow(clippy::result_large_err)]

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;

use atproto_sig_core::did::{DidDocument, DidMethod, did_method};
use atproto_sig_core::policy::Policy;
use atproto_sig_core::{Limits, Verdict};

use super::Requests;
use super::failure::{Failure, Lookup};
use crate::config::Config;
use crate::limits::NodeLimits;
use crate::log::Notes;
use crate::lookup::atproto;
use crate::lookup::registry::Files;
use crate::material::knowledge::{self, Refusal};
use crate::material::read::{Got, Lifetime, Material, Miss, Refresh};
use crate::material::store::{Cache, DidEntry, Kind};
use crate::remote::{Deadline, Http, InFlight, Remote, Resolve};

/// Said whenever a decision rests on cached material past its TTL.
pub const STALE_NOTE: &str = " — from cached data past its TTL, because the network failed";

/// How a session reads remote material, beyond what the config says.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Another cache directory than the config's (`bundle create` collects into a scratch one).
    pub cache_dir: Option<PathBuf>,
    /// When cached material is fetched again (`cache refresh`: past half its TTL).
    pub refresh: Refresh,
    /// Fetch and verify every did:plc audit log, whatever `strict_plc` says (bundles carry them).
    pub audit_logs: bool,
    /// Go online even if the config says offline (`bundle create` runs on a connected machine).
    pub online: bool,
    /// The registry is asked too (tags, referrer hints, attached proofs); else only identities.
    pub registry: bool,
}

/// One decision's (or one batch job's) material and what it noted. Built per decision (or
/// per job) on the thread that runs it: the world ([`Remote`]) is shared, a session is not.
pub struct Session<'a> {
    pub(crate) config: &'a Config,
    pub(crate) policy: &'a Policy,
    pub(crate) cache: Cache,
    /// The identity client (PLC, PDS, handles); `None` when offline: no request can be made.
    pub(crate) http: Option<Http>,
    /// The registry client: also present offline (the registry or its mirror is the one remote
    /// an offline node still reaches, for proofs attached to images); `None` when not asked.
    pub(crate) registry: Option<Http>,
    /// hosts.toml and the docker config, read once per session.
    pub(crate) files: Files,
    pub(crate) dns: Arc<dyn Resolve>,
    pub(crate) now: i64,
    pub(crate) deadline: Deadline,
    pub(crate) refresh: Refresh,
    pub(crate) strict_plc: bool,
    pub(crate) limits: NodeLimits,
    /// Diagnostic lines of this decision (stderr, containerd's debug log; a server's log).
    pub(crate) notes: Notes,
    /// Set when cached material past its TTL was used because the network failed.
    pub(crate) used_stale: Cell<bool>,
    /// What verified proofs rest on when not fetched just now (see [`super::Origin::note`]).
    pub(crate) provenance: RefCell<Vec<String>>,
    /// Proof CARs found attached to the image in the registry: (did, rkey, car).
    pub(crate) attached: RefCell<Vec<(String, String, Vec<u8>)>>,
    /// What a prefetch on another thread needs to build its own session.
    pub(crate) world: Remote,
    pub(crate) in_flight: InFlight,
    pub(crate) options: SessionOptions,
    /// Requests made by prefetches for this session.
    pub(crate) prefetched_requests: Cell<usize>,
}

impl<'a> Session<'a> {
    /// A session over `remote`, due by `deadline`, its requests marked in `in_flight`.
    pub fn new(
        config: &'a Config,
        policy: &'a Policy,
        remote: &Remote,
        now: i64,
        deadline: Deadline,
        in_flight: &InFlight,
        options: SessionOptions,
    ) -> Session<'a> {
        let client = || Http::new(Arc::clone(&remote.fetch), config.request_timeout.0, deadline, in_flight.clone());
        let online = options.online || !config.offline;
        let notes = Notes::collect();
        let world = remote.clone();
        let kept_options = options.clone();
        Session {
            config,
            policy,
            cache: Cache::new(options.cache_dir.as_deref().unwrap_or(&config.cache_dir)).with_notes(notes.clone()),
            http: online.then(client),
            registry: options.registry.then(client),
            files: Files::new(config, deadline, notes.clone()),
            dns: Arc::clone(&remote.resolve),
            now,
            deadline,
            refresh: options.refresh,
            strict_plc: options.audit_logs || config.strict_plc,
            limits: NodeLimits::DEFAULT,
            notes,
            used_stale: Cell::default(),
            provenance: RefCell::default(),
            attached: RefCell::default(),
            world,
            in_flight: in_flight.clone(),
            options: kept_options,
            prefetched_requests: Cell::new(0),
        }
    }

    /// The requests made so far.
    pub fn requests(&self) -> Requests {
        let registry = self.registry.as_ref().map_or(0, Http::request_count);
        let identity = self.http.as_ref().map_or(0, Http::request_count) + self.prefetched_requests.get();
        Requests { identity, registry }
    }

    /// The notes made so far, taken.
    pub fn take_notes(&self) -> Vec<String> {
        self.notes.take()
    }

    /// The identity client, when online.
    pub(crate) fn http(&self) -> Option<&Http> {
        self.http.as_ref()
    }

    /// The digest the tag of `image` points to, asked of its registry.
    pub fn resolve_tag(&self, image: &atproto_sig_core::reference::ImageRef) -> Result<String, crate::lookup::registry::RegistryError> {
        let Some(http) = &self.registry else { return Err(crate::lookup::registry::RegistryError::Offline) };
        crate::lookup::registry::resolve_tag(self.config, &self.files, image, http)
    }

    /// This session's clock.
    pub fn now(&self) -> i64 {
        self.now
    }

    pub(super) fn note(&self, line: String) {
        self.notes.push(line);
    }

    /// The DID document of `did` (from cache or network), and whether stale material was used.
    pub fn document(&self, did: &str) -> Result<(DidDocument, bool), Verdict> {
        self.document_read(did, self.refresh).map(|(document, stale, _)| (document, stale))
    }

    /// Whether `did`'s document would be fetched (none fresh in the cache, and online).
    pub(super) fn document_needs_fetch(&self, did: &str) -> bool {
        if self.http.is_none() {
            return false;
        }
        let strict = self.strict_plc && did_method(did) == Ok(DidMethod::Plc);
        let key = [did];
        !self.material(Kind::Did, &key, self.config.did_ttl).is_fresh(|e: &DidEntry| !strict || e.audit_log.is_some())
    }

    /// Runs `work` (which may make requests) while `did`'s DID document is fetched into the
    /// cache on another thread, when it would be fetched anyway: the two round trips overlap
    /// instead of following each other. The document is read later the usual way (from the
    /// cache it went into, through `knowledge::accept_document`); the prefetch's requests and
    /// notes count as this session's.
    pub(super) fn with_document_prefetch<T>(&self, did: Option<&str>, work: impl FnOnce() -> T) -> T {
        let Some(did) = did.filter(|d| self.document_needs_fetch(d)) else { return work() };
        let (config, policy, world, in_flight, now, deadline) = (self.config, self.policy, &self.world, &self.in_flight, self.now, self.deadline);
        let options = SessionOptions { registry: false, ..self.options.clone() };
        std::thread::scope(|scope| {
            let prefetch = std::thread::Builder::new().name("prefetch".into()).spawn_scoped(scope, move || {
                let session = Session::new(config, policy, world, now, deadline, in_flight, options);
                let _ = session.document(did);
                (session.requests().identity, session.take_notes())
            });
            let result = work();
            if let Ok(Ok((requests, notes))) = prefetch.map(|handle| handle.join()) {
                self.prefetched_requests.set(self.prefetched_requests.get() + requests);
                for note in notes {
                    self.note(note);
                }
            }
            result
        })
    }

    /// The same, read under `refresh`; and whether it was fetched just now.
    pub(super) fn document_read(&self, did: &str, refresh: Refresh) -> Result<(DidDocument, bool, bool), Verdict> {
        let limits = Limits::default();
        let strict = self.strict_plc && did_method(did) == Ok(DidMethod::Plc);
        let parse = |entry: &DidEntry| {
            let document = knowledge::document_of(entry, strict, &limits).map_err(|refusal| {
                match refusal {
                    Refusal::NoAuditLog => Failure::NoAuditLog { did: did.to_owned() },
                    Refusal::AuditLog(problem) => Failure::AuditLogInvalid { did: did.to_owned(), problem },
                    other => Failure::DocumentInvalid(other.to_string()),
                }
                .verdict(did)
            })?;
            match document.pds.as_deref() {
                Some(pds) if !atproto::is_usable_pds(pds) => {
                    Err(Failure::PdsNotHttps { did: did.to_owned(), pds: crate::limits::short(pds, 200) }.verdict(did))
                }
                _ => Ok(document),
            }
        };
        let key = [did];
        let material = Material { refresh, ..self.material(Kind::Did, &key, self.config.did_ttl) };
        let fetch = || {
            let Some(http) = &self.http else { return Ok(None) };
            let (bytes, source) = atproto::fetch_did_document(http, &self.config.plc_directory, did)?;
            let audit_log =
                if strict { Some(String::from_utf8_lossy(&atproto::fetch_audit_log(http, &self.config.plc_directory, did)?).into_owned()) } else { None };
            Ok(Some(DidEntry { did: did.to_owned(), fetched_at: self.now, source, document: String::from_utf8_lossy(&bytes).into_owned(), audit_log }))
        };
        // A document that does not parse (or disagrees with its audit log) is never stored;
        // one that does goes in the one way documents go in (never an older audit log).
        let accept = |entry: &DidEntry| {
            if parse(entry).is_ok()
                && let Err(refusal) = knowledge::accept_document(&self.cache, entry, self.now, knowledge::DocumentRules::FETCHED)
            {
                self.note(format!("the DID document {} served for {did} is not stored: {refusal}", entry.source));
            }
        };
        // Under strict_plc a cached document without its audit log is not valid for this node
        // (the setting is part of what a cached document was checked for): fetched again.
        let usable = |entry: &DidEntry| !strict || entry.audit_log.is_some();
        match material.get(self.http.is_some(), usable, fetch, accept) {
            // A held document or audit log that fails today's checks (plc.directory has removed
            // invalid operations since it was fetched): asked of the directory again before
            // anything is denied on it.
            Ok(Got::Cached(entry)) if self.http.is_some() && refresh != Refresh::Always && parse(&entry).is_err() => {
                self.note(format!("the cached DID document of {did} fails today's checks: fetching it again"));
                self.document_read(did, Refresh::Always)
            }
            Ok(Got::Cached(entry) | Got::Offline(entry)) => parse(&entry).map(|d| (d, false, false)),
            Ok(Got::Fetched(entry)) => parse(&entry).map(|d| (d, false, true)),
            Ok(Got::Stale(entry, e)) => {
                self.note(format!("using the cached DID document of {did} past its TTL: {e}"));
                parse(&entry).map(|d| (d, true, false))
            }
            Err(Miss::Offline | Miss::Nothing) => Err(Failure::Offline { what: format!("the DID document of {did}"), kind: Lookup::Document }.verdict(did)),
            Err(Miss::Lookup(error)) => Err(Failure::Lookup { what: format!("the DID document of {did}"), kind: Lookup::Document, error }.verdict(did)),
        }
    }

    /// One cache entry read the session's way: its TTL, `max_stale`, the refresh mode, the
    /// deadline (for the entry's lock).
    pub(super) fn material<'k>(&'k self, kind: Kind, key: &'k [&'k str], ttl: crate::config::Span) -> Material<'k> {
        self.material_with(kind, key, Lifetime { ttl_micros: ttl.micros(), max_stale_micros: self.config.max_stale.micros() })
    }

    pub(super) fn material_with<'k>(&'k self, kind: Kind, key: &'k [&'k str], lifetime: Lifetime) -> Material<'k> {
        Material { cache: &self.cache, kind, key, now: self.now, lifetime, refresh: self.refresh, deadline: self.deadline }
    }
}
