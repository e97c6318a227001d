//! Kubernetes admission (`admission.k8s.io/v1` `AdmissionReview`): the images a request asks
//! for (every container kind and every image volume, in Pods, their ephemeral containers and
//! the pod templates of the workload kinds), and the answer: denied with the container or
//! volume, image, reason and what to do; admitted with warnings for audit-only rules; for the
//! mutating path, a JSONPatch pinning each admitted tag to the digest verified.
//!
//! An UPDATE is reviewed only for what it introduces: an image (canonical reference) already in
//! `oldObject` is not decided again, so the objects running an image revoked since can still be
//! labelled, finalized, scaled and rolled away from. What they run stays under the node-side
//! verifier and revocation (README, "Kubernetes admission").
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
    /// The object before an UPDATE (what it already runs).
    #[serde(default)]
    pub old_object: Option<Json>,
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

/// One image of the object (a container's or an image volume's), with the JSON pointer of
/// the field that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    /// `containers`, `initContainers`, `ephemeralContainers` or `volumes`.
    pub list: &'static str,
    /// The container's or the volume's name.
    pub name: String,
    pub image: String,
    /// JSON pointer of the field holding the reference (for the pinning patch).
    pub pointer: String,
}

impl ContainerImage {
    /// An image volume rather than a container.
    pub fn is_volume(&self) -> bool {
        self.list == VOLUMES
    }
}

const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];
const VOLUMES: &str = "volumes";

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
/// (DELETE, CONNECT, other kinds, other subresources than `ephemeralcontainers`). For an
/// UPDATE, only the images `oldObject` does not already hold.
pub fn requested_images(request: &AdmissionRequest) -> Result<Vec<ContainerImage>, String> {
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Ok(Vec::new());
    }
    let Some(spec_at) = pod_spec_pointer(&request.kind) else { return Ok(Vec::new()) };
    let (lists, volumes): (&[&'static str], bool) = match request.sub_resource.as_deref() {
        None | Some("") => (&CONTAINER_LISTS, true),
        Some("ephemeralcontainers") => (&["ephemeralContainers"], false),
        Some(_) => return Ok(Vec::new()),
    };
    let Some(object) = &request.object else { return Err("the request carries no object".into()) };
    let Some(spec) = object.pointer(spec_at) else { return Err(format!("the {} has no pod spec at {spec_at}", request.kind.kind)) };
    let mut images = images_in(spec, spec_at, lists, volumes)?;
    if request.operation == "UPDATE"
        && let Some(old_spec) = request.old_object.as_ref().and_then(|old| old.pointer(spec_at))
    {
        // What the object already runs is not decided again. An old spec that cannot be read
        // holds nothing: everything is decided, as for a CREATE.
        let held: std::collections::HashSet<String> =
            images_in(old_spec, spec_at, &CONTAINER_LISTS, true).unwrap_or_default().iter().map(|i| canonical(&i.image)).collect();
        images.retain(|image| !held.contains(&canonical(&image.image)));
    }
    Ok(images)
}

/// One spelling per image (two spellings of one image are one image); a reference that does
/// not parse is its own spelling.
pub fn canonical(reference: &str) -> String {
    atproto_sig_core::reference::ImageRef::parse(reference).map_or_else(|_| reference.to_owned(), |image| image.to_string())
}

/// The images of the containers in `lists` and, with `volumes`, of the image volumes of `spec`.
fn images_in(spec: &Json, spec_at: &str, lists: &[&'static str], volumes: bool) -> Result<Vec<ContainerImage>, String> {
    let mut images = Vec::new();
    let mut push = |image: ContainerImage| {
        if images.len() == MAX_IMAGES {
            return Err(format!("more than {MAX_IMAGES} images (containers and image volumes)"));
        }
        images.push(image);
        Ok(())
    };
    for list in lists {
        for (i, container) in entries(spec, spec_at, list)?.iter().enumerate() {
            let name = container.get("name").and_then(Json::as_str).unwrap_or("").to_owned();
            let Some(image) = container.get("image").and_then(Json::as_str) else {
                return Err(format!("container {name:?} in {list} has no image"));
            };
            push(ContainerImage { list, name, image: image.to_owned(), pointer: format!("{spec_at}/{list}/{i}/image") })?;
        }
    }
    if volumes {
        for (i, volume) in entries(spec, spec_at, VOLUMES)?.iter().enumerate() {
            let name = volume.get("name").and_then(Json::as_str).unwrap_or("").to_owned();
            // An image volume names its image in `image.reference` (optional in templates,
            // where a controller may fill it in; what is pulled is reviewed when it is).
            let reference = match volume.get("image").map(|source| source.get("reference")) {
                None | Some(None | Some(Json::Null)) => continue,
                Some(Some(Json::String(reference))) => reference,
                Some(Some(_)) => return Err(format!("image volume {name:?} has a reference that is not a string")),
            };
            push(ContainerImage { list: VOLUMES, name, image: reference.clone(), pointer: format!("{spec_at}/{VOLUMES}/{i}/image/reference") })?;
        }
    }
    Ok(images)
}

/// The entries of the list `field` of `spec` (none when absent).
fn entries<'a>(spec: &'a Json, spec_at: &str, field: &str) -> Result<&'a [Json], String> {
    match spec.get(field) {
        None | Some(Json::Null) => Ok(&[]),
        Some(Json::Array(entries)) => Ok(entries),
        Some(_) => Err(format!("{spec_at}/{field} is not a list")),
    }
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

/// One container's or volume's line in a denial or a warning.
fn describe(image: &ContainerImage, decided: &Decided) -> String {
    format!("{} {:?} image {:?}: {} ({})", singular(image.list), image.name, image.image, decided.message, decided.reason.code())
}

