//! The images of running Pods, from `kubectl get pods -A -o json` (a `v1/List` of Pods) or one
//! Pod: every container, init container and ephemeral container, pinned to the digest the node
//! reports it runs (`status.*ContainerStatuses[].imageID`) when it reports one.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::Item;

/// Largest Pod list read.
pub const MAX_PODS_BYTES: usize = 64 << 20;

/// The images in a Pod list, each with the Pods (namespace/name) that run it; sorted, unique.
pub fn images(json: &[u8]) -> Result<Vec<Item>, String> {
    if json.len() > MAX_PODS_BYTES {
        return Err(format!("the Pod list is larger than {MAX_PODS_BYTES} bytes"));
    }
    let value: Json = serde_json::from_slice(json).map_err(|e| format!("not JSON (expected `kubectl get pods -A -o json`): {e}"))?;
    let pods: Vec<&Json> = match value.get("kind").and_then(Json::as_str) {
        Some("Pod") => vec![&value],
        Some("List" | "PodList") => value.get("items").and_then(Json::as_array).map(|a| a.iter().collect()).unwrap_or_default(),
        other => return Err(format!("expected a Pod list (kind List or PodList), got kind {other:?}")),
    };
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods {
        let text = |v: Option<&Json>| v.and_then(Json::as_str).unwrap_or_default().to_owned();
        let name = format!("pod {}/{}", text(pod.pointer("/metadata/namespace")), text(pod.pointer("/metadata/name")));
        for (specs, statuses) in
            [("containers", "containerStatuses"), ("initContainers", "initContainerStatuses"), ("ephemeralContainers", "ephemeralContainerStatuses")]
        {
            let status_of = |container: &str| {
                pod.pointer(&format!("/status/{statuses}"))
                    .and_then(Json::as_array)
                    .and_then(|all| all.iter().find(|s| s.get("name").and_then(Json::as_str) == Some(container)))
            };
            for container in pod.pointer(&format!("/spec/{specs}")).and_then(Json::as_array).into_iter().flatten() {
                let Some(image) = container.get("image").and_then(Json::as_str).filter(|i| !i.is_empty()) else { continue };
                let cname = text(container.get("name"));
                let running = status_of(&cname).and_then(|s| s.get("imageID")).and_then(Json::as_str).and_then(digest_of_image_id);
                let reference = match running {
                    // The digest the node runs decides, not whatever the tag names today.
                    Some(digest) => format!("{}@{digest}", image.split_once('@').map_or(image, |(name, _)| name)),
                    None => image.to_owned(),
                };
                found.entry(reference).or_default().push(format!("{name} ({cname})"));
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(image, mut found)| {
            found.dedup();
            Item { image, found, signed_by: None }
        })
        .collect())
}

/// The manifest digest in a container status's imageID (`docker.io/library/nginx@sha256:…`,
/// `docker-pullable://nginx@sha256:…`); a bare `sha256:…` is the image config's ID, not a
/// manifest digest, so it says nothing here.
fn digest_of_image_id(image_id: &str) -> Option<String> {
    let (_, digest) = image_id.rsplit_once('@')?;
    atproto_sig_core::verify::is_valid_digest(digest).then(|| digest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:b0ff67b72a1d087090ad4fe635c35ad2752dd27d26f9435bb7877f40ecdc0bc3";

    #[test]
    fn running_digests_pin_the_images_and_pods_are_grouped() {
        let list = serde_json::json!({"kind": "List", "items": [
            {"metadata": {"namespace": "prod", "name": "api-1"},
             "spec": {"containers": [{"name": "api", "image": "atcr.io/alice.test/api:v1"}], "initContainers": [{"name": "init", "image": "busybox"}]},
             "status": {"containerStatuses": [{"name": "api", "image": "atcr.io/alice.test/api:v1", "imageID": format!("atcr.io/alice.test/api@{D}")}],
                        "initContainerStatuses": [{"name": "init", "imageID": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}},
            {"metadata": {"namespace": "prod", "name": "api-2"},
             "spec": {"containers": [{"name": "api", "image": "atcr.io/alice.test/api:v1"}]},
             "status": {"containerStatuses": [{"name": "api", "imageID": format!("docker-pullable://atcr.io/alice.test/api@{D}")}]}},
            {"metadata": {"namespace": "dev", "name": "pending"}, "spec": {"containers": [{"name": "x", "image": "ghcr.io/x/y:latest"}]}},
        ]});
        let items = images(list.to_string().as_bytes()).unwrap();
        let images: Vec<&str> = items.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(images, [format!("atcr.io/alice.test/api:v1@{D}").as_str(), "busybox", "ghcr.io/x/y:latest"]);
        assert_eq!(items[0].found, ["pod prod/api-1 (api)", "pod prod/api-2 (api)"]);
    }

    #[test]
    fn anything_but_a_pod_list_is_refused_with_what_was_expected() {
        assert!(images(b"{").unwrap_err().contains("kubectl get pods -A -o json"));
        assert!(images(br#"{"kind":"Deployment"}"#).unwrap_err().contains("Pod list"));
        assert!(images(br#"{"kind":"List","items":[{"spec":{"containers":[{"image":7}]}}]}"#).unwrap().is_empty());
    }
}
