//! Kubernetes admission (`admission.k8s.io/v1` `AdmissionReview`): the images a request asks
//! for (Pods and their ephemeral containers, and the pod templates of the workload kinds), and
//! the answer: denied with the container, image, reason and what to do; admitted with warnings
//! for audit-only rules; for the mutating path, a JSONPatch pinning each admitted tag to the
//! digest verified.
//!
//! Only the fields read here are typed; the object stays JSON (a Pod is large and its schema
//! is the API server's business, not ours). What the API server sends is trusted no more than
//! any other input: sizes are capped before parsing, every field is checked for its type.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::decisions::Decided;
use crate::engine::Class;
use atproto_sig_core::policy::Outcome;

/// Most images one admission request may name (a Pod's containers of every kind): more is an
/// unusable request, not a decision.
pub const MAX_IMAGES: usize = 256;

/// The parts of a request this server reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(default)]
    pub object: Option<Json>,
}

#[derive(Debug, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    api_version: String,
    kind: String,
    request: Option<AdmissionRequest>,
}

/// A request that cannot be reviewed (answered with HTTP 400: the API server then applies
/// the webhook's failure policy).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("not an AdmissionReview: {0}")]
    NotJson(String),
    #[error("expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {api_version} {kind}")]
    WrongKind { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Parses an `AdmissionReview` body.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let review: AdmissionReview = serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(ReviewError::WrongKind { api_version: review.api_version, kind: review.kind });
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// One container's image in the object, with the JSON pointer of its `image` field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    /// `containers`, `initContainers` or `ephemeralContainers`.
    pub list: &'static str,
    pub container: String,
    pub image: String,
    /// JSON pointer of the `image` field (for the pinning patch).
    pub pointer: String,
}

/// Where the pod spec sits in an object of `kind` (`None`: a kind this server does not review).
fn pod_spec_pointer(kind: &GroupVersionKind) -> Option<&'static str> {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") => Some("/spec"),
        ("", "ReplicationController" | "PodTemplate") => Some(if kind.kind == "PodTemplate" { "/template/spec" } else { "/spec/template/spec" }),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => Some("/spec/template/spec"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

/// The images `request` asks for; empty for operations and kinds that start no container
/// (DELETE, CONNECT, other kinds, other subresources than `ephemeralcontainers`).
pub fn requested_images(request: &AdmissionRequest) -> Result<Vec<ContainerImage>, String> {
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Ok(Vec::new());
    }
    let Some(spec_at) = pod_spec_pointer(&request.kind) else { return Ok(Vec::new()) };
    let lists: &[&'static str] = match request.sub_resource.as_deref() {
        None | Some("") => &["initContainers", "containers", "ephemeralContainers"],
        Some("ephemeralcontainers") => &["ephemeralContainers"],
        Some(_) => return Ok(Vec::new()),
    };
    let Some(object) = &request.object else { return Err("the request carries no object".into()) };
    let Some(spec) = object.pointer(spec_at) else { return Err(format!("the {} has no pod spec at {spec_at}", request.kind.kind)) };
    let mut images = Vec::new();
    for list in lists {
        let containers = match spec.get(*list) {
            None | Some(Json::Null) => continue,
            Some(Json::Array(containers)) => containers,
            Some(_) => return Err(format!("{spec_at}/{list} is not a list")),
        };
        for (i, container) in containers.iter().enumerate() {
            let name = container.get("name").and_then(Json::as_str).unwrap_or("").to_owned();
            let Some(image) = container.get("image").and_then(Json::as_str) else {
                return Err(format!("container {name:?} in {list} has no image"));
            };
            if images.len() == MAX_IMAGES {
                return Err(format!("more than {MAX_IMAGES} containers"));
            }
            images.push(ContainerImage { list, container: name, image: image.to_owned(), pointer: format!("{spec_at}/{list}/{i}/image") });
        }
    }
    Ok(images)
}

/// The sentence that names what to do about a decision that did not admit.
fn what_to_do(decided: &Decided) -> String {
    if !decided.hint.is_empty() {
        return decided.hint.clone();
    }
    match decided.class {
        Class::Undecided => "retry; if it persists, check the verifier's log and `atproto-verifier doctor`".into(),
        _ => "push a signed image, or check the trust policy with `atproto-verifier policy explain IMAGE`".into(),
    }
}

/// One container's line in a denial or a warning.
fn describe(image: &ContainerImage, decided: &Decided) -> String {
    format!("{} {:?} image {:?}: {} ({})", singular(image.list), image.container, image.image, decided.message, decided.reason.code())
}

fn singular(list: &str) -> &'static str {
    match list {
        "initContainers" => "init container",
        "ephemeralContainers" => "ephemeral container",
        _ => "container",
    }
}

