//! Network lookups, each returning bytes or a typed failure; nothing here decides trust.
//! did:plc from the configured directory, did:web from `/.well-known/did.json` (no redirects),
//! handles through a resolver service, DNS TXT `_atproto.<handle>` or HTTPS
//! `/.well-known/atproto-did`, records located by a bounded listRecords scan, proofs from
//! `com.atproto.sync.getRecord`.

use atproto_sig_core::did::{DidMethod, did_method};
use atproto_sig_core::syntax::{AtUri, is_disallowed_handle_tld, is_valid_did, is_valid_handle, is_valid_record_key};
use serde_json::Value as Json;

use crate::limits::{NodeLimits, short};
use crate::remote::{DnsError, Resolve};
use crate::remote::{Http, NetError, is_loopback_url};

/// The caps every answer here is read under.
const LIMITS: NodeLimits = NodeLimits::DEFAULT;

/// Why a lookup failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The network failed: never evidence about signatures.
    #[error("{0}")]
    Network(#[from] NetError),
    /// The server answered, and the thing does not exist (404, RecordNotFound, …).
    #[error("{0}")]
    NotFound(String),
    /// The server answered something unusable.
    #[error("{0}")]
    Invalid(String),
}

/// What stays as is in a query value: RFC 3986's unreserved characters, and `:` (DIDs and
/// registry scopes read better, and servers accept it).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b':');

/// A query or form value, percent-encoded.
pub fn percent_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// `k=v&…` with percent-encoded values (query strings and form bodies).
pub fn query(params: &[(&str, &str)]) -> String {
    params.iter().map(|(k, v)| format!("{k}={}", percent_encode(v))).collect::<Vec<_>>().join("&")
}

/// The did:web document URL: https, or http for localhost (dev/test only, as in the TS reference).
pub fn did_web_url(did: &str) -> Option<String> {
    let host = did.strip_prefix("did:web:")?;
    match host.split_once("%3A") {
        Some(("localhost", port)) => Some(format!("http://localhost:{port}/.well-known/did.json")),
        Some(_) => None,
        None => Some(format!("https://{host}/.well-known/did.json")),
    }
}

/// An answer over its size cap is the answering server's fault (its document is unusable), not
/// a network failure: every other network error stays one.
fn too_large_is_invalid(url: &str) -> impl Fn(NetError) -> LookupError + '_ {
    move |e| match e {
        NetError::TooLarge(limit) => LookupError::Invalid(format!("{} answered more than the {limit}-byte limit", short(url, 200))),
        other => LookupError::Network(other),
    }
}

/// Fetches a DID document; returns the bytes and the URL it came from.
pub fn fetch_did_document(http: &Http, plc_directory: &str, did: &str) -> Result<(Vec<u8>, String), LookupError> {
    let url = match did_method(did).map_err(|e| LookupError::Invalid(e.to_string()))? {
        DidMethod::Plc => format!("{}/{did}", plc_directory.trim_end_matches('/')),
        DidMethod::Web => did_web_url(did).ok_or_else(|| LookupError::Invalid(format!("{did} cannot be resolved")))?,
    };
    let response =
        http.get(&url, &[("accept", "application/did+ld+json, application/json".into())], LIMITS.did_document).map_err(too_large_is_invalid(&url))?;
    match response.status {
        200 => Ok((response.body, url)),
        // No redirects for did:web: a document must be served by its own host.
        301 | 302 | 303 | 307 | 308 => Err(LookupError::Invalid(format!("{url} redirects; DID documents are not followed across redirects"))),
        404 | 410 => Err(LookupError::NotFound(format!("{did} is not known to {url} (unknown or deactivated)"))),
        status => Err(LookupError::Network(NetError::Io(format!("{url} answered HTTP {status}")))),
    }
}

/// Fetches a did:plc audit log.
pub fn fetch_audit_log(http: &Http, plc_directory: &str, did: &str) -> Result<Vec<u8>, LookupError> {
    let url = format!("{}/{did}/log/audit", plc_directory.trim_end_matches('/'));
    let response = http.get(&url, &[], LIMITS.audit_log).map_err(too_large_is_invalid(&url))?;
    match response.status {
        200 => Ok(response.body),
        404 => Err(LookupError::NotFound(format!("{did} has no audit log at {url}"))),
        status => Err(LookupError::Network(NetError::Io(format!("{url} answered HTTP {status}")))),
    }
}

