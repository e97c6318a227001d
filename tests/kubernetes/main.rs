//! Kubernetes admission against real components on loopback: kube-apiserver + etcd with the
//! webhook configurations of packaging/kubernetes/ registered by URL, and Gatekeeper calling
//! `serve` through `external_data`; the signed images come from the reference PDS and
//! docker-registry, as in tests/integration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../integration/harness.rs"]
mod harness;

mod cluster;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cluster::{ControlPlane, Server};
use harness::{Account, Verifier, env, policy, repo_root};
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The images of every case, pushed and signed (or not) once.
struct World {
    alice: Account,
    signed: String,
    signed_digest: String,
    unsigned: String,
    revoked: String,
    untrusted: String,
    audited: String,
    gitops: String,
    gitops_digest: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let env = env();
        let r = &env.registry.host;
        let alice = env.pds.create_account("alicek8s");
        let mallory = env.pds.create_account("malk8s");
        let signed_digest = env.registry.push_image("alicek8s.test/app", "v1", "k8s-signed");
        env.pds.put_manifest(&alice, &signed_digest, "app", OCI_MANIFEST);
        env.registry.push_image("alicek8s.test/app", "unsigned", "k8s-unsigned");
        let revoked_digest = env.registry.push_image("alicek8s.test/app", "revoked", "k8s-revoked");
        let rkey = env.pds.put_manifest(&alice, &revoked_digest, "app", OCI_MANIFEST);
        env.pds.delete_record(&alice, &rkey);
        let untrusted_digest = env.registry.push_image("malk8s.test/app", "v1", "k8s-mallory");
        env.pds.put_manifest(&mallory, &untrusted_digest, "app", OCI_MANIFEST);
        env.registry.push_image("alicek8s.test/audited", "v1", "k8s-audited");
        let gitops_digest = env.registry.push_image("alicek8s.test/gitops", "v1", "k8s-gitops");
        env.pds.put_manifest(&alice, &gitops_digest, "gitops", OCI_MANIFEST);
        World {
            signed: format!("{r}/alicek8s.test/app:v1"),
            signed_digest,
            unsigned: format!("{r}/alicek8s.test/app:unsigned"),
            revoked: format!("{r}/alicek8s.test/app:revoked"),
            untrusted: format!("{r}/malk8s.test/app:v1"),
            audited: format!("{r}/alicek8s.test/audited:v1"),
            gitops: format!("{r}/alicek8s.test/gitops:v1"),
            gitops_digest,
            alice,
        }
    })
}

fn verifier() -> Verifier {
    let env = env();
    let world = world();
    let r = &env.registry.host;
    let rules = format!(
        "  - name: audited\n    scope: \"{r}/alicek8s.test/audited\"\n    require: {{ signature: true }}\n    action: audit\n\
         \x20 - name: gitops\n    scope: \"{r}/alicek8s.test/gitops\"\n    require: {{ signature: true }}\n    action: enforce\n    pinDigest: false\n\
         \x20 - name: signed-images\n    scope: \"{r}/**\"\n    require: {{ signature: true }}\n    action: enforce\n"
    );
    let config =
        format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{r:?}]\nbudget = \"8s\"\nproof_ttl = \"1h\"\n", env.pds.plc, env.pds.pds);
    Verifier::new(&config, &policy(&[(&world.alice.handle, &world.alice.did, None)], &rules, "{ action: enforce, require: { signature: true } }"))
}

fn plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(ControlPlane::start)
}

/// The webhook configurations of packaging/kubernetes/webhooks.yaml, pointed at `server` by
/// URL with the test CA (in a cluster they name the Service).
fn register_webhooks(plane: &ControlPlane, server: &Server) {
    let mut objects = plane.objects(&repo_root().join("packaging/kubernetes/webhooks.yaml"));
    for object in &mut objects {
        for webhook in object["webhooks"].as_array_mut().unwrap() {
            let path = webhook["clientConfig"]["service"]["path"].as_str().unwrap().to_owned();
            webhook["clientConfig"] = json!({"url": server.url(&path), "caBundle": plane.pki.ca_base64()});
        }
    }
    plane.apply(&objects);
}

fn namespace(plane: &ControlPlane, name: &str, opted_in: bool) {
    let labels = if opted_in { json!({"atproto-verifier.dev/admission": "enabled"}) } else { json!({}) };
    plane.apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})]);
}

