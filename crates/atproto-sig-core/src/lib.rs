//! Pure verification of ATProto-signed records, for container image signatures.
//!
//! Bytes in, typed verdict out: no I/O, no clock (the caller passes `now`), no globals.
//! Everything this crate parses is treated as hostile: every parser has explicit limits
//! ([`limits::Limits`]), never panics, and never allocates more than its input can back.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod car;
pub mod cbor;
pub mod cid;
pub mod collection;
pub mod commit;
pub mod commit_proof;
pub mod crypto;
pub mod did;
pub mod encoding;
pub mod firehose;
pub mod known;
pub mod limits;
pub mod mst;
pub mod parsed_keys;
pub mod plc;
pub mod policy;
pub mod reason;
pub mod record;
pub mod reference;
pub mod syntax;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod verify;
pub mod yaml;

pub use known::KnownBlocks;
pub use limits::Limits;
pub use parsed_keys::ParsedKeys;
pub use verify::{Expectation, Facts, KeySource, ProofInput, Reason, Verdict, verify};
