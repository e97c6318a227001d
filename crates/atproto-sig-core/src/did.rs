//! DID documents: the atproto view of one (signing key, PDS, claimed handle), accepting both the
//! Multikey form (plc.directory today) and the legacy form (`#atproto`,
//! `EcdsaSecp256k1VerificationKey2019`, bare SEC1 point).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::Value as Json;

use crate::crypto::{KeyError, PublicKey};
use crate::limits::Limits;
use crate::parsed_keys::ParsedKeys;
use crate::syntax::{is_valid_did, is_valid_did_plc, is_valid_handle};

/// The two DID methods atproto blesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DidMethod {
    /// `did:plc:<24 base32 chars>`.
    Plc,
    /// `did:web:<hostname>` (no path; a port only for localhost, percent-encoded).
    Web,
}

/// Classifies a DID, rejecting syntax errors and unsupported methods.
pub fn did_method(did: &str) -> Result<DidMethod, DidDocError> {
    if !is_valid_did(did) {
        return Err(DidDocError::InvalidDid(truncate(did)));
    }
    if let Some(host) = did.strip_prefix("did:web:") {
        // Hostname-level only: a further ':' would be a path.
        let host_ok = match host.split_once("%3A") {
            Some(("localhost", port)) => !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()),
            Some(_) => false,
            None => !host.contains(':') && is_valid_handle(host),
        };
        return if host_ok { Ok(DidMethod::Web) } else { Err(DidDocError::InvalidDid(truncate(did))) };
    }
    if did.starts_with("did:plc:") {
        return if is_valid_did_plc(did) { Ok(DidMethod::Plc) } else { Err(DidDocError::InvalidDid(truncate(did))) };
    }
    Err(DidDocError::UnsupportedMethod(truncate(did)))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The atproto-relevant content of a DID document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DidDocument {
    /// The document's `id` (equal to the DID that was asked for).
    pub did: String,
    /// The `#atproto` signing key, or why there is no usable one.
    pub signing_key: Result<PublicKey, DidDocError>,
    /// The `#atproto_pds` endpoint (scheme://host[:port], no trailing slash).
    pub pds: Option<String>,
    /// The first valid `at://` handle in `alsoKnownAs`, lowercased (not yet verified).
    pub handle: Option<String>,
}

/// Why a DID document cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DidDocError {
    /// Larger than the JSON limit.
    TooLarge(usize),
    /// Not JSON, or not an object.
    Json(String),
    /// Not a syntactically valid DID, or not a valid did:plc / did:web identifier.
    InvalidDid(String),
    /// A DID method other than plc and web.
    UnsupportedMethod(String),
    /// The document's `id` is not the DID that was resolved.
    IdMismatch {
        /// DID asked for.
        expected: String,
        /// `id` in the document.
        found: String,
    },
    /// No verification method `#atproto` controlled by the DID.
    NoSigningKey,
    /// The `#atproto` key could not be parsed.
    Key(KeyError),
}

impl fmt::Display for DidDocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DidDocError::TooLarge(n) => write!(f, "DID document is {n} bytes, over the limit"),
            DidDocError::Json(e) => write!(f, "DID document is not a JSON object: {e}"),
            DidDocError::InvalidDid(d) => write!(f, "{d:?} is not a valid did:plc or did:web"),
            DidDocError::UnsupportedMethod(d) => write!(f, "DID method of {d:?} is not supported (only did:plc and did:web)"),
            DidDocError::IdMismatch { expected, found } => {
                write!(f, "DID document id is {found:?}, expected {expected:?}")
            }
            DidDocError::NoSigningKey => write!(f, "DID document has no #atproto verification method controlled by the DID"),
            DidDocError::Key(e) => write!(f, "DID document #atproto key: {e}"),
        }
    }
}

impl std::error::Error for DidDocError {}

fn matches_fragment(id: Option<&str>, did: &str, fragment: &str) -> bool {
    id.is_some_and(|id| {
        id.strip_prefix('#').is_some_and(|f| f == fragment) || id.strip_prefix(did).and_then(|rest| rest.strip_prefix('#')).is_some_and(|f| f == fragment)
    })
}

/// Normalizes a PDS endpoint: http(s), a host, no userinfo, query, fragment or path.
pub fn normalize_endpoint(url: &str) -> Option<String> {
    let trimmed = url.strip_suffix('/').unwrap_or(url);
    let (scheme, rest) = trimmed.split_once("://")?;
    let host_ok = !rest.is_empty() && rest.len() <= 253 + 6 && rest.bytes().all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c));
    (matches!(scheme, "http" | "https") && host_ok).then(|| trimmed.to_owned())
}

/// A verification method's fields as the atproto view reads them (absent: not a string).
#[derive(Deserialize)]
struct Method<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    controller: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "publicKeyMultibase")]
    multibase: Option<Cow<'a, str>>,
}

/// A service's fields as the atproto view reads them.
#[derive(Deserialize)]
struct Service<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "serviceEndpoint")]
    endpoint: Option<Cow<'a, str>>,
}

