//! A publication: the publisher's signed word that, at `publishedAt`, this bundle (by its
//! SHA-256) was what it fetched for this DID. Its fetch times then count on nodes that trust the
//! publisher's key (`bundle_signers`), as if the node had fetched it itself; without it, a
//! bundle's `fetchedAt` is a claim, capped by each proof's signed commit time.
//!
//! The envelope is DSSE (the Dead Simple Signing Envelope of in-toto and Sigstore) around an
//! in-toto Statement v1: existing formats that other tools read, with the signature over DSSE's
//! pre-authentication encoding, so the payload is never parsed before it is verified. The key
//! is an ATProto one (P-256 or secp256k1, `did:key` as its id, 64-byte low-S signatures), so a
//! node verifies it with the code that verifies commits.

use atproto_sig_core::crypto::{PrivateKey, PublicKey};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://atproto-verifier.dev/bundle-publication/v1";
/// Largest envelope read (one statement and a few signatures fit in far less).
pub const MAX_ENVELOPE: usize = 64 << 10;
/// Most signatures looked at in one envelope.
const MAX_SIGNATURES: usize = 8;

/// What a verified publication vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vouched {
    /// When the publisher published it (its clock, signed).
    pub published_at: i64,
    /// The publisher's key, as `did:key`.
    pub publisher: String,
}

/// Why a publication does not vouch for a bundle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublicationError {
    #[error("the publication envelope is over {MAX_ENVELOPE} bytes")]
    TooLarge,
    #[error("the publication envelope is not a DSSE envelope: {0}")]
    NotAnEnvelope(String),
    #[error("the publication is signed by none of bundle_signers ({0})")]
    NoTrustedSignature(String),
    #[error("the signed statement is not a bundle publication: {0}")]
    Statement(String),
    #[error("the signed statement is for {signed}, not this bundle ({actual})")]
    OtherSubject { signed: String, actual: String },
    #[error("the publication is dated {0}, in the future by this node's clock")]
    Future(String),
}

/// DSSE's pre-authentication encoding: what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The envelope (JSON bytes) of `key`'s publication of `bundle` for `did` at `published_at`.
pub fn sign(key: &PrivateKey, did: &str, bundle: &[u8], published_at: i64) -> Vec<u8> {
    let publisher = key.public_key().to_did_key();
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": did, "digest": {"sha256": hex_sha256(bundle)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "did": did,
            "publishedAt": atproto_sig_core::syntax::format_datetime_micros(published_at),
            "publisher": publisher,
        },
    });
    let payload = statement.to_string().into_bytes();
    let signature = key.sign(&pae(PAYLOAD_TYPE, &payload));
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": b64.encode(&payload),
        "signatures": [{"keyid": publisher, "sig": b64.encode(signature)}],
    })
    .to_string()
    .into_bytes()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload_type: String,
    payload: String,
    signatures: Vec<Signature>,
}

#[derive(Deserialize)]
struct Signature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

/// Verifies `envelope` as a publication of exactly `bundle` for `did` by one of `signers`,
/// dated no later than `now` + `skew` (micros).
pub fn verify(envelope: &[u8], bundle: &[u8], did: &str, signers: &[PublicKey], now: i64, skew: i64) -> Result<Vouched, PublicationError> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(PublicationError::TooLarge);
    }
    let envelope: Envelope = serde_json::from_slice(envelope).map_err(|e| PublicationError::NotAnEnvelope(crate::limits::short(&e.to_string(), 120)))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(&envelope.payload).map_err(|_| PublicationError::NotAnEnvelope("payload is not base64".into()))?;
    let signed = pae(&envelope.payload_type, &payload);
    // The signature first: nothing of the payload is read before it verifies.
    let publisher = envelope
        .signatures
        .iter()
        .take(MAX_SIGNATURES)
        .find_map(|s| {
            let key = signers.iter().find(|k| k.to_did_key() == s.keyid)?;
            let sig = b64.decode(&s.sig).ok()?;
            key.verify(&signed, &sig).ok().map(|()| key.to_did_key())
        })
        .ok_or_else(|| PublicationError::NoTrustedSignature(signers.iter().map(PublicKey::to_did_key).collect::<Vec<_>>().join(", ")))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(PublicationError::Statement(format!("payload type {:?}", crate::limits::short(&envelope.payload_type, 80))));
    }
    let statement: Json = serde_json::from_slice(&payload).map_err(|e| PublicationError::Statement(e.to_string()))?;
    let field = |path: &[&str]| -> Option<&str> { path.iter().try_fold(&statement, |v, k| v.get(*k)).and_then(Json::as_str) };
    if field(&["_type"]) != Some(STATEMENT_TYPE) || field(&["predicateType"]) != Some(PREDICATE_TYPE) {
        return Err(PublicationError::Statement("not an in-toto v1 bundle publication".into()));
    }
    let subjects = statement.get("subject").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default();
    let [subject] = subjects else { return Err(PublicationError::Statement("it must name exactly one subject".into())) };
    let actual = format!("{did} sha256:{}", hex_sha256(bundle));
    let named = subject.get("name").and_then(Json::as_str).unwrap_or("");
    let digest = subject.get("digest").and_then(|d| d.get("sha256")).and_then(Json::as_str).unwrap_or("");
    let signed_subject = format!("{} sha256:{}", crate::limits::short(named, 200), crate::limits::short(digest, 80));
    if signed_subject != actual || field(&["predicate", "did"]) != Some(did) {
        return Err(PublicationError::OtherSubject { signed: signed_subject, actual });
    }
    let published = field(&["predicate", "publishedAt"]).unwrap_or("");
    let published_at = atproto_sig_core::syntax::parse_datetime_micros(published)
        .ok_or_else(|| PublicationError::Statement(format!("publishedAt {:?} is not a date", crate::limits::short(published, 60))))?;
    if published_at > now.saturating_add(skew) {
        return Err(PublicationError::Future(crate::limits::short(published, 60)));
    }
    Ok(Vouched { published_at, publisher })
}

