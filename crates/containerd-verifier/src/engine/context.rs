//! The material of one decision (or one batch): config, policy, cache, clients, clock, and what
//! the decision noted along the way; and the DID document step.

#![allow(clippy::result_large_err)]

use atproto_sig_core::did::{DidDocument, DidMethod, did_method};
use atproto_sig_core::plc::verify_audit_log;
use atproto_sig_core::policy::Policy;
use atproto_sig_core::{Limits, Verdict};

use super::failure::{Failure, Lookup};
use crate::cache::{Cache, DidEntry, Kind};
use crate::cached::{Got, Lifetime, Material, Miss};
use crate::config::Config;
use crate::net::Http;
use crate::remote::Resolve;
use crate::resolve::{self};

/// Said whenever a decision rests on cached material past its TTL.
pub const STALE_NOTE: &str = " — from cached data past its TTL, because the network failed";

/// Most candidate signers examined per decision.
pub const MAX_CANDIDATES: usize = 8;

/// Everything a decision needs from outside.
pub struct Context<'a> {
    pub config: &'a Config,
    pub policy: &'a Policy,
    pub cache: &'a Cache,
    /// `None` when offline: no client exists, so no request can be made.
    pub http: Option<&'a Http>,
    /// The registry client: also present offline (the registry or its mirror is the one remote
    /// an offline node still reaches, for proofs attached to images).
    pub registry: Option<&'a Http>,
    pub dns: &'a dyn Resolve,
    pub now: i64,
    /// Diagnostic lines for stderr (containerd's debug log).
    pub notes: std::cell::RefCell<Vec<String>>,
    /// Set when cached material past its TTL was used because the network failed.
    pub used_stale: std::cell::Cell<bool>,
    /// What verified proofs rest on when not fetched just now (see [`Origin::note`]).
    pub provenance: std::cell::RefCell<Vec<String>>,
    /// Proof CARs found attached to the image in the registry: (did, rkey, car).
    pub attached: std::cell::RefCell<Vec<(String, String, Vec<u8>)>>,
}

impl Context<'_> {
    pub(super) fn note(&self, line: String) {
        self.notes.borrow_mut().push(line);
    }

    /// The DID document (from cache or network), and whether stale material was used.
    pub fn document(&self, did: &str) -> Result<(DidDocument, bool), Verdict> {
        let limits = Limits::default();
        let parse = |entry: &DidEntry| -> Result<DidDocument, Verdict> {
            if self.config.strict_plc && did_method(did) == Ok(DidMethod::Plc) {
                let log = entry.audit_log.as_deref().ok_or_else(|| Failure::NoAuditLog { did: did.to_owned() }.verdict(did))?;
                let state = verify_audit_log(did, log.as_bytes(), &limits)
                    .map_err(|e| Failure::AuditLogInvalid { did: did.to_owned(), problem: e.to_string() }.verdict(did))?;
                return Ok(DidDocument { did: did.to_owned(), signing_key: state.signing_key(), pds: state.pds(), handle: state.handle() });
            }
            DidDocument::parse(entry.document.as_bytes(), did, &limits).map_err(|e| Failure::DocumentInvalid(e.to_string()).verdict(did))
        };
        let material = Material { cache: self.cache, kind: Kind::Did, key: &[did], now: self.now, lifetime: self.lifetime(self.config.did_ttl) };
        let fetch = || {
            let Some(http) = self.http else { return Ok(None) };
            let (bytes, source) = resolve::fetch_did_document(http, &self.config.plc_directory, did)?;
            let audit_log = if self.config.strict_plc && did_method(did) == Ok(DidMethod::Plc) {
                Some(String::from_utf8_lossy(&resolve::fetch_audit_log(http, &self.config.plc_directory, did)?).into_owned())
            } else {
                None
            };
            Ok(Some(DidEntry { did: did.to_owned(), fetched_at: self.now, source, document: String::from_utf8_lossy(&bytes).into_owned(), audit_log }))
        };
        // A document that does not parse (or disagrees with its audit log) is never stored.
        match material.get(self.http.is_some(), |e: &DidEntry| e.fetched_at, |_| true, fetch, |e| parse(e).is_ok()) {
            Ok(Got::Cached(entry) | Got::Fetched(entry) | Got::Offline(entry)) => parse(&entry).map(|d| (d, false)),
            Ok(Got::Stale(entry, e)) => {
                self.note(format!("using the cached DID document of {did} past its TTL: {e}"));
                parse(&entry).map(|d| (d, true))
            }
            Err(Miss::Offline | Miss::Nothing) => Err(Failure::Offline { what: format!("the DID document of {did}"), kind: Lookup::Document }.verdict(did)),
            Err(Miss::Lookup(error)) => Err(Failure::Lookup { what: format!("the DID document of {did}"), kind: Lookup::Document, error }.verdict(did)),
        }
    }

    /// How long material with this TTL is fresh, and may stand in when the network fails.
    pub(super) fn lifetime(&self, ttl: crate::config::Span) -> Lifetime {
        Lifetime { ttl_micros: ttl.micros(), max_stale_micros: self.config.max_stale.micros() }
    }
}

impl<'a> Context<'a> {
    /// A context for one decision (or one batch, for bundles and refreshes).
    pub fn new(
        config: &'a Config,
        policy: &'a Policy,
        cache: &'a Cache,
        http: Option<&'a Http>,
        registry: Option<&'a Http>,
        dns: &'a dyn Resolve,
        now: i64,
    ) -> Context<'a> {
        Context {
            config,
            policy,
            cache,
            http,
            registry,
            dns,
            now,
            notes: Default::default(),
            used_stale: Default::default(),
            provenance: Default::default(),
            attached: Default::default(),
        }
    }
}