/// The fields of a document the atproto view reads, borrowed from the input where the JSON
/// has no escapes; unknown fields are skipped unparsed. The fast route for documents of the
/// usual shape: any other shape (a field of another type, a duplicate field) fails here and is
/// read through `serde_json::Value` instead, so both routes give the same document.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow, rename = "alsoKnownAs")]
    also_known_as: Vec<Cow<'a, str>>,
    #[serde(default, borrow, rename = "verificationMethod")]
    methods: Vec<Method<'a>>,
    #[serde(default, borrow, rename = "service")]
    services: Vec<Service<'a>>,
}

impl Fields<'_> {
    /// The same fields read from a parsed JSON value (a field of another type reads as absent).
    fn of_json(json: &Json) -> Result<Fields<'_>, DidDocError> {
        let object = json.as_object().ok_or_else(|| DidDocError::Json("not an object".into()))?;
        fn text<'j>(value: &'j Json, name: &str) -> Option<Cow<'j, str>> {
            value.get(name).and_then(Json::as_str).map(Cow::Borrowed)
        }
        let list = |name| object.get(name).and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default();
        Ok(Fields {
            id: Cow::Borrowed(object.get("id").and_then(Json::as_str).unwrap_or_default()),
            also_known_as: list("alsoKnownAs").iter().filter_map(Json::as_str).map(Cow::Borrowed).collect(),
            methods: list("verificationMethod")
                .iter()
                .map(|m| Method { id: text(m, "id"), kind: text(m, "type"), controller: text(m, "controller"), multibase: text(m, "publicKeyMultibase") })
                .collect(),
            services: list("service").iter().map(|s| Service { id: text(s, "id"), kind: text(s, "type"), endpoint: text(s, "serviceEndpoint") }).collect(),
        })
    }

    /// The atproto view of these fields, for `expected_did`.
    fn document(&self, expected_did: &str, keys: Option<&ParsedKeys>) -> Result<DidDocument, DidDocError> {
        let id = self.id.as_ref();
        if id != expected_did {
            return Err(DidDocError::IdMismatch { expected: expected_did.to_owned(), found: truncate(id) });
        }
        let did = id;
        // The first #atproto method controlled by the DID wins; later ones are ignored.
        let signing_key = self
            .methods
            .iter()
            .find(|m| matches_fragment(m.id.as_deref(), did, "atproto") && m.controller.as_deref() == Some(did))
            .ok_or(DidDocError::NoSigningKey)
            .and_then(|m| {
                let kind = m.kind.as_deref().unwrap_or_default();
                let multibase = m.multibase.as_deref().unwrap_or_default();
                match keys {
                    Some(keys) => keys.from_verification_method(kind, multibase),
                    None => PublicKey::from_verification_method(kind, multibase),
                }
                .map_err(DidDocError::Key)
            });
        let pds = self.services.iter().find_map(|s| {
            let is_pds = matches_fragment(s.id.as_deref(), did, "atproto_pds") && s.kind.as_deref() == Some("AtprotoPersonalDataServer");
            if !is_pds {
                return None;
            }
            s.endpoint.as_deref().and_then(normalize_endpoint)
        });
        let handle = self.also_known_as.iter().filter_map(|aka| aka.strip_prefix("at://")).find(|h| is_valid_handle(h)).map(str::to_ascii_lowercase);
        Ok(DidDocument { did: did.to_owned(), signing_key, pds, handle })
    }
}

impl DidDocument {
    /// Parses a DID document for `expected_did`.
    pub fn parse(bytes: &[u8], expected_did: &str, limits: &Limits) -> Result<DidDocument, DidDocError> {
        DidDocument::parse_document(bytes, expected_did, limits, None)
    }

    /// [`DidDocument::parse`], with the signing key taken from `keys` when its text was parsed
    /// before (and remembered there when not), and the whole document when exactly this text
    /// was parsed for this DID before: the same document, without decoding the point (or the
    /// JSON) again for every proof of one signer.
    pub fn parse_with_keys(bytes: &[u8], expected_did: &str, limits: &Limits, keys: &ParsedKeys) -> Result<DidDocument, DidDocError> {
        DidDocument::parse_document(bytes, expected_did, limits, Some(keys))
    }

    fn parse_document(bytes: &[u8], expected_did: &str, limits: &Limits, keys: Option<&ParsedKeys>) -> Result<DidDocument, DidDocError> {
        did_method(expected_did)?;
        if bytes.len() > limits.max_json_bytes {
            return Err(DidDocError::TooLarge(bytes.len()));
        }
        if let Some(document) = keys.and_then(|keys| keys.document(expected_did, bytes)) {
            return Ok(document);
        }
        let parsed = DidDocument::parse_text(bytes, expected_did, keys);
        if let (Some(keys), Ok(document)) = (keys, &parsed) {
            keys.remember_document(expected_did, bytes, document);
        }
        parsed
    }

