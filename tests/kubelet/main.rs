//! Revocation against what is already on a node, with a real kubelet: kubelet 1.37 (built by
//! tests/kubernetes/install.sh) on containerd 2.4's CRI and Debian's runc, registered with a
//! loopback kube-apiserver, and `atproto-verifier watch` beside it with
//! `on_revoke = "remove-image"`. A Pod whose container restarts (`restartPolicy: Always`) keeps
//! running until its image's record is deleted; then the image leaves containerd's store and
//! the kubelet's next start must pull, which the verifier blocks: the Pod shows
//! `ErrImagePull`/`ImagePullBackOff` with our reason. A Pod with an unsigned image never starts.
//!
//! Pods use the host's network (no CNI on a test machine) and are bound to the node by name
//! (no scheduler); the kubelet runs on the host's cgroups (v1 here: `failCgroupV1: false`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[allow(dead_code, unused_imports)]
#[path = "../integration/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../kubernetes/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../containerd/daemon.rs"]
mod daemon;
#[allow(dead_code)]
#[path = "../support/pki.rs"]
mod pki;

use std::path::Path;
use std::time::{Duration, Instant};

use cluster::{ControlPlane, K8S, free_port, patience, tool};
use daemon::{Containerd, Setup, VERSIONS};
use harness::env;
use serde_json::{Value as Json, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const NODE: &str = "kubelet-test";

/// Polls `what` until it answers Some, for at most `patience(limit)`; panics with `context()`.
fn until<T>(limit: Duration, what: impl Fn() -> Option<T>, context: impl Fn() -> String) -> T {
    let limit = patience(limit);
    let started = Instant::now();
    loop {
        if let Some(value) = what() {
            return value;
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pod(name: &str, image: &str) -> Json {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "hostNetwork": true,
            "dnsPolicy": "Default",
            "automountServiceAccountToken": false,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            // Exits every 3 s: each restart is a start the kubelet makes from the store.
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["/busybox", "sleep", "3"]}],
        },
    })
}

fn pod_json(plane: &ControlPlane, name: &str) -> Json {
    let out = plane.kubectl(&["get", "pod", name, "-n", "default", "-o", "json"], None);
    serde_json::from_slice(&out.stdout).unwrap_or(Json::Null)
}

/// The waiting reason of the Pod's container (`ErrImagePull`, `ImagePullBackOff`, …), if any.
fn waiting_reason(pod: &Json) -> Option<String> {
    pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str().map(str::to_owned)
}

