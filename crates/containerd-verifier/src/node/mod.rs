//! What is already on this node: containerd's images and the containers running them, decided
//! against what this node knows. containerd asks image verifiers only when it pulls, so an
//! image already in its store is never decided again: after a revocation the kubelet
//! (`IfNotPresent`), container restarts and static Pods keep starting containers from it.
//!
//! [`survey`] lists every namespace's images and decides each from this node's stored
//! knowledge alone (the engine in offline mode: no request; knowledge older than
//! `max_proof_age` is undecided, never revoked); an image is revoked when its target, or a
//! manifest of the index it points at, is decided `record-deleted` and the policy enforces.
//! [`act`] then, with `on_revoke = "remove-image"`, deletes every image record pointing at a
//! revoked target (tags, digests and the CRI's image-ID names alike, in every namespace),
//! and lists the containers still running one. Nothing is killed.
//!
//! Only `record-deleted` under an enforcing rule removes anything: what no verified
//! signature covers (a listing, a name, a label) only says what to decide.

pub mod containerd;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};

use atproto_sig_core::Reason;
use atproto_sig_core::policy::{Outcome, Policy};
use atproto_sig_core::reference::ImageRef;
use serde_json::{Value as Json, json};

pub use containerd::{Containerd, ContainerdError, StoredContainer, StoredImage};

use crate::config::{Config, OnRevoke};
use crate::engine::{self, Request};
use crate::remote::{Deadline, InFlight, Remote};

/// Most manifests of one index decided.
pub const MAX_INDEX_MANIFESTS: usize = 64;

/// The media types of an index (OCI's and Docker's manifest list).
const INDEX_MEDIA_TYPES: [&str; 2] = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// One image record of the store, with this node's decision about it.
#[derive(Clone, Debug)]
pub struct ImageRow {
    pub image: StoredImage,
    /// The coverage status of the decision (`revoked`, `admitted`, …).
    pub status: crate::coverage::Status,
    pub reason: &'static str,
    pub message: String,
    /// The digest whose record is deleted (the target, or a manifest of its index).
    pub revoked: Option<String>,
}

/// A container still running (or created, or paused) from a revoked image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningRevoked {
    pub container: StoredContainer,
    /// The revoked target its image pointed at.
    pub digest: String,
    /// The CRI's `namespace/name` of its Pod, when the kubelet made it.
    pub pod: Option<String>,
    /// The CRI's container name, when the kubelet made it.
    pub name: Option<String>,
}

impl RunningRevoked {
    /// How an operator finds it: the Pod and container, else containerd's namespace and id.
    pub fn describe(&self) -> String {
        match (&self.pod, &self.name) {
            (Some(pod), Some(name)) => format!("pod {pod} container {name} ({} {}, task {})", self.container.namespace, self.container.id, self.container.task),
            _ => format!("container {} {} (task {})", self.container.namespace, self.container.id, self.container.task),
        }
    }
}

/// What [`survey`] found.
#[derive(Clone, Debug, Default)]
pub struct Survey {
    pub images: Vec<ImageRow>,
    pub containers: Vec<StoredContainer>,
    /// Namespaces, images or containers that could not be listed (the survey goes on).
    pub problems: Vec<String>,
}

impl Survey {
    /// The revoked targets, per namespace.
    pub fn revoked(&self) -> BTreeSet<(String, String)> {
        self.images.iter().filter(|r| r.revoked.is_some()).map(|r| (r.image.namespace.clone(), r.image.digest.clone())).collect()
    }
}

/// Lists containerd's images and containers and decides every image from stored knowledge.
pub fn survey(config: &Config, policy: &Policy, containerd: &Containerd, remote: &Remote, now: i64) -> Result<Survey, ContainerdError> {
    // Stored knowledge only: a survey of a hundred images makes no request.
    let offline = Config { offline: true, ..config.clone() };
    let mut survey = Survey::default();
    for namespace in containerd.namespaces()? {
        let images = match containerd.images(&namespace) {
            Ok(images) => images,
            Err(e) => {
                survey.problems.push(format!("namespace {namespace}: {e}"));
                continue;
            }
        };
        // Decisions per (name, digest) are cached within the survey; image-ID names (no
        // repository, as the CRI keeps) take the decision of a named record with their target.
        let mut decided: BTreeMap<String, ImageRow> = BTreeMap::new();
        let mut unnamed = Vec::new();
        for image in images {
            match ImageRef::parse(&image.name) {
                Ok(reference) if !image.name.starts_with("sha256:") => {
                    let row = decide_image(&offline, policy, containerd, remote, now, image, &reference);
                    if row.revoked.is_some() || !decided.contains_key(&row.image.digest) {
                        decided.insert(row.image.digest.clone(), row.clone());
                    }
                    survey.images.push(row);
                }
                _ => unnamed.push(image),
            }
        }
        for image in unnamed {
            let row = match decided.get(&image.digest) {
                Some(named) => ImageRow { image, status: named.status, reason: named.reason, message: named.message.clone(), revoked: named.revoked.clone() },
                None => ImageRow {
                    image,
                    status: crate::coverage::Status::Undecided,
                    reason: "no-name",
                    message: "an image ID with no named image in its namespace: nothing to decide it by".into(),
                    revoked: None,
                },
            };
            survey.images.push(row);
        }
        match containerd.containers(&namespace) {
            Ok(containers) => {
                for c in &containers {
                    crate::log::debug(&format!("node: container {namespace} {} runs {:?} (task {})", c.id, c.image, c.task));
                }
                survey.containers.extend(containers);
            }
            Err(e) => survey.problems.push(format!("namespace {namespace}: {e}")),
        }
    }
    Ok(survey)
}