    fn parse_text(bytes: &[u8], expected_did: &str, keys: Option<&ParsedKeys>) -> Result<DidDocument, DidDocError> {
        if let Ok(fields) = serde_json::from_slice::<Fields<'_>>(bytes) {
            return fields.document(expected_did, keys);
        }
        // serde_json bounds recursion at 128 levels, so deep nesting is an error, not a crash.
        let json: Json = serde_json::from_slice(bytes).map_err(|e| DidDocError::Json(e.to_string()))?;
        Fields::of_json(&json)?.document(expected_did, keys)
    }

    /// Reads an already parsed JSON document.
    pub fn from_json(json: &Json, expected_did: &str) -> Result<DidDocument, DidDocError> {
        Fields::of_json(json)?.document(expected_did, None)
    }
}

/// Renders a DID document in the Multikey form (as plc.directory does).
pub fn render_multikey_document(did: &str, key: &PublicKey, handle: Option<&str>, pds: Option<&str>) -> Json {
    serde_json::json!({
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1", "https://w3id.org/security/suites/secp256k1-2019/v1"],
        "id": did,
        "alsoKnownAs": handle.map(|h| vec![format!("at://{h}")]).unwrap_or_default(),
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": key.to_multikey(),
        }],
        "service": pds.map(|p| vec![serde_json::json!({"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": p})]).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_methods() {
        assert_eq!(did_method("did:plc:ewvi7nxzyoun6zhxrhs64oiz"), Ok(DidMethod::Plc));
        assert_eq!(did_method("did:web:example.com"), Ok(DidMethod::Web));
        assert_eq!(did_method("did:web:localhost%3A1234"), Ok(DidMethod::Web));
        assert!(matches!(did_method("did:web:example.com:path"), Err(DidDocError::InvalidDid(_))));
        assert!(matches!(did_method("did:web:evil.com%3A1234"), Err(DidDocError::InvalidDid(_))));
        assert!(matches!(did_method("did:plc:short"), Err(DidDocError::InvalidDid(_))));
        assert!(matches!(did_method("did:key:zQ3sh"), Err(DidDocError::UnsupportedMethod(_))));
    }

    #[test]
    fn endpoint_normalization() {
        assert_eq!(normalize_endpoint("https://pds.example.com/").as_deref(), Some("https://pds.example.com"));
        assert_eq!(normalize_endpoint("http://127.0.0.1:2583").as_deref(), Some("http://127.0.0.1:2583"));
        assert_eq!(normalize_endpoint("https://user@pds.example.com"), None);
        assert_eq!(normalize_endpoint("https://pds.example.com/path"), None);
        assert_eq!(normalize_endpoint("ftp://pds.example.com"), None);
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;
    use crate::crypto::{Curve, PrivateKey};

    /// The borrowed route reads the usual document; every odd shape (fields of other types,
    /// duplicates, escapes, nulls) gives what the `serde_json::Value` route gives.
    #[test]
    fn both_routes_and_the_key_memo_give_the_same_document() {
        let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
        let key = PrivateKey::from_seed(Curve::K256, "routes").public_key().to_multikey();
        let usual = render_multikey_document(did, &PublicKey::from_multikey(&key).unwrap(), Some("Alice.Test"), Some("https://pds.test")).to_string();
        assert!(serde_json::from_str::<Fields<'_>>(&usual).is_ok(), "the usual document takes the fast route");
        let method = |extra: &str| {
            format!(
                r#"{{"id":"{did}","verificationMethod":[{{"id":"\u0023atproto","type":"Multikey","controller":"{did}","publicKeyMultibase":"{key}"{extra}}}]}}"#
            )
        };
        let documents = [
            usual.clone(),
            method(""),
            method(r#","controller":"did:plc:other""#),
            method(r#","extra":{"deep":[1,2,{"x":null}]}"#),
            format!(r#"{{"id":"{did}","alsoKnownAs":[1,"at://bob.test"],"service":null}}"#),
            format!(r#"{{"id":"{did}","alsoKnownAs":"at://bob.test","verificationMethod":[{{"id":5}}]}}"#),
            format!(
                r##"{{"id":"{did}","id":"{did}","service":[{{"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":{{"uri":"x"}}}}]}}"##
            ),
            format!(r#"{{"id":7,"id":"{did}"}}"#),
            r#"{"verificationMethod":[]}"#.to_owned(),
            "[]".to_owned(),
        ];
        let keys = ParsedKeys::new(8);
        for document in &documents {
            let parsed = DidDocument::parse(document.as_bytes(), did, &Limits::default());
            let json: Json = serde_json::from_str(document).unwrap();
            assert_eq!(parsed, DidDocument::from_json(&json, did), "{document}");
            assert_eq!(DidDocument::parse_with_keys(document.as_bytes(), did, &Limits::default(), &keys), parsed, "{document}");
        }
        let parsed = DidDocument::parse(usual.as_bytes(), did, &Limits::default()).unwrap();
        assert_eq!((parsed.handle.as_deref(), parsed.pds.as_deref()), (Some("alice.test"), Some("https://pds.test")));
        assert_eq!(parsed.signing_key.unwrap().to_multikey(), key);
        assert_eq!(keys.len(), 1, "one signer, one remembered key");
    }
}
