//! The fleet on the registry: one publisher per cluster (or per air gap) fetches each signer's
//! knowledge once and pushes it, as a bundle, to an OCI repository; every node reads that
//! repository through the registry client it already has (hosts.toml mirrors, credentials,
//! token auth) instead of asking the signers' PDSes itself.
//!
//! The layout of `oci://REGISTRY/REPOSITORY`:
//! - one artifact per DID, under a tag of its own ([`tag_for`]): `artifactType`
//!   [`BUNDLE_ARTIFACT_TYPE`], the bundle as its first layer and, when the publisher signs, a
//!   DSSE envelope ([`publication`]) as its second; both are also embedded in the manifest
//!   (descriptor `data`, up to [`MAX_EMBEDDED_BUNDLE`]), so an import is one request;
//! - one OCI index under the tag [`INDEX_TAG`], listing every DID's artifact: what nodes poll.
//!
//! The registry is not trusted. Every bundle is imported by the ordinary knowledge rules
//! (signatures checked, nothing moves backwards), so a registry can withhold updates (bounded
//! as offline: `proof_ttl` online, `max_proof_age` offline) but never make a node admit
//! anything its signer did not sign. Its index only says what to fetch.

pub mod publication;
pub mod publish;
pub mod pull;

use atproto_sig_core::reference::ImageRef;
use sha2::{Digest, Sha256};

/// The artifact type of a published bundle.
pub const BUNDLE_ARTIFACT_TYPE: &str = "application/vnd.atproto-verifier.bundle.v1";
/// The media type of the bundle layer (the `bundle create` JSON).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.atproto-verifier.bundle.v1+json";
/// The media type of the publication's DSSE envelope layer.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// OCI's empty config (`{}`), as artifacts without a config of their own use.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The tag of the index nodes poll.
pub const INDEX_TAG: &str = "index";
/// The annotation naming a descriptor's DID.
pub const DID_ANNOTATION: &str = "io.atproto.did";
/// Most DIDs one index may list (a node reads no more of it).
pub const MAX_INDEX_ENTRIES: usize = 10_000;
/// The largest bundle also embedded in its artifact's manifest (the descriptor's `data`, OCI
/// image-spec 1.1), so a node fetches one manifest instead of a manifest and two blobs: base64
/// of this stays well under the 4 MiB manifest limit of registries (and of our own reader).
pub const MAX_EMBEDDED_BUNDLE: usize = 256 << 10;

/// Where a fleet's bundles live: `oci://REGISTRY/REPOSITORY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The index reference (`REGISTRY/REPOSITORY:index`), host in canonical form.
    pub index: ImageRef,
}

impl Location {
    /// Parses `oci://REGISTRY/REPOSITORY` (no tag, no digest: the layout names its own tags).
    pub fn parse(text: &str) -> Result<Location, String> {
        let rest = text.strip_prefix("oci://").ok_or_else(|| format!("{:?} is not oci://REGISTRY/REPOSITORY", crate::limits::short(text, 100)))?;
        let last = rest.rsplit('/').next().unwrap_or("");
        if !rest.contains('/') || last.contains(':') || rest.contains('@') {
            return Err(format!(
                "{:?}: name a registry and a repository, with no tag or digest (oci://registry.example/fleet/bundles)",
                crate::limits::short(text, 100)
            ));
        }
        let index = ImageRef::parse(&format!("{rest}:{INDEX_TAG}")).map_err(|e| format!("{:?}: {e}", crate::limits::short(text, 100)))?;
        Ok(Location { index })
    }

    /// The canonical spelling (`oci://host/repository`): two spellings of one registry are one.
    pub fn canonical(&self) -> String {
        format!("oci://{}/{}", self.index.host, self.index.path)
    }
}

/// Reads a publisher key file: one private Multikey, no access for others.
pub fn read_key(path: &std::path::Path) -> Result<atproto_sig_core::crypto::PrivateKey, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Group read is allowed (a Kubernetes Secret reaches a non-root Pod through its fsGroup);
    // anyone else's access, or a group that may write it, is not.
    if meta.permissions().mode() & 0o027 != 0 {
        return Err(format!("{}: a private key must not be readable by others nor writable by its group (chmod 600, or 440 for a group)", path.display()));
    }
    let text = crate::fsio::read_capped(path, 1024).map_err(|e| format!("{}: {e}", path.display()))?;
    // Never the content in a message: it is a secret.
    atproto_sig_core::crypto::PrivateKey::from_multikey(&String::from_utf8_lossy(&text)).map_err(|e| format!("{}: not a publisher key ({e})", path.display()))
}

/// The tag a DID's bundle is published under: `did-plc-<id>` for did:plc (readable, and an id
/// is base32: no two DIDs share it); a hash for others (a did:web's `:` and `-` would collide).
pub fn tag_for(did: &str) -> String {
    if let Some(id) = did.strip_prefix("did:plc:")
        && !id.is_empty()
        && id.len() <= 100
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return format!("did-plc-{id}");
    }
    let hash: String = Sha256::digest(did.as_bytes()).iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("did-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_registry_and_repository_only_and_canonical() {
        let at = Location::parse("oci://Registry.Example:443/fleet/bundles").unwrap();
        assert_eq!(at.canonical(), "oci://registry.example/fleet/bundles");
        assert_eq!(at.index.tag.as_deref(), Some(INDEX_TAG));
        for bad in ["registry.example/fleet", "oci://registry.example", "oci://registry.example/fleet:v1", "oci://registry.example/fleet@sha256:00"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_did_gets_a_valid_tag_of_its_own() {
        assert_eq!(tag_for("did:plc:ewvi7nxzyoun6zhxrhs64oiz"), "did-plc-ewvi7nxzyoun6zhxrhs64oiz");
        let (a, b) = (tag_for("did:web:a-b.example"), tag_for("did:web:a:b.example"));
        assert_ne!(a, b);
        for tag in [a, b, tag_for("did:plc:UPPER"), tag_for(&format!("did:plc:{}", "a".repeat(300)))] {
            assert!(tag.len() <= 128 && tag.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'), "{tag}");
        }
    }
}