#[test]
fn a_pod_whose_image_is_revoked_cannot_start_its_next_container_and_an_unsigned_one_never_starts() {
    let env = env();
    let version = VERSIONS[1];
    let alice = env.pds.create_account("kubeletalice");
    let r = &env.registry.host;
    // The sandbox ("pause") image and the app: runnable, signed by alice.
    let pause_digest = env.registry.push_runnable_image("kubeletalice.test/pause", "1");
    env.pds.put_manifest(&alice, &pause_digest, "pause", OCI_MANIFEST);
    let app_digest = env.registry.push_runnable_image("kubeletalice.test/app", "v1");
    let rkey = env.pds.put_manifest(&alice, &app_digest, "app", OCI_MANIFEST);
    env.registry.push_runnable_image("kubeletalice.test/app", "unsigned");
    let (pause, app, unsigned) =
        (format!("{r}/kubeletalice.test/pause:1"), format!("{r}/kubeletalice.test/app:v1"), format!("{r}/kubeletalice.test/app:unsigned"));

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("trust-policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: \"1.0\"\ntrustedDIDs:\n  {}: {{ name: alice }}\npolicies:\n  - name: signed\n    scope: \"{r}/**\"\n    require: {{ signature: true }}\n    action: enforce\ndefault: {{ action: enforce, require: {{ signature: true }} }}\n",
            alice.did
        ),
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    let metrics = dir.path().join("watch.prom");
    let base = format!(
        "policy = {policy:?}\ncache_dir = {:?}\naudit_log = {:?}\nplc_directory = {:?}\nhandle_resolver = {:?}\nbudget = \"8s\"\non_revoke = \"remove-image\"\nwatch_metrics_file = {metrics:?}\n",
        dir.path().join("cache"),
        dir.path().join("audit.jsonl"),
        env.pds.plc,
        env.pds.pds
    );
    std::fs::write(&config, &base).unwrap();
    // The sandbox image; and no negative oom_score_adj for it (the CRI's default, -998, needs
    // CAP_SYS_RESOURCE, which a test machine may not grant: containerd's rootless setting).
    let extra = format!(
        "\n[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = {pause:?}\n[plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n"
    );
    let containerd = Containerd::start(&Setup { version, registry: r, verifier_config: &config, cri: true, extra: &extra, ..Setup::default() });
    let _kill_tasks = KillTasks(&containerd);
    std::fs::write(&config, format!("{base}containerd_socket = {:?}\n", containerd.socket)).unwrap();

    let plane = ControlPlane::start();
    let kubelet_dir = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet_dir).unwrap();
    let kubelet_config = dir.path().join("kubelet.yaml");
    let healthz = free_port();
    std::fs::write(
        &kubelet_config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nfailCgroupV1: false\nfailSwapOn: false\ncgroupDriver: cgroupfs\ncgroupsPerQOS: false\nenforceNodeAllocatable: []\n\
             containerRuntimeEndpoint: unix://{0}\nimageServiceEndpoint: unix://{0}\naddress: 127.0.0.1\nport: {1}\nreadOnlyPort: 0\nhealthzBindAddress: 127.0.0.1\nhealthzPort: {healthz}\n\
             authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}\nauthorization: {{mode: AlwaysAllow}}\npodLogsDir: {2}\n\
             evictionHard: {{memory.available: 100Mi}}\nimageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\nlocalStorageCapacityIsolation: false\n\
             makeIPTablesUtilChains: false\nserializeImagePulls: true\nsyncFrequency: 2s\nnodeStatusUpdateFrequency: 4s\n",
            containerd.socket.display(),
            free_port(),
            dir.path().join("pod-logs").display(),
        ),
    )
    .unwrap();
    let kubelet_log = dir.path().join("kubelet.log");
    let _kubelet = harness::spawn_tied(
        &tool(&format!("kubernetes-{K8S}/kubelet")),
        &[
            format!("--config={}", kubelet_config.display()),
            format!("--kubeconfig={}", plane.kubeconfig.display()),
            format!("--root-dir={}", kubelet_dir.display()),
            format!("--cert-dir={}", dir.path().join("kubelet-pki").display()),
            format!("--hostname-override={NODE}"),
            "--v=2".into(),
        ],
        &[],
        &kubelet_log,
    );
    let tail = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    until(
        Duration::from_secs(90),
        || plane.kubectl(&["get", "node", NODE], None).status.success().then_some(()),
        || format!("the kubelet never registered its node:\n{}", tail(&kubelet_log)),
    );
    let watch_log = dir.path().join("watch.log");
    let _watch = harness::spawn_tied(
        Path::new(env!("CARGO_BIN_EXE_atproto-verifier")),
        &["watch".into(), "--config".into(), config.display().to_string()],
        &[],
        &watch_log,
    );

    // A signed image: the Pod runs (its container restarting every 3 s).
    plane.ok(&["apply", "-f", "-"], Some(&pod("signed", &app).to_string()));
    until(
        Duration::from_secs(120),
        || (pod_json(&plane, "signed")["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)).then_some(()),
        || {
            format!(
                "the signed Pod never ran and restarted: {}\nkubelet:\n{}\ncontainerd:\n{}",
                pod_json(&plane, "signed"),
                tail(&kubelet_log),
                containerd.log()
            )
        },
    );
    // An unsigned image never starts: the pull is blocked, with our reason.
    plane.ok(&["apply", "-f", "-"], Some(&pod("unsigned", &unsigned).to_string()));
    until(
        Duration::from_secs(120),
        || waiting_reason(&pod_json(&plane, "unsigned")).filter(|r| r == "ErrImagePull" || r == "ImagePullBackOff"),
        || format!("{}\n{}", pod_json(&plane, "unsigned"), tail(&kubelet_log)),
    );
    let described = plane.ok(&["describe", "pod", "unsigned", "-n", "default"], None);
    assert!(described.contains("record-not-found"), "{described}");
    assert!(pod_json(&plane, "unsigned")["status"]["containerStatuses"][0]["state"]["running"].is_null());

    // The record is deleted: the watcher removes the image, and the next start must pull.
    until(Duration::from_secs(60), || std::fs::read_to_string(&watch_log).unwrap_or_default().contains("subscribed to").then_some(()), || tail(&watch_log));
    env.pds.delete_record(&alice, &rkey);
    until(
        Duration::from_secs(30),
        || std::fs::read_to_string(&watch_log).unwrap_or_default().contains(&format!("removed image {app}")).then_some(()),
        || tail(&watch_log),
    );
    until(
        Duration::from_secs(120),
        || waiting_reason(&pod_json(&plane, "signed")).filter(|r| r == "ErrImagePull" || r == "ImagePullBackOff"),
        || format!("{}\nkubelet:\n{}\nwatch:\n{}", pod_json(&plane, "signed"), tail(&kubelet_log), tail(&watch_log)),
    );
    let described = plane.ok(&["describe", "pod", "signed", "-n", "default"], None);
    assert!(described.contains("record-deleted"), "{described}");
    // Clean up: the Pods go, so the kubelet stops their containers before it is stopped.
    plane.kubectl(&["delete", "pod", "--all", "-n", "default", "--grace-period=0", "--force"], None);
}

/// Kills and deletes every task and container of the CRI's namespace when dropped (declared
/// right after the containerd that runs them), so no shim or process outlives a failed test.
struct KillTasks<'a>(&'a Containerd);

impl Drop for KillTasks<'_> {
    fn drop(&mut self) {
        let ids = |what: &str| {
            let out = self.0.ctr(&["--namespace", "k8s.io", what, "ls", "-q"]);
            String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect::<Vec<_>>()
        };
        for id in ids("task") {
            self.0.ctr(&["--namespace", "k8s.io", "task", "kill", "-s", "SIGKILL", &id]);
        }
        let started = Instant::now();
        while !ids("task").is_empty() && started.elapsed() < Duration::from_secs(20) {
            for id in ids("task") {
                self.0.ctr(&["--namespace", "k8s.io", "task", "rm", "-f", &id]);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for id in ids("container") {
            self.0.ctr(&["--namespace", "k8s.io", "container", "rm", &id]);
        }
    }
}
