//! The request half of a decision: the digest to decide, checked; the descriptor containerd
//! writes on stdin (annotations are never trusted, so never read); the image reference; the
//! trust policy file.

use std::path::Path;

use atproto_sig_core::policy::{MAX_POLICY_BYTES, Policy};
use atproto_sig_core::verify::is_valid_digest;
use serde_json::Value as Json;

use super::failure::{PolicyError, RequestError};
use crate::fsio::read_capped;
use crate::limits::{NodeLimits, short};

/// `digest`, if it is a sha256 digest.
pub fn checked_digest(digest: &str) -> Result<&str, RequestError> {
    if is_valid_digest(digest) { Ok(digest) } else { Err(RequestError::BadDigest(short(digest, 200))) }
}

/// The digest in a stdin payload: a descriptor, or the newer input wrapping one; `None` for
/// an empty payload.
pub fn descriptor_digest(payload: &[u8]) -> Result<Option<String>, RequestError> {
    if payload.len() > NodeLimits::DEFAULT.descriptor {
        return Err(RequestError::Stdin);
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json: Json = serde_json::from_slice(payload).map_err(|e| RequestError::StdinNotJson(e.to_string()))?;
    let descriptor = ["descriptor", "Descriptor", "target"].iter().find_map(|k| json.get(*k)).unwrap_or(&json);
    match descriptor.get("digest").and_then(Json::as_str) {
        Some(d) => Ok(Some(d.to_owned())),
        None => Err(RequestError::StdinNoDigest),
    }
}

/// Hint for a missing policy file.
pub const INSTALL_POLICY_HINT: &str =
    "install one, e.g. the audit-only starter: cp packaging/policies/audit-only-starter.yaml /etc/atproto-verifier/trust-policy.yaml";

/// Reads and parses the trust policy at `path`.
pub fn load_policy(path: &Path) -> Result<Policy, PolicyError> {
    let name = path.display().to_string();
    let bytes = read_capped(path, MAX_POLICY_BYTES).map_err(|e| PolicyError::Unreadable(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| PolicyError::Invalid(vec![format!("{name}: not UTF-8 text")]))?;
    Policy::parse(&text).map_err(|issues| PolicyError::Invalid(issues.iter().map(|i| i.render(&name, "error")).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_payloads() {
        assert_eq!(descriptor_digest(br#"{"mediaType":"a","digest":"sha256:1","size":3}"#), Ok(Some("sha256:1".into())));
        assert_eq!(descriptor_digest(br#"{"descriptor":{"digest":"sha256:2"},"annotations":{"x":"y"}}"#), Ok(Some("sha256:2".into())));
        assert_eq!(descriptor_digest(b"  \n"), Ok(None));
        assert!(descriptor_digest(b"{").is_err());
        assert!(descriptor_digest(b"{}").is_err());
        assert_eq!(descriptor_digest(&vec![b' '; NodeLimits::DEFAULT.descriptor + 1]), Err(RequestError::Stdin));
    }
}