/// Resolves a handle to a DID (not yet checked against the DID document: the caller does that).
pub fn resolve_handle(http: &Http, resolver: Option<&str>, dns: &dyn Resolve, handle: &str) -> Result<String, LookupError> {
    let handle = handle.to_ascii_lowercase();
    if !is_valid_handle(&handle) || is_disallowed_handle_tld(&handle) {
        return Err(LookupError::Invalid(format!("{handle:?} is not a resolvable handle")));
    }
    if let Some(resolver) = resolver {
        let url = format!("{}/xrpc/com.atproto.identity.resolveHandle?{}", resolver.trim_end_matches('/'), query(&[("handle", &handle)]));
        let response = http.get(&url, &[], LIMITS.handle_answer)?;
        return match response.status {
            200 => {
                let json: Json = serde_json::from_slice(&response.body).map_err(|e| LookupError::Invalid(format!("resolveHandle: {e}")))?;
                match json.get("did").and_then(Json::as_str) {
                    Some(did) if is_valid_did(did) => Ok(did.to_owned()),
                    _ => Err(LookupError::Invalid("resolveHandle answered without a valid did".into())),
                }
            }
            400 | 404 => Err(LookupError::NotFound(format!("{handle} does not resolve (resolver {resolver})"))),
            status => Err(LookupError::Network(NetError::Io(format!("handle resolver answered HTTP {status}")))),
        };
    }
    // DNS TXT first (the spec prefers it), HTTPS well-known second; if both answer, they must agree.
    // A DNS failure (not "no such record") may hide the answer: it is a network failure.
    let mut dns_failure: Option<DnsError> = None;
    // What is left of the budget; the resolver adds its own cap (`connect_timeout`).
    let timeout = http.deadline().remaining();
    let from_dns = match dns.txt(&format!("_atproto.{handle}"), timeout) {
        Ok(records) => {
            let dids: Vec<&str> = records.iter().filter_map(|r| r.strip_prefix("did=")).collect();
            match dids.as_slice() {
                [] => None,
                [did] if is_valid_did(did) => Some(Ok((*did).to_owned())),
                [_] => Some(Err(LookupError::Invalid(format!("_atproto.{handle} holds an invalid DID")))),
                _ => Some(Err(LookupError::Invalid(format!("_atproto.{handle} has several did= records")))),
            }
        }
        Err(e) => {
            dns_failure = Some(e);
            None
        }
    };
    let url = format!("https://{handle}/.well-known/atproto-did");
    let from_https = match http.get(&url, &[], LIMITS.well_known_did) {
        Ok(r) if r.status == 200 => {
            let text = String::from_utf8_lossy(&r.body);
            let did = text.lines().next().unwrap_or_default().trim().to_owned();
            if is_valid_did(&did) { Some(Ok(did)) } else { Some(Err(LookupError::Invalid(format!("{url} does not hold a DID")))) }
        }
        Ok(_) => None,
        Err(e) if from_dns.is_none() => Some(Err(LookupError::Network(e))),
        Err(_) => None,
    };
    match (from_dns, from_https) {
        (Some(Ok(a)), Some(Ok(b))) if a != b => Err(LookupError::Invalid(format!("{handle}: DNS says {a}, HTTPS says {b}"))),
        (Some(Ok(did)), _) | (_, Some(Ok(did))) => Ok(did),
        (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e),
        (None, None) => match dns_failure {
            Some(e) => Err(LookupError::Network(NetError::Io(format!("the DNS lookup of _atproto.{handle} failed ({e}) and {url} holds no DID")))),
            None => Err(LookupError::NotFound(format!("{handle} has neither a _atproto TXT record nor {url}"))),
        },
    }
}

/// Checks a PDS endpoint before requesting it: https, or http on loopback.
fn check_pds(pds: &str) -> Result<(), LookupError> {
    if is_usable_pds(pds) { Ok(()) } else { Err(LookupError::Invalid(format!("PDS endpoint {pds} is not https"))) }
}

/// True for a PDS endpoint this node will ask: https, or plain http on loopback only.
pub fn is_usable_pds(pds: &str) -> bool {
    pds.starts_with("https://") || is_loopback_url(pds)
}

/// Visits the `collection` records of `did` page by page (`com.atproto.repo.listRecords`),
/// at most `NodeLimits::list_pages` pages, until `visit` returns true. Each record is passed as
/// (rkey, value); records without a valid rkey are skipped.
fn scan_records(http: &Http, pds: &str, did: &str, collection: &str, mut visit: impl FnMut(String, &Json) -> bool) -> Result<(), LookupError> {
    check_pds(pds)?;
    let mut cursor: Option<String> = None;
    for _ in 0..LIMITS.list_pages {
        let mut params = vec![("repo", did), ("collection", collection), ("limit", "100")];
        if let Some(c) = &cursor {
            params.push(("cursor", c));
        }
        let url = format!("{pds}/xrpc/com.atproto.repo.listRecords?{}", query(&params));
        let response = http.get(&url, &[], LIMITS.list_page)?;
        match response.status {
            200 => {}
            400 | 404 => return Err(LookupError::NotFound(format!("{pds} has no repository for {did}"))),
            status => return Err(LookupError::Network(NetError::Io(format!("listRecords answered HTTP {status}")))),
        }
        let json: Json = serde_json::from_slice(&response.body).map_err(|e| LookupError::Invalid(format!("listRecords: {e}")))?;
        let records = json.get("records").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default();
        for record in records {
            let rkey = record.get("uri").and_then(Json::as_str).and_then(AtUri::parse).and_then(|u| u.rkey).filter(|r| is_valid_record_key(r));
            if let (Some(rkey), Some(value)) = (rkey, record.get("value"))
                && visit(rkey, value)
            {
                return Ok(());
            }
        }
        cursor = json.get("cursor").and_then(Json::as_str).map(str::to_owned);
        if records.is_empty() || cursor.is_none() {
            break;
        }
    }
    Ok(())
}