fn run_pod(plane: &ControlPlane, ns: &str, name: &str, image: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["run", name, "-n", ns, "--image", image, "--restart=Never"];
    args.extend_from_slice(extra);
    let out = plane.kubectl(&args, None);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn pod_image(plane: &ControlPlane, ns: &str, name: &str) -> String {
    plane.ok(&["get", "pod", name, "-n", ns, "-o", "jsonpath={.spec.containers[0].image}"], None)
}

/// Waits until the webhook answers (the API server's client may need a moment for a new URL).
fn until_webhook_answers(plane: &ControlPlane, ns: &str, image: &str) {
    let started = Instant::now();
    loop {
        let (ok, out) = run_pod(plane, ns, "probe", image, &["--dry-run=server"]);
        if ok || out.contains("atproto-verifier:") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the webhook did not answer: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn webhooks_admit_signed_pods_pinned_and_deny_the_rest_with_reasons() {
    let world = world();
    let verifier = verifier();
    let plane = plane();
    let server = Server::start(&plane.pki, &verifier.config, &[]);
    register_webhooks(plane, &server);
    namespace(plane, "enforced", true);
    namespace(plane, "free", false);
    until_webhook_answers(plane, "enforced", &world.signed);

    // Signed: admitted, and the tag pinned to the digest verified.
    let (ok, out) = run_pod(plane, "enforced", "good", &world.signed, &[]);
    assert!(ok, "{out}\n{}", server.log_text());
    assert_eq!(pod_image(plane, "enforced", "good"), format!("{}@{}", world.signed, world.signed_digest));

    // A rule with pinDigest: false: admitted as written.
    let (ok, out) = run_pod(plane, "enforced", "gitops", &world.gitops, &[]);
    assert!(ok, "{out}");
    assert_eq!(pod_image(plane, "enforced", "gitops"), world.gitops);
    assert!(!world.gitops_digest.is_empty());

    // Unsigned, revoked, untrusted: denied, kubectl's error names the container, image and reason.
    for (name, image, reason) in [
        ("unsigned", &world.unsigned, "record-not-found"),
        ("revoked", &world.revoked, "record-"),
        // The path names a signer the policy does not trust: its repository is not consulted.
        ("untrusted", &world.untrusted, "which this policy does not trust"),
    ] {
        let (ok, out) = run_pod(plane, "enforced", name, image, &[]);
        assert!(!ok, "{name} was admitted: {out}");
        assert!(out.contains("denied the request") && out.contains(&format!("image {image:?}")) && out.contains(reason), "{name}: {out}");
    }

    // A Deployment with an unsigned image is refused at apply, not later at its ReplicaSet.
    let out = plane.kubectl(&["create", "deployment", "bad", "-n", "enforced", "--image", &world.unsigned], None);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("record-not-found"), "{text}");
    // ... and a signed one is admitted with its template pinned.
    plane.ok(&["create", "deployment", "good", "-n", "enforced", "--image", &world.signed], None);
    let image = plane.ok(&["get", "deployment", "good", "-n", "enforced", "-o", "jsonpath={.spec.template.spec.containers[0].image}"], None);
    assert_eq!(image, format!("{}@{}", world.signed, world.signed_digest));

    // An audit-only rule: admitted, with a warning kubectl shows.
    let (ok, out) = run_pod(plane, "enforced", "audited", &world.audited, &[]);
    assert!(ok && out.contains("Warning:") && out.contains("audit only"), "{out}");

    // A namespace that did not opt in is not reviewed at all.
    let (ok, out) = run_pod(plane, "free", "anything", &world.unsigned, &[]);
    assert!(ok, "{out}");

    // A dry run is decided, and its audit record says it was a dry run.
    let (ok, out) = run_pod(plane, "enforced", "dry", &world.unsigned, &["--dry-run=server"]);
    assert!(!ok && out.contains("record-not-found"), "{out}");
    let started = Instant::now();
    loop {
        let audit = verifier.audit();
        if audit.iter().any(|a| a["object"] == json!("dry") && a["dryRun"] == json!(true) && a["source"] == json!("admission")) {
            assert!(audit.iter().any(|a| a["object"] == json!("good") && a["dryRun"] == json!(false)));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no dry-run audit record: {audit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The server's own metrics counted what it answered.
    let metrics = cluster::https(&plane.pki, "GET", &server.url("/metrics"), None).1;
    assert!(metrics.contains("atproto_verifier_admission_decisions_total{outcome=\"rejected\",reason=\"record-not-found\"}"), "{metrics}");
    assert!(metrics.contains("atproto_verifier_admission_request_duration_seconds_count{route=\"validate\"}"), "{metrics}");

    // The server down: the validating webhook's failurePolicy (Fail) is what the API server does.
    let mut server = server;
    server.guard.stop();
    let (ok, out) = run_pod(plane, "enforced", "while-down", &world.signed, &[]);
    assert!(!ok && out.contains("failed calling webhook") && out.contains("verify.atproto-verifier.dev"), "{out}");
}
