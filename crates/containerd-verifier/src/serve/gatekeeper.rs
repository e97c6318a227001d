//! Gatekeeper's external data provider protocol (`externaldata.gatekeeper.sh/v1beta1`, as
//! open-policy-agent/frameworks `constraint/pkg/externaldata` defines it): a
//! `ProviderRequest` names image references in `request.keys`; the `ProviderResponse` has one
//! item per decided key, `value` for an admitted image and `error` for a rejected one (Rego
//! sees those in `errors`), and `idempotent: true`.
//!
//! An undecided key (a peer down, a deadline passed) gets no item: Gatekeeper caches every
//! item it receives, `error` items too, for its `--external-data-provider-response-cache-ttl`
//! whatever `idempotent` says (frameworks' `externalDataBuiltin` upserts each item of a parsed
//! response), so an undecided `error` item would keep a signed image denied after the peer
//! recovers. The undecided keys are named in `systemError` instead, which Gatekeeper does not
//! cache and the ConstraintTemplate denies on; the next review asks again.

use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::decisions::Decided;
use atproto_sig_core::policy::Outcome;

/// Most keys one request may carry (Gatekeeper sends the images of one object at a time).
pub const MAX_KEYS: usize = 256;

/// The API version answered (Gatekeeper does not check it; this is the one it sends).
pub const API_VERSION: &str = "externaldata.gatekeeper.sh/v1beta1";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderRequest {
    api_version: String,
    kind: String,
    request: Option<Keys>,
}

#[derive(Debug, Deserialize)]
struct Keys {
    #[serde(default)]
    keys: Vec<String>,
}

/// The keys of a `ProviderRequest`, or why it is unusable (answered as `systemError`).
pub fn parse_request(body: &[u8]) -> Result<Vec<String>, String> {
    let request: ProviderRequest = serde_json::from_slice(body).map_err(|e| format!("not a ProviderRequest: {e}"))?;
    if request.kind != "ProviderRequest" || !request.api_version.starts_with("externaldata.gatekeeper.sh/") {
        return Err(format!("expected kind ProviderRequest of externaldata.gatekeeper.sh, got {} {}", request.api_version, request.kind));
    }
    let keys = request.request.map(|r| r.keys).unwrap_or_default();
    if keys.len() > MAX_KEYS {
        return Err(format!("{} keys in one request, more than {MAX_KEYS}", keys.len()));
    }
    Ok(keys)
}

/// One key's item.
pub fn item(key: &str, decided: &Decided) -> Json {
    let admitted = decided.outcome != Outcome::Reject;
    if !admitted {
        let hint = if decided.hint.is_empty() { String::new() } else { format!(" — {}", decided.hint) };
        return json!({"key": key, "error": format!("{}: {}{hint}", decided.reason.code(), decided.message)});
    }
    let mut value = json!({
        "outcome": if decided.outcome == Outcome::AuditAdmit { "audit-admitted" } else { "admitted" },
        "reason": decided.reason.code(),
        "message": decided.message,
        "image": decided.image,
        "digest": decided.digest,
        "signers": decided.signers,
        "signer": decided.signers.first(),
        "rule": decided.rule,
    });
    if decided.outcome == Outcome::AuditAdmit
        && let Some(map) = value.as_object_mut()
    {
        map.insert("warning".into(), json!(format!("audit only: would be rejected ({}): {}", decided.reason.code(), decided.message)));
    }
    json!({"key": key, "value": value})
}

/// A `ProviderResponse` with `items`.
pub fn response(items: Vec<Json>) -> Json {
    json!({"apiVersion": API_VERSION, "kind": "ProviderResponse", "response": {"idempotent": true, "items": items}})
}