fn singular(list: &str) -> &'static str {
    match list {
        "initContainers" => "init container",
        "ephemeralContainers" => "ephemeral container",
        VOLUMES => "image volume",
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

    fn update_of(kind: (&str, &str), old: Json, new: Json) -> AdmissionRequest {
        parse_review(
            &serde_json::to_vec(&json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u-2", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
                            "namespace": "ns", "operation": "UPDATE", "object": new, "oldObject": old}
            }))
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn image_volumes_are_reviewed_with_their_pointer_and_named_in_denials() {
        let spec = json!({"containers": [{"name": "app", "image": "atcr.io/a/app:1"}],
                          "volumes": [{"name": "cfg", "configMap": {"name": "x"}},
                                      {"name": "models", "image": {"reference": "atcr.io/a/models:7", "pullPolicy": "IfNotPresent"}},
                                      {"name": "later", "image": {}}]});
        let pod = parse_review(&review_of(("", "Pod"), None, json!({"spec": spec}))).unwrap();
        let images = requested_images(&pod).unwrap();
        let found: Vec<(&str, &str, &str)> = images.iter().map(|i| (i.list, i.name.as_str(), i.pointer.as_str())).collect();
        assert_eq!(found, [("containers", "app", "/spec/containers/0/image"), ("volumes", "models", "/spec/volumes/1/image/reference")]);
        assert!(images[1].is_volume());
        let deployment = parse_review(&review_of(("apps", "Deployment"), None, json!({"spec": {"template": {"spec": spec}}}))).unwrap();
        assert_eq!(requested_images(&deployment).unwrap()[1].pointer, "/spec/template/spec/volumes/1/image/reference");
        let answers = vec![(images[1].clone(), decided(Outcome::Reject, Reason::RecordNotFound, true))];
        let message = validating_response("u", &answers)["status"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("image volume \"models\" image \"atcr.io/a/models:7\""), "{message}");
        // Pinned like a container.
        let answers = vec![(images[1].clone(), decided(Outcome::Admit, Reason::Verified, true))];
        let patch = mutating_response("u", &answers)["patch"].as_str().unwrap().to_owned();
        let patch: Json = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch).unwrap()).unwrap();
        assert_eq!(patch, json!([{"op": "replace", "path": "/spec/volumes/1/image/reference", "value": "atcr.io/a/models:7@sha256:bb"}]));
        // A reference that is not a string is refused, never skipped.
        let bad = parse_review(&review_of(("", "Pod"), None, json!({"spec": {"volumes": [{"name": "v", "image": {"reference": 7}}]}}))).unwrap();
        assert!(requested_images(&bad).unwrap_err().contains("not a string"));
        // The ephemeral containers subresource adds no volume.
        let eph = parse_review(&review_of(("", "Pod"), Some("ephemeralcontainers"), json!({"spec": spec}))).unwrap();
        assert!(requested_images(&eph).unwrap().is_empty());
    }

    #[test]
    fn an_update_is_decided_only_for_the_images_it_introduces() {
        let old = json!({"metadata": {"labels": {}}, "spec": {"containers": [{"name": "app", "image": "atcr.io/a/app:1"}],
                          "volumes": [{"name": "m", "image": {"reference": "atcr.io/a/models:7"}}]}});
        // A label, a finalizer, a status: the same images, nothing to decide.
        let mut labelled = old.clone();
        labelled["metadata"]["labels"] = json!({"team": "x"});
        assert!(requested_images(&update_of(("", "Pod"), old.clone(), labelled)).unwrap().is_empty());
        // Two spellings of one image are one image.
        let mut respelled = old.clone();
        respelled["spec"]["containers"][0]["image"] = json!("atcr.io:443/a/app:1");
        assert!(requested_images(&update_of(("", "Pod"), old.clone(), respelled)).unwrap().is_empty());
        // A new image (a container's or a volume's) is decided as in a CREATE.
        let mut changed = old.clone();
        changed["spec"]["containers"][0]["image"] = json!("atcr.io/a/app:2");
        changed["spec"]["volumes"][0]["image"]["reference"] = json!("atcr.io/a/models:8");
        let images = requested_images(&update_of(("", "Pod"), old.clone(), changed)).unwrap();
        assert_eq!(images.iter().map(|i| i.image.as_str()).collect::<Vec<_>>(), ["atcr.io/a/app:2", "atcr.io/a/models:8"]);
        // A scale of a workload: its template is unchanged.
        let rs = json!({"spec": {"replicas": 3, "template": {"spec": old["spec"].clone()}}});
        let mut scaled = rs.clone();
        scaled["spec"]["replicas"] = json!(0);
        assert!(requested_images(&update_of(("apps", "ReplicaSet"), rs, scaled)).unwrap().is_empty());
        // An old object that cannot be read holds nothing.
        let unreadable = json!({"spec": {"containers": "x"}});
        assert_eq!(requested_images(&update_of(("", "Pod"), unreadable, old.clone())).unwrap().len(), 2);
        // A CREATE ignores any oldObject.
        let mut create = update_of(("", "Pod"), old.clone(), old);
        create.operation = "CREATE".into();
        assert_eq!(requested_images(&create).unwrap().len(), 2);
    }

    fn decided(outcome: Outcome, reason: Reason, pin: bool) -> Arc<Decided> {
        let decision = Decision { outcome, reason, message: format!("m-{}", reason.code()), rule: Some("r".into()), signers: vec![] };
        Arc::new(Decided::of(&decision, Some("atcr.io/a/app@sha256:bb".into()), Some("sha256:bb".into()), "", pin))
    }

    fn container(name: &str, image: &str, i: usize) -> ContainerImage {
        ContainerImage { list: "containers", name: name.into(), image: image.into(), pointer: format!("/spec/containers/{i}/image") }
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