/// The `response` of a validating review: denied if any image is rejected or undecided.
pub fn validating_response(uid: &str, decided: &[(ContainerImage, std::sync::Arc<Decided>)]) -> Json {
    let denied: Vec<String> =
        decided.iter().filter(|(_, d)| d.class != Class::Admitted).map(|(image, d)| format!("{}; {}", describe(image, d), what_to_do(d))).collect();
    let warnings: Vec<String> = decided
        .iter()
        .filter(|(_, d)| d.outcome == Outcome::AuditAdmit)
        .map(|(image, d)| format!("atproto-verifier (audit only, admitted): {}", describe(image, d)))
        .collect();
    let mut response = serde_json::Map::new();
    response.insert("uid".into(), json!(uid));
    response.insert("allowed".into(), json!(denied.is_empty()));
    if !denied.is_empty() {
        let code = if decided.iter().any(|(_, d)| d.class == Class::Undecided) { 500 } else { 403 };
        let first = decided.iter().find(|(_, d)| d.class != Class::Admitted).map(|(_, d)| d.reason.code()).unwrap_or("");
        response.insert(
            "status".into(),
            json!({
                "code": code,
                "reason": if code == 403 { "Forbidden" } else { "InternalError" },
                "message": format!("atproto-verifier: {}", denied.join(" | ")),
                "details": {"causes": [{"reason": first, "field": ""}]},
            }),
        );
    }
    if !warnings.is_empty() {
        response.insert("warnings".into(), json!(warnings));
    }
    Json::Object(response)
}

/// The `response` of a mutating review: allowed, with a patch pinning every admitted tag
/// whose rule allows it to the digest verified. Nothing is denied here (the validating
/// webhook does that): an image not admitted is left as written.
pub fn mutating_response(uid: &str, decided: &[(ContainerImage, std::sync::Arc<Decided>)]) -> Json {
    let patch: Vec<Json> = decided
        .iter()
        .filter_map(|(image, d)| {
            let pinned = pinned_reference(&image.image, d)?;
            Some(json!({"op": "replace", "path": image.pointer, "value": pinned}))
        })
        .collect();
    let mut response = serde_json::Map::new();
    response.insert("uid".into(), json!(uid));
    response.insert("allowed".into(), json!(true));
    if !patch.is_empty() {
        let bytes = serde_json::to_vec(&patch).unwrap_or_default();
        response.insert("patchType".into(), json!("JSONPatch"));
        response.insert("patch".into(), json!(base64::engine::general_purpose::STANDARD.encode(bytes)));
    }
    Json::Object(response)
}

/// `written` pinned to the digest decided (`name:tag` → `name:tag@sha256:…`), if it was
/// admitted, its rule allows pinning, and it names no digest yet.
pub fn pinned_reference(written: &str, decided: &Decided) -> Option<String> {
    if decided.class != Class::Admitted || !decided.pin_digest || written.contains('@') {
        return None;
    }
    let digest = decided.digest.as_deref()?;
    Some(format!("{written}@{digest}"))
}