/// The answer to `keys`: an item per decided key; the undecided ones named in `systemError`
/// (never cached by Gatekeeper: asked again at the next review).
pub fn answer(keys: &[String], decided: &[std::sync::Arc<Decided>]) -> Json {
    let mut items = Vec::new();
    let mut undecided = Vec::new();
    for (key, d) in keys.iter().zip(decided) {
        if d.class == crate::engine::Class::Undecided {
            let hint = if d.hint.is_empty() { String::new() } else { format!(" — {}", d.hint) };
            undecided.push(format!("{key}: {}: {}{hint}", d.reason.code(), d.message));
        } else {
            items.push(item(key, d));
        }
    }
    let mut body = json!({"idempotent": true, "items": items});
    if !undecided.is_empty()
        && let Some(body) = body.as_object_mut()
    {
        body.insert("systemError".into(), json!(format!("not decided (asked again at the next review): {}", undecided.join("; "))));
    }
    json!({"apiVersion": API_VERSION, "kind": "ProviderResponse", "response": body})
}

/// A `ProviderResponse` saying the request could not be answered at all.
pub fn system_error(message: &str) -> Json {
    json!({"apiVersion": API_VERSION, "kind": "ProviderResponse", "response": {"idempotent": true, "systemError": message}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use atproto_sig_core::Reason;
    use atproto_sig_core::policy::Decision;

    #[test]
    fn requests_are_checked_and_capped() {
        let body = br#"{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":["a:1","b:2"]}}"#;
        assert_eq!(parse_request(body).unwrap(), ["a:1", "b:2"]);
        assert!(parse_request(br#"{"apiVersion":"v1","kind":"Pod"}"#).unwrap_err().contains("expected kind ProviderRequest"));
        assert!(parse_request(b"[").is_err());
        let keys: Vec<String> = (0..=MAX_KEYS).map(|i| format!("k{i}")).collect();
        let big = serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": "ProviderRequest", "request": {"keys": keys}})).unwrap();
        assert!(parse_request(&big).unwrap_err().contains("more than"));
    }

    #[test]
    fn items_carry_a_value_when_admitted_and_an_error_with_the_reason_otherwise() {
        let decision = |outcome, reason| Decision { outcome, reason, message: "m".into(), rule: Some("r".into()), signers: vec!["did:plc:a".into()] };
        let ok = Decided::of(&decision(Outcome::Admit, Reason::Verified), Some("atcr.io/a/b@sha256:1".into()), Some("sha256:1".into()), "", true);
        let item_ok = item("atcr.io/a/b:1", &ok);
        assert_eq!(item_ok["value"]["signer"], json!("did:plc:a"));
        assert_eq!(item_ok["value"]["digest"], json!("sha256:1"));
        assert!(item_ok.get("error").is_none());
        let bad = Decided::of(&decision(Outcome::Reject, Reason::UntrustedSigner), None, None, "", true);
        assert_eq!(item("k", &bad)["error"], json!("untrusted-signer: m"));
        let audit = Decided::of(&decision(Outcome::AuditAdmit, Reason::RecordNotFound), None, None, "", true);
        assert!(item("k", &audit)["value"]["warning"].as_str().unwrap().contains("record-not-found"));
        assert_eq!(response(vec![])["response"]["idempotent"], json!(true));
    }

    #[test]
    fn undecided_keys_get_no_item_gatekeeper_would_cache_but_a_system_error() {
        use std::sync::Arc;
        let decision = Decision { outcome: Outcome::Admit, reason: Reason::Verified, message: "m".into(), rule: None, signers: vec![] };
        let ok = Arc::new(Decided::of(&decision, None, Some("sha256:1".into()), "", true));
        let down = Arc::new(Decided::undecided(Reason::NetworkError, "the PDS did not answer".into(), "retry"));
        let keys = vec!["a:1".to_owned(), "b:1".to_owned()];
        let answer = answer(&keys, &[ok, down]);
        let items = answer["response"]["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["key"], json!("a:1"));
        let error = answer["response"]["systemError"].as_str().unwrap();
        assert!(error.contains("b:1: network-error: the PDS did not answer"), "{error}");
    }
}
