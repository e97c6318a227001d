//! Why a step of a decision failed, typed, and the one place a failure becomes a reason code
//! ([`Failure::reason`]). Checks of signed data are the core's (`verify` returns its own
//! verdict); everything the binary itself can fail at is here.

use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::{Facts, Reason, Verdict};

use crate::lookup::atproto::LookupError;
use crate::remote::NetError;

/// What a failed lookup was for: it decides the reason an answer like "not found" maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Document,
    Record,
}

/// Why a request cannot be decided at all (containerd's arguments, stdin, the reference).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("containerd did not pass -name and -digest")]
    MissingArguments,
    #[error("digest {0:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)")]
    BadDigest(String),
    #[error("stdin could not be read or is too large")]
    Stdin,
    #[error("stdin is not JSON: {0}")]
    StdinNotJson(String),
    #[error("stdin has no descriptor digest")]
    StdinNoDigest,
    #[error("{0}")]
    Reference(String),
    #[error("cannot resolve {reference} to a digest: {error}")]
    TagUnresolved { reference: String, error: crate::lookup::registry::RegistryError },
}

/// Why the trust policy cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read at all.
    #[error("{0} — every pull is blocked until a trust policy is installed")]
    Unreadable(String),
    /// It was read; these are its errors, rendered `file:line:column: error: …`.
    #[error("invalid trust policy ({} errors), first: {} — run `atproto-verifier policy check`", .0.len(), .0.first().map_or("", String::as_str))]
    Invalid(Vec<String>),
}

/// Why one step of a decision failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The descriptor on stdin names another digest than containerd's `-digest`.
    #[error("the descriptor on stdin names {stdin}, not -digest {digest}")]
    DescriptorMismatch { stdin: String, digest: String },
    /// A lookup of `what` failed.
    #[error("{}", lookup_message(what, error))]
    Lookup { what: String, kind: Lookup, error: LookupError },
    /// The handle in the image path could not be resolved.
    #[error("cannot resolve handle {identity}{}", error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Handle { identity: String, error: Option<LookupError> },
    /// The handle resolves to a DID whose document does not claim it back.
    #[error("handle {identity} points to {did}, but that DID document claims {} — the handle is not verified", claimed.as_deref().map_or("no handle".to_owned(), |h| format!("handle {h}")))]
    HandleNotClaimed { identity: String, did: String, claimed: Option<String> },
    /// Offline, and `what` is not in the cache.
    #[error(
        "{what} is not in the cache and this node is offline — on a connected machine run `atproto-verifier bundle create`, then `atproto-verifier bundle import` here"
    )]
    Offline { what: String, kind: Lookup },
    #[error("strict_plc is on and no audit log of {did} is available")]
    NoAuditLog { did: String },
    #[error("the audit log of {did} is invalid: {problem}")]
    AuditLogInvalid { did: String, problem: String },
    #[error("{0}")]
    DocumentInvalid(String),
    #[error("the DID document of {did} names no AtprotoPersonalDataServer")]
    NoPds { did: String },
    /// The document names a PDS this node will not ask (not https, not loopback).
    #[error("the DID document of {did} names PDS endpoint {pds:?}, which is not https — the document is unusable as it is")]
    PdsNotHttps { did: String, pds: String },
    /// A proof older than the one held for the same record (message from `knowledge`).
    #[error("{0}")]
    RolledBack(String),
    /// A proof outdated by the newest signed collection state this node holds.
    #[error("{0}")]
    Revoked(crate::material::knowledge::Supersession),
    #[error(
        "the newest proof for {did}/{MANIFEST_COLLECTION}/{rkey} ({}) was committed {committed} (its signed rev), longer ago than max_proof_age ({max_age}) — import a fresh bundle (`atproto-verifier bundle create` on a connected machine)",
        if *attached { "attached to the image" } else { "in this node's cache" }
    )]
    ProofTooOld { did: String, rkey: String, attached: bool, committed: String, max_age: String },
    /// The record this node saw sign the digest is gone from the PDS.
    #[error("the record at://{did}/{MANIFEST_COLLECTION}/{rkey} that signed {digest} is gone from {pds}")]
    RecordGone { did: String, rkey: String, digest: String, pds: String },
    /// A hinted or guessed record key holds no record (not evidence of deletion).
    #[error("no record for {digest} in {did}")]
    NoRecordUnder { did: String, digest: String },
    #[error("no io.atcr.manifest record for {digest} in {did} — was the image pushed through an ATProto registry?")]
    NoRecord { did: String, digest: String },
    #[error("the time budget ran out before every candidate signer was checked")]
    OutOfTime,
    #[error("the audit log of {did} gives no signing key: {problem}")]
    NoSigningKey { did: String, problem: String },
}

fn lookup_message(what: &str, error: &LookupError) -> String {
    match error {
        LookupError::Network(NetError::Deadline) => format!("the time budget ran out while fetching {what}"),
        LookupError::Network(e) => format!("cannot fetch {what}: {e} (a network failure, not a signature problem)"),
        LookupError::NotFound(e) | LookupError::Invalid(e) => e.clone(),
    }
}