/// The whole answer: an `AdmissionReview` wrapping `response`.
pub fn review(response: Json) -> Json {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

#[cfg(test)]
mod tests {
    use super::*;
    use atproto_sig_core::Reason;
    use atproto_sig_core::policy::Decision;
    use std::sync::Arc;

    fn review_of(kind: (&str, &str), sub: Option<&str>, object: Json) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
                        "resource": {"group": kind.0, "version": "v1", "resource": "x"},
                        "subResource": sub, "namespace": "ns", "operation": "CREATE", "object": object}
        }))
        .unwrap()
    }

    fn pod_spec() -> Json {
        json!({"initContainers": [{"name": "init", "image": "atcr.io/a/init:1"}],
               "containers": [{"name": "app", "image": "atcr.io/a/app:1"}, {"name": "side", "image": "atcr.io/a/side@sha256:aa"}]})
    }

    #[test]
    fn images_of_every_workload_kind_with_pointers() {
        let pod = parse_review(&review_of(("", "Pod"), None, json!({"spec": pod_spec()}))).unwrap();
        let images = requested_images(&pod).unwrap();
        let found: Vec<(&str, &str)> = images.iter().map(|i| (i.image.as_str(), i.pointer.as_str())).collect();
        assert_eq!(
            found,
            [
                ("atcr.io/a/init:1", "/spec/initContainers/0/image"),
                ("atcr.io/a/app:1", "/spec/containers/0/image"),
                ("atcr.io/a/side@sha256:aa", "/spec/containers/1/image")
            ]
        );
        for kind in [("apps", "Deployment"), ("apps", "ReplicaSet"), ("apps", "StatefulSet"), ("apps", "DaemonSet"), ("batch", "Job")] {
            let r = parse_review(&review_of(kind, None, json!({"spec": {"template": {"spec": pod_spec()}}}))).unwrap();
            assert_eq!(requested_images(&r).unwrap()[1].pointer, "/spec/template/spec/containers/0/image", "{kind:?}");
        }
        let cron =
            parse_review(&review_of(("batch", "CronJob"), None, json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": pod_spec()}}}}}))).unwrap();
        assert_eq!(requested_images(&cron).unwrap().len(), 3);
        // The ephemeral containers subresource: only those.
        let eph = parse_review(&review_of(
            ("", "Pod"),
            Some("ephemeralcontainers"),
            json!({"spec": {"containers": [{"name": "app", "image": "a:1"}],
            "ephemeralContainers": [{"name": "debug", "image": "atcr.io/a/debug:1"}]}}),
        ))
        .unwrap();
        let images = requested_images(&eph).unwrap();
        assert_eq!((images.len(), images[0].list, images[0].pointer.as_str()), (1, "ephemeralContainers", "/spec/ephemeralContainers/0/image"));
        // Other kinds and subresources start no container.
        assert!(requested_images(&parse_review(&review_of(("", "ConfigMap"), None, json!({}))).unwrap()).unwrap().is_empty());
        assert!(requested_images(&parse_review(&review_of(("", "Pod"), Some("status"), json!({}))).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn hostile_reviews_are_refused_not_guessed() {
        assert!(matches!(parse_review(b"{"), Err(ReviewError::NotJson(_))));
        let wrong = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": null})).unwrap();
        assert!(matches!(parse_review(&wrong), Err(ReviewError::WrongKind { .. })));
        let no_image = parse_review(&review_of(("", "Pod"), None, json!({"spec": {"containers": [{"name": "x"}]}}))).unwrap();
        assert!(requested_images(&no_image).unwrap_err().contains("no image"));
        let not_list = parse_review(&review_of(("", "Pod"), None, json!({"spec": {"containers": {"name": "x"}}}))).unwrap();
        assert!(requested_images(&not_list).is_err());
        let many: Vec<Json> = (0..=MAX_IMAGES).map(|i| json!({"name": format!("c{i}"), "image": "a:1"})).collect();
        let big = parse_review(&review_of(("", "Pod"), None, json!({"spec": {"containers": many}}))).unwrap();
        assert!(requested_images(&big).unwrap_err().contains("more than"));
    }

    fn decided(outcome: Outcome, reason: Reason, pin: bool) -> Arc<Decided> {
        let decision = Decision { outcome, reason, message: format!("m-{}", reason.code()), rule: Some("r".into()), signers: vec![] };
        Arc::new(Decided::of(&decision, Some("atcr.io/a/app@sha256:bb".into()), Some("sha256:bb".into()), "", pin))
    }

    fn container(name: &str, image: &str, i: usize) -> ContainerImage {
        ContainerImage { list: "containers", container: name.into(), image: image.into(), pointer: format!("/spec/containers/{i}/image") }
    }

    #[test]
    fn denial_names_container_image_reason_and_what_to_do_and_audit_warns() {
        let answers = vec![
            (container("app", "atcr.io/a/app:1", 0), decided(Outcome::Admit, Reason::Verified, true)),
            (container("bad", "atcr.io/e/x:2", 1), decided(Outcome::Reject, Reason::RecordNotFound, true)),
        ];
        let response = validating_response("u-1", &answers);
        assert_eq!(response["allowed"], json!(false));
        assert_eq!(response["uid"], json!("u-1"));
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("container \"bad\" image \"atcr.io/e/x:2\"") && message.contains("(record-not-found)") && message.contains("policy explain"),
            "{message}"
        );
        assert_eq!(response["status"]["code"], json!(403));
        let audit = vec![(container("app", "atcr.io/a/app:1", 0), decided(Outcome::AuditAdmit, Reason::RecordNotFound, true))];
        let response = validating_response("u-2", &audit);
        assert_eq!(response["allowed"], json!(true));
        assert!(response["warnings"][0].as_str().unwrap().contains("audit only"));
    }

    #[test]
    fn mutation_pins_admitted_tags_only_where_the_rule_allows() {
        let answers = vec![
            (container("app", "atcr.io/a/app:1", 0), decided(Outcome::Admit, Reason::Verified, true)),
            (container("gitops", "atcr.io/a/ops:1", 1), decided(Outcome::Admit, Reason::Verified, false)),
            (container("pinned", "atcr.io/a/p@sha256:bb", 2), decided(Outcome::Admit, Reason::Verified, true)),
            (container("bad", "atcr.io/e/x:2", 3), decided(Outcome::Reject, Reason::RecordNotFound, true)),
        ];
        let response = mutating_response("u-1", &answers);
        assert_eq!(response["patchType"], json!("JSONPatch"));
        let patch: Json = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(patch, json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "atcr.io/a/app:1@sha256:bb"}]));
    }
}