#[cfg(test)]
mod tests {
    use atproto_sig_core::crypto::Curve;

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn key(seed: &str) -> PrivateKey {
        PrivateKey::from_bytes(Curve::P256, &Sha256::digest(seed.as_bytes())).unwrap()
    }

    #[test]
    fn a_publication_vouches_for_exactly_its_bundle_did_and_signer() {
        let (publisher, stranger) = (key("publisher"), key("stranger"));
        let trusted = [publisher.public_key()];
        let envelope = sign(&publisher, "did:plc:abc", b"bundle", NOW - 10);
        let vouched = verify(&envelope, b"bundle", "did:plc:abc", &trusted, NOW, 0).unwrap();
        assert_eq!(vouched, Vouched { published_at: NOW - 10, publisher: publisher.public_key().to_did_key() });
        // Another bundle, another DID, another signer, no signer configured.
        assert!(matches!(verify(&envelope, b"bundle2", "did:plc:abc", &trusted, NOW, 0), Err(PublicationError::OtherSubject { .. })));
        assert!(matches!(verify(&envelope, b"bundle", "did:plc:xyz", &trusted, NOW, 0), Err(PublicationError::OtherSubject { .. })));
        let forged = sign(&stranger, "did:plc:abc", b"bundle", NOW - 10);
        assert!(matches!(verify(&forged, b"bundle", "did:plc:abc", &trusted, NOW, 0), Err(PublicationError::NoTrustedSignature(_))));
        assert!(matches!(verify(&envelope, b"bundle", "did:plc:abc", &[], NOW, 0), Err(PublicationError::NoTrustedSignature(_))));
        // Dated in the future: refused, beyond the skew.
        let ahead = sign(&publisher, "did:plc:abc", b"bundle", NOW + 60_000_000);
        assert!(matches!(verify(&ahead, b"bundle", "did:plc:abc", &trusted, NOW, 1_000_000), Err(PublicationError::Future(_))));
        assert!(verify(&ahead, b"bundle", "did:plc:abc", &trusted, NOW, 120_000_000).is_ok());
    }

    #[test]
    fn a_payload_changed_after_signing_or_a_keyid_swapped_is_refused() {
        let publisher = key("publisher");
        let trusted = [publisher.public_key()];
        let envelope: Json = serde_json::from_slice(&sign(&publisher, "did:plc:abc", b"bundle", NOW)).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut statement: Json = serde_json::from_slice(&b64.decode(envelope["payload"].as_str().unwrap()).unwrap()).unwrap();
        statement["predicate"]["publishedAt"] = json!("2030-01-01T00:00:00Z");
        let mut tampered = envelope.clone();
        tampered["payload"] = json!(b64.encode(statement.to_string()));
        let refused = verify(tampered.to_string().as_bytes(), b"bundle", "did:plc:abc", &trusted, NOW, 0);
        assert!(matches!(refused, Err(PublicationError::NoTrustedSignature(_))), "{refused:?}");
        // The payload type is signed too.
        let mut retyped = envelope.clone();
        retyped["payloadType"] = json!("text/plain");
        assert!(verify(retyped.to_string().as_bytes(), b"bundle", "did:plc:abc", &trusted, NOW, 0).is_err());
        // Garbage and oversize.
        assert!(matches!(verify(b"{", b"bundle", "did:plc:abc", &trusted, NOW, 0), Err(PublicationError::NotAnEnvelope(_))));
        assert_eq!(verify(&vec![b' '; MAX_ENVELOPE + 1], b"bundle", "did:plc:abc", &trusted, NOW, 0), Err(PublicationError::TooLarge));
    }

    #[test]
    fn pae_is_dsse_v1() {
        // The example of the DSSE protocol document.
        assert_eq!(pae("http://example.com/HelloWorld", b"hello world"), b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec());
    }
}