/// Decides one named image: its target and, for an index, each of its manifests.
fn decide_image(config: &Config, policy: &Policy, containerd: &Containerd, remote: &Remote, now: i64, image: StoredImage, reference: &ImageRef) -> ImageRow {
    let name = format!("{}/{}", reference.host, reference.path);
    let mut digests = vec![image.digest.clone()];
    if INDEX_MEDIA_TYPES.contains(&image.media_type.as_str())
        && let Ok(Some(bytes)) = containerd.content(&image.namespace, &image.digest, containerd::MAX_INDEX_BYTES)
    {
        digests.extend(index_manifests(&bytes));
    }
    let mut first = None;
    for digest in &digests {
        let request = Request {
            reference: &name,
            digest: Some(digest),
            descriptor: None,
            policy: Ok(policy),
            config,
            now_micros: now,
            deadline: Deadline::after(config.budget.0),
            in_flight: &InFlight::default(),
        };
        let answer = engine::decide(&request, remote);
        let decision = &answer.decision;
        let status = crate::coverage::Status::of(decision.outcome, answer.class(), decision.reason, None);
        let revoked = decision.reason == Reason::RecordDeleted && decision.outcome == Outcome::Reject;
        let row = ImageRow {
            image: image.clone(),
            status,
            reason: decision.reason.code(),
            message: decision.message.clone(),
            revoked: revoked.then(|| digest.clone()),
        };
        if revoked {
            return row;
        }
        first.get_or_insert(row);
    }
    first.unwrap_or(ImageRow { image, status: crate::coverage::Status::Undecided, reason: "no-digest", message: String::new(), revoked: None })
}

/// The manifest digests an index lists (at most [`MAX_INDEX_MANIFESTS`], well-formed only).
pub fn index_manifests(bytes: &[u8]) -> Vec<String> {
    let Ok(index) = serde_json::from_slice::<Json>(bytes) else { return Vec::new() };
    index
        .get("manifests")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("digest").and_then(Json::as_str))
        .filter(|d| engine::request::checked_digest(d).is_ok())
        .take(MAX_INDEX_MANIFESTS)
        .map(str::to_owned)
        .collect()
}

/// What [`act`] did.
#[derive(Clone, Debug, Default)]
pub struct Acted {
    /// Image records removed from containerd's store.
    pub removed: Vec<StoredImage>,
    /// Containers still running a revoked image.
    pub running: Vec<RunningRevoked>,
    /// Of `running`, those not reported before (a warning each).
    pub newly_running: Vec<RunningRevoked>,
    pub problems: Vec<String>,
}

/// Acts on a survey: removes revoked images (with `on_revoke = "remove-image"`), reports the
/// containers running them (each once in the log), writes the audit log and the node state.
pub fn act(config: &Config, containerd: &Containerd, survey: &Survey, now: i64) -> Acted {
    let mut acted = Acted::default();
    let revoked = survey.revoked();
    let mut state = state::NodeState::load(&config.cache_dir);
    // Every record pointing at a revoked target goes, whatever its name.
    if config.on_revoke == OnRevoke::RemoveImage {
        for row in survey.images.iter().filter(|r| revoked.contains(&(r.image.namespace.clone(), r.image.digest.clone()))) {
            let image = &row.image;
            match containerd.delete_image(&image.namespace, &image.name, &image.digest, &image.media_type, image.size) {
                Ok(true) => {
                    removed(config, &mut state, image, &row.message, row.revoked.as_deref(), now);
                    acted.removed.push(image.clone());
                }
                Ok(false) => {}
                Err(e) => acted.problems.push(format!("{} in {}: not removed: {e}", image.name, image.namespace)),
            }
        }
    }
    for running in running_revoked(survey, &state) {
        if state.warn_once(&running.container.namespace, &running.container.id) {
            crate::log::warn(&format!(
                "node: {} still runs {} ({}), whose record is deleted: drain it (nothing is killed)",
                running.describe(),
                running.container.image,
                running.digest
            ));
            acted.newly_running.push(running.clone());
        }
        acted.running.push(running);
    }
    state.forget_containers_except(&survey.containers);
    if let Err(e) = state.save(&config.cache_dir) {
        acted.problems.push(format!("node state not saved: {e}"));
    }
    acted
}

