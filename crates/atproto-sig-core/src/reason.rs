//! The stable reason codes every decision carries (scripts and audit logs match on them).

use std::fmt;

/// Every outcome the verifier reports. The string codes are stable: scripts and audit logs
/// match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The proof checks out.
    Verified,
    /// The matching rule requires no signature.
    NotRequired,
    /// No rule matched and the default rejects.
    NoMatchingRule,
    /// A handle in the image reference could not be resolved or verified.
    IdentityUnresolved,
    /// A DID document could not be obtained.
    DidUnresolved,
    /// The DID document has no usable `#atproto` key, or is for another DID.
    DidDocumentInvalid,
    /// No record for the digest could be located.
    RecordNotFound,
    /// The signed repository proves the record is absent.
    RecordDeleted,
    /// The proof is structurally invalid (CAR, CBOR, commit, MST, missing blocks).
    ProofMalformed,
    /// The commit signature does not verify under the DID's key.
    SignatureInvalid,
    /// The commit belongs to another DID.
    DidMismatch,
    /// The commit rev is further in the future than the allowed clock skew.
    RevInFuture,
    /// The record is not a valid `io.atcr.manifest`.
    RecordInvalid,
    /// The record names another digest.
    DigestMismatch,
    /// The record names another repository.
    RepositoryMismatch,
    /// The signer is not trusted by the matching rule.
    UntrustedSigner,
    /// The signer is trusted, but not now (outside validFrom / expiresAt).
    SignerExpired,
    /// Fewer distinct trusted signers than `minSignatures`.
    TooFewSignatures,
    /// A network failure kept the verifier from deciding (never a signature verdict).
    NetworkError,
    /// A host asked us to wait (HTTP 429/503 with a time): not asked before then; undecided.
    RateLimited,
    /// The time budget ran out.
    DeadlineExceeded,
    /// The configuration or policy is invalid.
    ConfigInvalid,
    /// The request itself is malformed (bad digest, rkey, DID).
    InvalidRequest,
    /// Offline, the newest proof available was committed longer ago than the configured
    /// maximum age (measured from its signed commit rev).
    ProofTooOld,
    /// A proof older (by signed commit rev) than the one this node already holds for the same
    /// record: accepting it would move the node's knowledge backwards (a rollback).
    ProofRolledBack,
}

impl Reason {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Verified => "verified",
            Reason::NotRequired => "not-required",
            Reason::NoMatchingRule => "no-matching-rule",
            Reason::IdentityUnresolved => "identity-unresolved",
            Reason::DidUnresolved => "did-unresolved",
            Reason::DidDocumentInvalid => "did-document-invalid",
            Reason::RecordNotFound => "record-not-found",
            Reason::RecordDeleted => "record-deleted",
            Reason::ProofMalformed => "proof-malformed",
            Reason::SignatureInvalid => "signature-invalid",
            Reason::DidMismatch => "did-mismatch",
            Reason::RevInFuture => "rev-in-future",
            Reason::RecordInvalid => "record-invalid",
            Reason::DigestMismatch => "digest-mismatch",
            Reason::RepositoryMismatch => "repository-mismatch",
            Reason::UntrustedSigner => "untrusted-signer",
            Reason::SignerExpired => "signer-expired",
            Reason::TooFewSignatures => "too-few-signatures",
            Reason::NetworkError => "network-error",
            Reason::RateLimited => "rate-limited",
            Reason::DeadlineExceeded => "deadline-exceeded",
            Reason::ConfigInvalid => "config-invalid",
            Reason::InvalidRequest => "invalid-request",
            Reason::ProofTooOld => "proof-too-old",
            Reason::ProofRolledBack => "proof-rolled-back",
        }
    }

    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: [Reason; 25] = [
        Reason::Verified,
        Reason::NotRequired,
        Reason::NoMatchingRule,
        Reason::IdentityUnresolved,
        Reason::DidUnresolved,
        Reason::DidDocumentInvalid,
        Reason::RecordNotFound,
        Reason::RecordDeleted,
        Reason::ProofMalformed,
        Reason::SignatureInvalid,
        Reason::DidMismatch,
        Reason::RevInFuture,
        Reason::RecordInvalid,
        Reason::DigestMismatch,
        Reason::RepositoryMismatch,
        Reason::UntrustedSigner,
        Reason::SignerExpired,
        Reason::TooFewSignatures,
        Reason::NetworkError,
        Reason::RateLimited,
        Reason::DeadlineExceeded,
        Reason::ConfigInvalid,
        Reason::InvalidRequest,
        Reason::ProofTooOld,
        Reason::ProofRolledBack,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