impl Failure {
    /// The reason code of a failure: the one place it is decided.
    pub fn reason(&self) -> Reason {
        let network = |e: &NetError| match e {
            NetError::Deadline => Reason::DeadlineExceeded,
            NetError::RateLimited { .. } => Reason::RateLimited,
            _ => Reason::NetworkError,
        };
        match self {
            // A tag the registry could not be asked about is the network's failure, not the request's.
            Failure::Request(RequestError::TagUnresolved { error, .. }) if error.network().is_some() => error.network().map_or(Reason::NetworkError, network),
            Failure::Request(_) => Reason::InvalidRequest,
            Failure::Policy(_) => Reason::ConfigInvalid,
            Failure::DescriptorMismatch { .. } => Reason::DigestMismatch,
            Failure::Lookup { error: LookupError::Network(e), .. } | Failure::Handle { error: Some(LookupError::Network(e)), .. } => network(e),
            Failure::Lookup { error: LookupError::NotFound(_), kind: Lookup::Document, .. } | Failure::Offline { kind: Lookup::Document, .. } => {
                Reason::DidUnresolved
            }
            Failure::Lookup { error: LookupError::NotFound(_), kind: Lookup::Record, .. } | Failure::Offline { kind: Lookup::Record, .. } => {
                Reason::RecordNotFound
            }
            Failure::Lookup { error: LookupError::Invalid(_), kind: Lookup::Document, .. } => Reason::DidDocumentInvalid,
            Failure::Lookup { error: LookupError::Invalid(_), kind: Lookup::Record, .. } => Reason::ProofMalformed,
            Failure::Handle { .. } | Failure::HandleNotClaimed { .. } => Reason::IdentityUnresolved,
            Failure::NoAuditLog { .. } => Reason::DidUnresolved,
            Failure::AuditLogInvalid { .. } | Failure::DocumentInvalid(_) | Failure::NoPds { .. } | Failure::PdsNotHttps { .. } => Reason::DidDocumentInvalid,
            Failure::RolledBack(_) => Reason::ProofRolledBack,
            Failure::Revoked(s) if s.gone() => Reason::RecordDeleted,
            Failure::Revoked(_) => Reason::ProofRolledBack,
            Failure::ProofTooOld { .. } => Reason::ProofTooOld,
            Failure::RecordGone { .. } => Reason::RecordDeleted,
            Failure::NoRecordUnder { .. } | Failure::NoRecord { .. } => Reason::RecordNotFound,
            Failure::OutOfTime => Reason::DeadlineExceeded,
            Failure::NoSigningKey { .. } => Reason::DidDocumentInvalid,
        }
    }

    /// What to do about a request refused with this failure, for people: the same words on
    /// the command line, in containerd's log and in a server's answer ("" when the message
    /// already says it).
    pub fn hint(&self) -> &'static str {
        match self {
            Failure::Request(RequestError::TagUnresolved { error, .. }) if error.network().is_some() => {
                "the registry could not be reached: retry, check `atproto-verifier doctor`, or name the image by digest (IMAGE@sha256:…)"
            }
            Failure::Request(RequestError::TagUnresolved { .. }) => "name the image by digest: IMAGE@sha256:… (or pass the digest: `verify --digest`)",
            Failure::Policy(PolicyError::Unreadable(_)) => super::request::INSTALL_POLICY_HINT,
            Failure::Policy(PolicyError::Invalid(_)) => "run: atproto-verifier policy check",
            _ => "",
        }
    }

    /// The verdict on candidate `did` this failure amounts to.
    pub fn verdict(self, did: &str) -> Verdict {
        Verdict { reason: self.reason(), message: self.to_string(), facts: Facts { did: did.to_owned(), ..Facts::default() } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_failure_is_never_a_verdict_about_signatures() {
        for kind in [Lookup::Document, Lookup::Record] {
            let failure = Failure::Lookup { what: "x".into(), kind, error: LookupError::Network(NetError::Connect("refused".into())) };
            assert_eq!(failure.reason(), Reason::NetworkError);
            assert!(failure.to_string().contains("not a signature problem"));
            let failure = Failure::Lookup { what: "x".into(), kind, error: LookupError::Network(NetError::Deadline) };
            assert_eq!(failure.reason(), Reason::DeadlineExceeded);
        }
        let handle = Failure::Handle { identity: "a.test".into(), error: Some(LookupError::Network(NetError::Io("dns".into()))) };
        assert_eq!(handle.reason(), Reason::NetworkError);
    }

    #[test]
    fn a_tag_the_registry_could_not_be_asked_about_is_a_network_failure_not_a_bad_request() {
        use crate::lookup::registry::RegistryError;
        let unresolved = |error| Failure::Request(RequestError::TagUnresolved { reference: "r.test/a:1".into(), error });
        let down = RegistryError::Network(NetError::Connect("refused".into()));
        assert_eq!(unresolved(down.clone()).reason(), Reason::NetworkError);
        assert!(unresolved(down.clone()).hint().contains("could not be reached"));
        let endpoints = RegistryError::Endpoints(vec![("mirror".into(), down.clone()), ("r.test".into(), RegistryError::Network(NetError::Deadline))]);
        assert_eq!(unresolved(endpoints).reason(), Reason::DeadlineExceeded);
        // An answer (a tag that does not exist) among them: the registry spoke.
        let answered = RegistryError::Endpoints(vec![("mirror".into(), down), ("r.test".into(), RegistryError::Answer("a:1 not found".into()))]);
        assert_eq!(unresolved(answered).reason(), Reason::InvalidRequest);
        assert_eq!(unresolved(RegistryError::Answer("a:1 not found".into())).reason(), Reason::InvalidRequest);
    }
}