/// The containers of `survey` with a live task (running, created, paused) whose image points
/// at a revoked target, or was removed by this node (`state`) while pointing at one.
pub fn running_revoked(survey: &Survey, state: &state::NodeState) -> Vec<RunningRevoked> {
    let revoked = survey.revoked();
    // Which image each container runs: the store's records, else those this node removed.
    let mut target_of: BTreeMap<(String, String), String> = state.removed_targets();
    let mut revoked_anywhere = revoked.clone();
    revoked_anywhere.extend(target_of.iter().map(|((namespace, _), digest)| (namespace.clone(), digest.clone())));
    for row in &survey.images {
        target_of.insert((row.image.namespace.clone(), row.image.name.clone()), row.image.digest.clone());
    }
    let mut found = Vec::new();
    for container in &survey.containers {
        if matches!(container.task, "none" | "stopped" | "unknown") {
            continue;
        }
        let Some(digest) = target_of.get(&(container.namespace.clone(), container.image.clone())) else { continue };
        if !revoked_anywhere.contains(&(container.namespace.clone(), digest.clone())) {
            continue;
        }
        let label = |key: &str| container.labels.get(key).cloned();
        let pod = label("io.kubernetes.pod.namespace").zip(label("io.kubernetes.pod.name")).map(|(ns, name)| format!("{ns}/{name}"));
        found.push(RunningRevoked { container: container.clone(), digest: digest.clone(), pod, name: label("io.kubernetes.container.name") });
    }
    found
}

/// Surveys and acts, as `watch`, `cache refresh` and the pull path call it after a
/// revocation: (survey, acted), or why containerd could not be asked.
pub fn reconcile(config: &Config, policy: &Policy, remote: &Remote, now: i64) -> Result<(Survey, Acted), ContainerdError> {
    let containerd = Containerd::connect(&config.containerd_socket, config.request_timeout.0.max(std::time::Duration::from_secs(2)))?;
    let survey = survey(config, policy, &containerd, remote, now)?;
    let acted = act(config, &containerd, &survey, now);
    Ok((survey, acted))
}

/// After a command that may have learned of revocations (`cache refresh`, `bundle import`):
/// a survey of containerd's store, acted on by `on_revoke`, when containerd's socket is
/// there. Says what it did on the log; never fails the command (the watcher surveys again).
pub fn after_learning(config: &Config, now: i64) {
    if !config.containerd_socket.exists() {
        crate::log::debug(&format!("node: no containerd socket at {}: nothing on this node surveyed", config.containerd_socket.display()));
        return;
    }
    let policy = match crate::engine::request::load_policy(&config.policy) {
        Ok(p) => p,
        Err(e) => {
            crate::log::warn(&format!("node: containerd's store not surveyed: the trust policy cannot be read: {e}"));
            return;
        }
    };
    let remote = crate::remote::system::system(config);
    match reconcile(config, &policy, &remote, now) {
        Ok((survey, acted)) => {
            for problem in survey.problems.iter().chain(&acted.problems) {
                crate::log::warn(&format!("node: {problem}"));
            }
            crate::log::info(&format!(
                "node: containerd holds {} images, {} revoked; {} removed; {} containers still run a revoked image",
                survey.images.len(),
                survey.images.iter().filter(|r| r.revoked.is_some()).count(),
                acted.removed.len(),
                acted.running.len()
            ));
        }
        Err(e) => crate::log::warn(&format!("node: {e}")),
    }
}

/// Says, records (audit log, node state) that `image` was removed.
fn removed(config: &Config, state: &mut state::NodeState, image: &StoredImage, why: &str, revoked: Option<&str>, now: i64) {
    crate::log::warn(&format!(
        "node: removed image {} ({}) from containerd's namespace {}: its record is deleted ({why})",
        image.name, image.digest, image.namespace
    ));
    crate::bindir::audit::record(
        config,
        json!({
            "time": crate::bindir::audit::now_string(),
            "event": "image-removed",
            "namespace": image.namespace,
            "image": image.name,
            "digest": image.digest,
            "revoked": revoked,
            "reason": "record-deleted",
        }),
    );
    state.removed(image, now);
}