/// Finds the rkey of the `collection` record whose `digest` (and `repository`, if given) match,
/// by a bounded listRecords scan. Only a locator: the proof decides.
pub fn find_record(http: &Http, pds: &str, did: &str, collection: &str, digest: &str, repository: Option<&str>) -> Result<Option<String>, LookupError> {
    let mut exact = None;
    let mut fallback = None;
    scan_records(http, pds, did, collection, |rkey, value| {
        if value.get("digest").and_then(Json::as_str) != Some(digest) {
            return false;
        }
        if repository.is_none_or(|r| value.get("repository").and_then(Json::as_str) == Some(r)) {
            exact = Some(rkey);
            return true;
        }
        // Keep the first digest match: its proof will say repository-mismatch.
        fallback.get_or_insert(rkey);
        false
    })?;
    Ok(exact.or(fallback))
}

/// A getRecord answer.
pub enum ProofAnswer {
    /// The CAR (inclusion or absence proof).
    Car(Vec<u8>),
    /// The PDS said RecordNotFound without a proof.
    NotFound,
}

/// Fetches `com.atproto.sync.getRecord`.
pub fn fetch_proof(http: &Http, pds: &str, did: &str, collection: &str, rkey: &str) -> Result<ProofAnswer, LookupError> {
    check_pds(pds)?;
    let url = format!("{pds}/xrpc/com.atproto.sync.getRecord?{}", query(&[("did", did), ("collection", collection), ("rkey", rkey)]));
    let response = http.get(&url, &[("accept", "application/vnd.ipld.car".into())], LIMITS.proof)?;
    match response.status {
        200 => Ok(ProofAnswer::Car(response.body)),
        400 | 404 => {
            let error = serde_json::from_slice::<Json>(&response.body)
                .ok()
                // Named in messages: a server's word, so kept short.
                .and_then(|j| j.get("error").and_then(Json::as_str).map(|e| short(e, 100)))
                .unwrap_or_else(|| format!("HTTP {}", response.status));
            if error == "RecordNotFound" {
                Ok(ProofAnswer::NotFound)
            } else {
                Err(LookupError::NotFound(format!("{pds} cannot serve the repository of {did}: {error}")))
            }
        }
        status => Err(LookupError::Network(NetError::Io(format!("getRecord answered HTTP {status}")))),
    }
}

/// The whole repository of `did` at its latest commit (`com.atproto.sync.getRepo`), as a CAR.
pub fn fetch_repo(http: &Http, pds: &str, did: &str) -> Result<Vec<u8>, LookupError> {
    check_pds(pds)?;
    let url = format!("{pds}/xrpc/com.atproto.sync.getRepo?{}", query(&[("did", did)]));
    let response = http.get(&url, &[("accept", "application/vnd.ipld.car".into())], LIMITS.repository)?;
    match response.status {
        200 => Ok(response.body),
        400 | 404 => Err(LookupError::NotFound(format!("{pds} cannot serve the repository of {did}: HTTP {}", response.status))),
        status => Err(LookupError::Network(NetError::Io(format!("getRepo answered HTTP {status}")))),
    }
}

/// The rev of `did`'s latest commit (`com.atproto.sync.getLatestCommit`): unsigned, so only a
/// hint that the signed state should be fetched again (what `watch` polls).
pub fn fetch_latest_rev(http: &Http, pds: &str, did: &str) -> Result<String, LookupError> {
    check_pds(pds)?;
    let url = format!("{pds}/xrpc/com.atproto.sync.getLatestCommit?{}", query(&[("did", did)]));
    let response = http.get(&url, &[("accept", "application/json".into())], LIMITS.registry_small)?;
    match response.status {
        200 => serde_json::from_slice::<Json>(&response.body)
            .ok()
            .and_then(|j| j.get("rev").and_then(Json::as_str).filter(|r| atproto_sig_core::syntax::is_valid_tid(r)).map(str::to_owned))
            .ok_or_else(|| LookupError::Network(NetError::Io(format!("getLatestCommit of {did} answered without a valid rev")))),
        400 | 404 => Err(LookupError::NotFound(format!("{pds} cannot serve the repository of {did}: HTTP {}", response.status))),
        status => Err(LookupError::Network(NetError::Io(format!("getLatestCommit answered HTTP {status}")))),
    }
}

/// Every `collection` record of `did` naming an image: (rkey, repository, digest), bounded by
/// the listRecords page limits. Unsigned words: each is decided by its proof afterwards.
pub fn list_manifest_images(http: &Http, pds: &str, did: &str, collection: &str) -> Result<Vec<(String, String, String)>, LookupError> {
    let mut out = Vec::new();
    scan_records(http, pds, did, collection, |rkey, value| {
        let field = |name: &str| value.get(name).and_then(Json::as_str).map(str::to_owned);
        if let (Some(repository), Some(digest)) = (field("repository"), field("digest")) {
            out.push((rkey, repository, digest));
        }
        false
    })?;
    Ok(out)
}