/// The pull path's share: a pull just decided `digest` revoked; with `on_revoke =
/// "remove-image"`, the image records already pointing at it go, in every namespace, within
/// `timeout` (the rest of the pull's budget). Indexes holding it are left to the watcher's
/// next survey: reading them costs more than a pull may spend.
pub fn remove_target(config: &Config, digest: &str, timeout: std::time::Duration) -> Result<Vec<StoredImage>, ContainerdError> {
    let containerd = Containerd::connect(&config.containerd_socket, timeout)?;
    let now = crate::clock::now_micros(None).unwrap_or(0);
    let mut state = state::NodeState::load(&config.cache_dir);
    let mut gone = Vec::new();
    for namespace in containerd.namespaces()? {
        for image in containerd.images(&namespace)?.into_iter().filter(|i| i.digest == digest) {
            if containerd.delete_image(&image.namespace, &image.name, &image.digest, &image.media_type, image.size)? {
                removed(config, &mut state, &image, "decided at a pull", Some(digest), now);
                gone.push(image);
            }
        }
    }
    if !gone.is_empty()
        && let Err(e) = state.save(&config.cache_dir)
    {
        crate::log::warn(&format!("node: state not saved: {e}"));
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coverage::Status;

    fn image(namespace: &str, name: &str, digest: &str) -> StoredImage {
        StoredImage { namespace: namespace.into(), name: name.into(), digest: digest.into(), media_type: String::new(), size: 1 }
    }

    fn row(image: StoredImage, revoked: bool) -> ImageRow {
        let digest = image.digest.clone();
        ImageRow {
            image,
            status: if revoked { Status::Revoked } else { Status::Admitted },
            reason: if revoked { "record-deleted" } else { "verified" },
            message: String::new(),
            revoked: revoked.then_some(digest),
        }
    }

    fn container(namespace: &str, id: &str, image: &str, task: &'static str, pod: bool) -> StoredContainer {
        let mut labels = BTreeMap::new();
        if pod {
            labels.insert("io.kubernetes.pod.namespace".to_owned(), "default".to_owned());
            labels.insert("io.kubernetes.pod.name".to_owned(), format!("pod-{id}"));
            labels.insert("io.kubernetes.container.name".to_owned(), "app".to_owned());
        }
        StoredContainer { namespace: namespace.into(), id: id.into(), image: image.into(), labels, task }
    }

    #[test]
    fn only_live_containers_of_revoked_targets_are_reported_in_their_own_namespace() {
        let survey = Survey {
            images: vec![
                row(image("k8s.io", "r/bad:1", "sha256:bad"), true),
                row(image("k8s.io", "r/good:1", "sha256:good"), false),
                row(image("default", "r/bad:1", "sha256:good"), false),
            ],
            containers: vec![
                container("k8s.io", "a", "r/bad:1", "running", true),
                container("k8s.io", "b", "r/bad:1", "stopped", true),
                container("k8s.io", "c", "r/good:1", "running", true),
                container("default", "d", "r/bad:1", "running", false),
                container("k8s.io", "e", "r/unknown:1", "running", false),
            ],
            problems: Vec::new(),
        };
        let found = running_revoked(&survey, &state::NodeState::default());
        assert_eq!(found.iter().map(|r| r.container.id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(found[0].pod.as_deref(), Some("default/pod-a"));
        assert!(found[0].describe().contains("pod default/pod-a container app"), "{}", found[0].describe());
    }

    #[test]
    fn a_container_of_an_image_this_node_removed_is_still_reported() {
        let mut state = state::NodeState::default();
        state.removed(&image("k8s.io", "r/bad:1", "sha256:bad"), 1);
        let survey = Survey { images: Vec::new(), containers: vec![container("k8s.io", "a", "r/bad:1", "running", false)], problems: Vec::new() };
        let found = running_revoked(&survey, &state);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].digest, "sha256:bad");
        // Re-pulled since under an admitted digest: the name now points elsewhere.
        let survey = Survey { images: vec![row(image("k8s.io", "r/bad:1", "sha256:new"), false)], ..survey };
        assert!(running_revoked(&survey, &state).is_empty());
    }

    #[test]
    fn index_manifests_are_well_formed_digests_only_and_bounded() {
        let good = format!("sha256:{}", "a".repeat(64));
        let mut manifests: Vec<serde_json::Value> = vec![json!({"digest": "sha256:short"}), json!({"nodigest": 1})];
        manifests.extend((0..100).map(|_| json!({"digest": good})));
        let index = serde_json::to_vec(&json!({"manifests": manifests})).unwrap();
        let found = index_manifests(&index);
        assert_eq!(found.len(), MAX_INDEX_MANIFESTS);
        assert!(found.iter().all(|d| *d == good));
        assert!(index_manifests(b"not json").is_empty());
        assert!(index_manifests(b"{\"manifests\": 3}").is_empty());
    }
}
