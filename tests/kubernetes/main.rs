//! Kubernetes admission against real components on loopback: kube-apiserver + etcd with the
//! webhook configurations of packaging/kubernetes/ registered by URL, and Gatekeeper calling
//! `serve` through `external_data`; the signed images come from the reference PDS and
//! docker-registry, as in tests/integration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../integration/harness.rs"]
mod harness;

mod cluster;
#[path = "../support/pki.rs"]
mod pki;
#[path = "../integration/streams.rs"]
mod streams;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cluster::{ControlPlane, Server};
use harness::{Account, Verifier, env, policy, repo_root};
use serde_json::{Value as Json, json};

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
    plane.apply(&webhooks_for(plane, server));
}

fn webhooks_for(plane: &ControlPlane, server: &Server) -> Vec<Json> {
    let mut objects = plane.objects(&repo_root().join("packaging/kubernetes/webhooks.yaml"));
    for object in &mut objects {
        for webhook in object["webhooks"].as_array_mut().unwrap() {
            let path = webhook["clientConfig"]["service"]["path"].as_str().unwrap().to_owned();
            webhook["clientConfig"] = json!({"url": server.url(&path), "caBundle": plane.pki.ca_base64()});
        }
    }
    objects
}

/// The packaged webhook configurations again, named apart and for namespace `ns` only (the
/// configurations are cluster-wide; another test owns the packaged names).
fn register_webhooks_for_namespace(plane: &ControlPlane, server: &Server, ns: &str) {
    let mut objects = webhooks_for(plane, server);
    for object in &mut objects {
        object["metadata"]["name"] = json!(format!("atproto-verifier-{ns}"));
        for webhook in object["webhooks"].as_array_mut().unwrap() {
            webhook["name"] = json!(format!("{ns}.{}", webhook["name"].as_str().unwrap()));
            webhook["namespaceSelector"] = json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}]});
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

/// A Pod with `containers` (name, image) and image volumes (name, reference), mounted.
fn pod_with(ns: &str, name: &str, containers: &[(&str, &str)], volumes: &[(&str, &str)]) -> Json {
    let mounts: Vec<Json> = volumes.iter().map(|(v, _)| json!({"name": v, "mountPath": format!("/{v}")})).collect();
    let containers: Vec<Json> = containers.iter().map(|(c, image)| json!({"name": c, "image": image, "volumeMounts": mounts})).collect();
    let volumes: Vec<Json> = volumes.iter().map(|(v, reference)| json!({"name": v, "image": {"reference": reference, "pullPolicy": "IfNotPresent"}})).collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"restartPolicy": "Never", "containers": containers, "volumes": volumes}})
}

/// `kubectl create -f -` of `object`: (succeeded, what kubectl said).
fn create(plane: &ControlPlane, object: &Json) -> (bool, String) {
    let out = plane.kubectl(&["create", "-f", "-"], Some(&object.to_string()));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// kubectl `args`: (succeeded, what it said).
fn try_kubectl(plane: &ControlPlane, args: &[&str]) -> (bool, String) {
    let out = plane.kubectl(args, None);
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
        assert!(started.elapsed() < cluster::patience(Duration::from_secs(30)), "the webhook did not answer: {out}");
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

    // An ephemeral container (kubectl debug: the pods/ephemeralcontainers subresource) is reviewed too.
    let out = plane.kubectl(&["debug", "good", "-n", "enforced", "--image", &world.unsigned, "--container", "debugger"], None);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("ephemeral container \"debugger\"") && text.contains("record-not-found"), "{text}");
    plane.ok(&["debug", "good", "-n", "enforced", "--image", &world.signed, "--container", "signed-debugger"], None);

    // A Deployment with an unsigned image is refused at apply, not later at its ReplicaSet.
    let out = plane.kubectl(&["create", "deployment", "bad", "-n", "enforced", "--image", &world.unsigned], None);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("record-not-found"), "{text}");
    // ... and a signed one is admitted with its template pinned.
    plane.ok(&["create", "deployment", "good", "-n", "enforced", "--image", &world.signed], None);
    let image = plane.ok(&["get", "deployment", "good", "-n", "enforced", "-o", "jsonpath={.spec.template.spec.containers[0].image}"], None);
    assert_eq!(image, format!("{}@{}", world.signed, world.signed_digest));

    // Image volumes: reviewed, pinned like containers, and named in a denial.
    let (ok, out) = create(plane, &pod_with("enforced", "volume-unsigned", &[("app", &world.signed)], &[("models", &world.unsigned)]));
    assert!(!ok && out.contains(&format!("image volume \"models\" image {:?}", world.unsigned)) && out.contains("record-not-found"), "{out}");
    let (ok, out) = create(plane, &pod_with("enforced", "volume-signed", &[("app", &world.signed)], &[("models", &world.signed)]));
    assert!(ok, "{out}");
    let reference = plane.ok(&["get", "pod", "volume-signed", "-n", "enforced", "-o", "jsonpath={.spec.volumes[0].image.reference}"], None);
    assert_eq!(reference, format!("{}@{}", world.signed, world.signed_digest));

    // An object's whole life: a Pod and a ReplicaSet made before their namespace opted in (their
    // image would be refused now, as a revoked one is) can still be labelled, finalized, deleted
    // and scaled down; an UPDATE that brings a new image is decided as a CREATE is.
    namespace(plane, "late", false);
    let (ok, out) = run_pod(plane, "late", "old", &world.unsigned, &[]);
    assert!(ok, "{out}");
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "old-rs", "namespace": "late"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "old"}},
                 "template": {"metadata": {"labels": {"app": "old"}}, "spec": {"containers": [{"name": "app", "image": world.unsigned}]}}}});
    let (ok, out) = create(plane, &rs);
    assert!(ok, "{out}");
    namespace(plane, "late", true);
    let started = Instant::now();
    loop {
        let (ok, out) = run_pod(plane, "late", "new", &world.unsigned, &["--dry-run=server"]);
        if !ok && out.contains("record-not-found") {
            break;
        }
        assert!(started.elapsed() < cluster::patience(Duration::from_secs(30)), "the opted-in namespace is not enforced: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for args in [
        &["label", "pod", "old", "-n", "late", "team=payments"][..],
        &["annotate", "pod", "old", "-n", "late", "note=draining"],
        &["patch", "pod", "old", "-n", "late", "--type=merge", "-p", r#"{"metadata":{"finalizers":["example.com/hold"]}}"#],
        &["delete", "pod", "old", "-n", "late", "--wait=false"],
        &["patch", "pod", "old", "-n", "late", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#],
        // What the Deployment controller does to an old ReplicaSet during a rollout.
        &["patch", "replicaset", "old-rs", "-n", "late", "--type=merge", "-p", r#"{"spec":{"replicas":0}}"#],
        &["label", "replicaset", "old-rs", "-n", "late", "rollout=done"],
    ] {
        let (ok, out) = try_kubectl(plane, args);
        assert!(ok, "kubectl {args:?} was refused: {out}");
    }
    let (ok, out) = try_kubectl(plane, &["set", "image", "replicaset/old-rs", "-n", "late", &format!("app={}", world.untrusted)]);
    assert!(!ok && out.contains("denied the request") && out.contains(&world.untrusted), "a new image in an UPDATE was admitted: {out}");

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

/// Gatekeeper outside a cluster, as its own tests run it: the CRDs from its deploy manifest,
/// `--debug-use-fake-pod`, certificates from the test CA; its webhook registered by URL. One
/// for the test binary (its CRDs and webhook are cluster-wide), stopped when the process exits.
struct Gatekeeper {
    port: u16,
    _guard: harness::Guard,
    log: std::path::PathBuf,
}

/// Gatekeeper's provider-response cache TTL, as packaging/kubernetes/gatekeeper/provider.yaml
/// tells operators to set it (`every_place_that_names_gatekeepers_cache_ttl_agrees`).
const GATEKEEPER_CACHE_TTL: &str = "1s";

/// The namespaces Gatekeeper's test webhook reviews.
const GATEKEEPER_NAMESPACES: [&str; 4] = ["gk", "gk-ratify", "gk-revoke", "gk-stall"];

fn gatekeeper() -> &'static Gatekeeper {
    static GATEKEEPER: OnceLock<Gatekeeper> = OnceLock::new();
    GATEKEEPER.get_or_init(|| start_gatekeeper(plane()))
}

impl Gatekeeper {
    fn log_tail(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }
}

fn start_gatekeeper(plane: &ControlPlane) -> Gatekeeper {
    let bin = cluster::tool(&format!("gatekeeper-{}/gatekeeper", cluster::GATEKEEPER));
    let manifest = cluster::tool(&format!("gatekeeper-{}/gatekeeper.yaml", cluster::GATEKEEPER));
    let crds: Vec<_> = plane.objects(&manifest).into_iter().filter(|o| o["kind"] == "CustomResourceDefinition" || o["kind"] == "Namespace").collect();
    plane.apply(&crds);
    let dir = plane.dir.path().join("gatekeeper");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = plane.pki.issue("gatekeeper-webhook");
    std::fs::copy(cert, dir.join("tls.crt")).unwrap();
    std::fs::copy(key, dir.join("tls.key")).unwrap();
    std::fs::copy(plane.pki.ca(), dir.join("ca.crt")).unwrap();
    let (port, health) = (cluster::free_port(), cluster::free_port());
    let log = plane.dir.path().join("gatekeeper.log");
    let args: Vec<String> = vec![
        format!("--kubeconfig={}", plane.kubeconfig.display()),
        "--debug-use-fake-pod".into(),
        "--disable-cert-rotation".into(),
        format!("--cert-dir={}", dir.display()),
        format!("--port={port}"),
        "--host=127.0.0.1".into(),
        format!("--health-addr=127.0.0.1:{health}"),
        "--metrics-addr=0".into(),
        "--operation=webhook".into(),
        "--operation=audit".into(),
        "--operation=status".into(),
        // Without it the constraint CRD of a template is never made.
        "--operation=generate".into(),
        // What packaging/kubernetes/gatekeeper/provider.yaml tells operators to set.
        format!("--external-data-provider-response-cache-ttl={GATEKEEPER_CACHE_TTL}"),
    ];
    let guard = harness::spawn_tied(&bin, &args, &[("POD_NAMESPACE", "gatekeeper-system".into())], &log);
    cluster::wait_for_port(port, "gatekeeper", Duration::from_secs(60));
    plane.apply(&[json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "gatekeeper-test"},
        "webhooks": [{
            "name": "validation.gatekeeper.sh", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 3,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/v1/admit"), "caBundle": plane.pki.ca_base64()},
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": GATEKEEPER_NAMESPACES}]},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"], "scope": "Namespaced"}],
        }],
    })]);
    Gatekeeper { port, _guard: guard, log }
}

/// The packaged ConstraintTemplate (gatekeeper/template.yaml) under another name asking
/// provider `provider`, and its constraint for namespace `ns`: the same Rego, beside the
/// original (templates and providers are cluster-wide; each test has its own).
fn packaged_template_for(plane: &ControlPlane, suffix: &str, provider: &str, ns: &str) {
    let dir = repo_root().join("packaging/kubernetes/gatekeeper");
    let mut template = plane.objects(&dir.join("template.yaml")).remove(0);
    let name = format!("k8satprotoverified{suffix}");
    let kind = format!("K8sAtprotoVerified{}", suffix[..1].to_uppercase() + &suffix[1..]);
    template["metadata"]["name"] = json!(name);
    template["spec"]["crd"]["spec"]["names"]["kind"] = json!(kind);
    let rego = template["spec"]["targets"][0]["rego"].as_str().unwrap().replace("package k8satprotoverified", &format!("package {name}"));
    assert!(rego.contains("\"provider\": \"atproto-verifier\""), "the template names another provider: {rego}");
    template["spec"]["targets"][0]["rego"] = json!(rego.replace("\"provider\": \"atproto-verifier\"", &format!("\"provider\": \"{provider}\"")));
    plane.apply(&[template]);
    let constraint = json!({"apiVersion": "constraints.gatekeeper.sh/v1beta1", "kind": kind, "metadata": {"name": format!("pods-{suffix}")},
        "spec": {"enforcementAction": "deny", "match": {"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}], "namespaces": [ns]}}});
    let started = Instant::now();
    while !plane.kubectl(&["apply", "--server-side", "-f", "-"], Some(&constraint.to_string())).status.success() {
        assert!(started.elapsed() < cluster::patience(Duration::from_secs(60)), "the {kind} CRD never appeared:\n{}", gatekeeper().log_tail());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn gatekeeper_asks_serve_through_external_data() {
    let world = world();
    let verifier = verifier();
    let plane = plane();
    let ca = plane.pki.ca().display().to_string();
    let server = Server::start(&plane.pki, &verifier.config, &[&format!("--client-ca={ca}"), "--client-auth=provider"]);
    let gatekeeper = gatekeeper();
    // The namespace is reviewed by Gatekeeper only (not by the direct webhooks).
    plane.apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gk"}})]);
    // A Pod that exists before the constraint does (an unsigned image: it could not be created now).
    let (ok, out) = run_pod(plane, "gk", "early", &world.unsigned, &[]);
    assert!(ok, "{out}");

    // The packaged Provider, template and constraint; the Provider points at this server by URL.
    let dir = repo_root().join("packaging/kubernetes/gatekeeper");
    let mut provider = plane.objects(&dir.join("provider.yaml"));
    provider[0]["spec"]["url"] = json!(server.url("/gatekeeper"));
    provider[0]["spec"]["caBundle"] = json!(plane.pki.ca_base64());
    plane.apply(&provider);
    plane.apply(&plane.objects(&dir.join("template.yaml")));
    let started = Instant::now();
    loop {
        // The constraint's kind exists once Gatekeeper made the template's CRD.
        let file = dir.join("constraint.yaml").display().to_string();
        let out = plane.kubectl(&["create", "--dry-run=client", "-o", "json", "-f", &file], None);
        if out.status.success() {
            let mut constraint: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            constraint["spec"]["match"]["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": "gk"}});
            plane.apply(&[constraint]);
            break;
        }
        assert!(
            started.elapsed() < cluster::patience(Duration::from_secs(60)),
            "the constraint CRD never appeared: {}\ntemplate status: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&plane.kubectl(&["get", "constrainttemplate", "k8satprotoverified", "-o", "jsonpath={.status}"], None).stdout),
            std::fs::read_to_string(&gatekeeper.log).unwrap_or_default().lines().rev().take(15).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Unsigned: denied through external_data, with the verifier's reason per container.
    let started = Instant::now();
    let out = loop {
        let (ok, out) = run_pod(plane, "gk", "unsigned", &world.unsigned, &[]);
        if !ok && out.contains("pods-must-be-atproto-verified") {
            break out;
        }
        assert!(started.elapsed() < cluster::patience(Duration::from_secs(60)), "Gatekeeper did not enforce the constraint: {out}\n{}", gatekeeper.log_tail());
        if ok {
            plane.kubectl(&["delete", "pod", "unsigned", "-n", "gk", "--wait=false"], None);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(out.contains(&format!("container \"unsigned\" image {:?}", world.unsigned)) && out.contains("record-not-found"), "{out}");
    // Signed: admitted.
    let (ok, out) = run_pod(plane, "gk", "signed", &world.signed, &[]);
    assert!(ok, "{out}\n{}", server.log_text());
    assert!(gatekeeper.port > 0);
    // Image volumes are asked about like containers, and named in the denial.
    let (ok, out) = create(plane, &pod_with("gk", "gk-volume", &[("app", &world.signed)], &[("data", &world.unsigned)]));
    assert!(!ok && out.contains(&format!("image volume \"data\" image {:?}", world.unsigned)) && out.contains("record-not-found"), "{out}");
    let (ok, out) = create(plane, &pod_with("gk", "gk-volume-signed", &[("app", &world.signed)], &[("data", &world.signed)]));
    assert!(ok, "{out}");
    // An UPDATE that introduces no image passes, though the Pod's image would be denied today.
    let (ok, out) = try_kubectl(plane, &["label", "pod", "early", "-n", "gk", "team=payments"]);
    assert!(ok, "a label on a Pod that runs an image admitted before was refused: {out}");

    // The provider route asks for Gatekeeper's client certificate.
    let request = r#"{"apiVersion":"externaldata.gatekeeper.sh/v1beta1","kind":"ProviderRequest","request":{"keys":["a:1"]}}"#;
    let (status, body) = cluster::https(&plane.pki, "POST", &server.url("/gatekeeper"), Some(request));
    assert_eq!(status, 403, "{body}");
    let (status, body) = cluster::https_as(&plane.pki, Some("some-client"), "POST", &server.url("/gatekeeper"), Some(request));
    assert_eq!(status, 200, "{body}");
    // `a:1` is Docker Hub's, unreachable here: undecided, so no item Gatekeeper would cache, and
    // the reason is the network's, not the request's.
    assert!(body.contains("\"items\":[]") && body.contains("a:1: network-error"), "{body}");

    // `ratify serve` as a second provider, with this binary as Ratify's plugin.
    let images = attached();
    let r = &env().registry.host;
    let setup = RatifySetup::new();
    let certs = setup.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (cert, key) = plane.pki.issue("ratify-serve");
    std::fs::copy(cert, certs.join("tls.crt")).unwrap();
    std::fs::copy(key, certs.join("tls.key")).unwrap();
    let (port, health) = (cluster::free_port(), cluster::free_port());
    let log = std::fs::File::create(setup.dir.path().join("ratify.log")).unwrap();
    let child = std::process::Command::new(cluster::tool(&format!("ratify-{}/ratify", cluster::RATIFY)))
        .args(["serve", "-c", &setup.config.display().to_string(), "--http", &format!("127.0.0.1:{port}")])
        .args(["--cert-dir", &certs.display().to_string(), "--ca-cert-file", &ca, "--health-port", &format!("127.0.0.1:{health}")])
        .env("HOME", setup.dir.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _ratify = harness::Guard(Some(child));
    cluster::wait_for_port(port, "ratify serve", Duration::from_secs(30));
    plane.apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gk-ratify"}})]);
    let mut objects = plane.objects(&repo_root().join("packaging/kubernetes/ratify/gatekeeper.yaml"));
    objects[0]["spec"]["url"] = json!(format!("https://127.0.0.1:{port}/ratify/gatekeeper/v1/verify"));
    objects[0]["spec"]["caBundle"] = json!(plane.pki.ca_base64());
    plane.apply(&objects);
    let constraint = json!({"apiVersion": "constraints.gatekeeper.sh/v1beta1", "kind": "K8sRatifyVerified", "metadata": {"name": "pods-ratified"},
        "spec": {"match": {"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}], "namespaces": ["gk-ratify"]}}});
    let started = Instant::now();
    while !plane.kubectl(&["apply", "--server-side", "-f", "-"], Some(&constraint.to_string())).status.success() {
        assert!(started.elapsed() < cluster::patience(Duration::from_secs(60)), "the K8sRatifyVerified CRD never appeared");
        std::thread::sleep(Duration::from_millis(250));
    }
    let unsigned = format!("{r}/alicek8s.test/ratified@{}", images.unsigned);
    let started = Instant::now();
    let out = loop {
        let (ok, out) = run_pod(plane, "gk-ratify", "r-unsigned", &unsigned, &[]);
        if !ok && out.contains("[pods-ratified]") {
            break out;
        }
        if ok {
            plane.kubectl(&["delete", "pod", "r-unsigned", "-n", "gk-ratify", "--wait=false"], None);
        }
        assert!(started.elapsed() < cluster::patience(Duration::from_secs(60)), "Gatekeeper did not enforce the Ratify constraint: {out}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(out.contains("record-not-found"), "{out}");
    let (ok, out) = run_pod(plane, "gk-ratify", "r-signed", &format!("{r}/alicek8s.test/ratified@{}", images.signed), &[]);
    assert!(ok, "{out}\n{}", std::fs::read_to_string(setup.dir.path().join("ratify.log")).unwrap_or_default());
}

/// Every manifest an operator applies is accepted by a real API server (server-side dry run:
/// schema, defaults, validation), except cert-manager's, whose CRDs this cluster lacks.
#[test]
fn packaged_manifests_pass_a_server_side_dry_run() {
    let plane = plane();
    let dir = repo_root().join("packaging/kubernetes");
    // Namespaced objects need their namespace to exist for a dry run.
    plane.ok(&["apply", "--server-side", "-f", &dir.join("namespace.yaml").display().to_string()], None);
    for file in ["namespace.yaml", "config.yaml", "deployment.yaml", "networkpolicy.yaml", "webhooks.yaml", "node/daemonset.yaml", "publisher.yaml"] {
        let path = dir.join(file).display().to_string();
        let out = plane.ok(&["apply", "--server-side", "--dry-run=server", "-f", &path], None);
        assert!(out.contains("(server dry run)"), "{file}: {out}");
    }
    // The ConfigMap's policy is one the verifier loads.
    let config: serde_json::Value =
        serde_json::from_str(&plane.ok(&["create", "--dry-run=client", "-o", "json", "-f", &dir.join("config.yaml").display().to_string()], None)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("trust-policy.yaml");
    std::fs::write(&policy, config["data"]["trust-policy.yaml"].as_str().unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier")).args(["policy", "check", &policy.display().to_string()]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The node DaemonSet's init container: `install-node` with the DaemonSet's own ConfigMaps
/// installs the verifier, its config and policy and the containerd drop-in; a broken policy
/// installs nothing.
#[test]
fn install_node_installs_what_the_daemonset_ships_and_refuses_a_broken_policy() {
    use std::os::unix::fs::PermissionsExt;
    let plane = plane();
    let file = repo_root().join("packaging/kubernetes/node/daemonset.yaml");
    let objects = plane.objects(&file);
    let data = |name: &str| objects.iter().find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name).unwrap()["data"].clone();
    let tmp = tempfile::tempdir().unwrap();
    let (config, dropin, root) = (tmp.path().join("config"), tmp.path().join("dropin"), tmp.path().join("host"));
    for (dir, map) in [(&config, data("atproto-verifier-node")), (&dropin, data("atproto-verifier-containerd"))] {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in map.as_object().unwrap() {
            std::fs::write(dir.join(name), text.as_str().unwrap()).unwrap();
        }
    }
    let install = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["install-node", &format!("--root={}", root.display()), &format!("--config-dir={}", config.display())])
            .arg(format!("--containerd-dropin={}", dropin.join("atproto-verifier.toml").display()))
            .output()
            .unwrap()
    };
    let out = install();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // It says what a revocation does to images already on the node, and how to change it.
    assert!(String::from_utf8_lossy(&out.stdout).contains("set on_revoke = \"remove-image\" in config.toml"), "{}", String::from_utf8_lossy(&out.stdout));
    let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("opt/containerd/image-verifier/bin/atproto-verifier"), 0o755);
    assert_eq!(mode("etc/atproto-verifier/trust-policy.yaml"), 0o644);
    assert_eq!(mode("var/lib/atproto-verifier"), 0o700);
    assert!(std::fs::read_to_string(root.join("etc/containerd/conf.d/atproto-verifier.toml")).unwrap().contains("image-verifier.v1.bindir"));
    // The installed binary runs.
    let version = std::process::Command::new(root.join("opt/containerd/image-verifier/bin/atproto-verifier")).arg("--version").output().unwrap();
    assert!(version.status.success());
    // A broken policy: refused, the installed one untouched.
    let before = std::fs::read(root.join("etc/atproto-verifier/trust-policy.yaml")).unwrap();
    std::fs::write(config.join("trust-policy.yaml"), "version: [").unwrap();
    let out = install();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nothing installed"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(root.join("etc/atproto-verifier/trust-policy.yaml")).unwrap(), before);
}

/// Images with referrers Ratify finds (`sha256-<hex>` tag index): signed and attached; attached
/// and then revoked; an artifact naming a record that does not exist.
struct Attached {
    signed_tag: String,
    signed: String,
    revoked: String,
    unsigned: String,
}

fn attached() -> &'static Attached {
    static ATTACHED: OnceLock<Attached> = OnceLock::new();
    ATTACHED.get_or_init(|| {
        let env = env();
        let world = world();
        let verifier = verifier();
        let r = &env.registry.host;
        let signed_tag = format!("{r}/alicek8s.test/ratified:v1");
        let signed = env.registry.push_image("alicek8s.test/ratified", "v1", "ratify-signed");
        env.pds.put_manifest(&world.alice, &signed, "ratified", OCI_MANIFEST);
        let revoked_tag = format!("{r}/alicek8s.test/ratified:revoked");
        let revoked = env.registry.push_image("alicek8s.test/ratified", "revoked", "ratify-revoked");
        let rkey = env.pds.put_manifest(&world.alice, &revoked, "ratified", OCI_MANIFEST);
        for image in [&signed_tag, &revoked_tag] {
            let out = verifier.command(&["attach", image]);
            assert!(out.status.success(), "attach {image}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        env.pds.delete_record(&world.alice, &rkey);
        let unsigned = env.registry.push_image("alicek8s.test/ratified", "unsigned", "ratify-unsigned");
        env.registry.push_signature_artifact("alicek8s.test/ratified", &unsigned, &world.alice.did, unsigned.trim_start_matches("sha256:"));
        Attached { signed_tag, signed, revoked, unsigned }
    })
}

/// Ratify's config (packaging/kubernetes/ratify/config.json) with this binary as the plugin,
/// deciding as its own node (its own cache: it did not see the proofs `attach` fetched).
struct RatifySetup {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    _node: Verifier,
}

impl RatifySetup {
    fn new() -> RatifySetup {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_atproto-verifier"), plugins.join("atproto")).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo_root().join("packaging/kubernetes/ratify/config.json")).unwrap()).unwrap();
        config["store"]["plugins"][0]["useHttp"] = json!(true);
        config["verifier"]["pluginBinDirs"] = json!([plugins]);
        let node = verifier();
        config["verifier"]["plugins"][0]["configPath"] = json!(node.config);
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        RatifySetup { dir, config: path, _node: node }
    }
}

/// The Ratify v1 CLI with this binary as its external verifier plugin, against docker-registry
/// (no referrers API: the `sha256-<hex>` tag index `attach` keeps): signed → success; an
/// image whose attached artifact points at no record, and a revoked one → failure with our
/// reason. `ratify verify` exits 0 either way: its JSON says.
#[test]
fn ratify_runs_the_plugin_for_attached_proofs_and_reports_our_reasons() {
    let env = env();
    let world = world();
    let r = &env.registry.host;
    let images = attached();
    let (attached, digest, revoked_digest, unsigned_digest) = (&images.signed_tag, &images.signed, &images.revoked, &images.unsigned);
    let setup = RatifySetup::new();
    let (dir, config_file) = (&setup.dir, &setup.config);
    let ratify = |subject: &str| -> serde_json::Value {
        let out = std::process::Command::new(cluster::tool(&format!("ratify-{}/ratify", cluster::RATIFY)))
            .args(["verify", "-c", &config_file.display().to_string(), "-s", subject])
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ratify verify {subject}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(&stdout[stdout.find('{').unwrap_or(0)..]).unwrap_or_else(|e| panic!("ratify's output is not JSON ({e}): {stdout}"))
    };
    let report = ratify(&format!("{r}/alicek8s.test/ratified@{digest}"));
    assert_eq!(report["isSuccess"], json!(true), "{report}");
    let first = &report["verifierReports"][0];
    assert_eq!((first["name"].as_str(), first["isSuccess"].as_bool()), (Some("atproto"), Some(true)), "{report}");
    assert_eq!(first["extensions"]["signers"][0], json!(world.alice.did), "{report}");
    // A tag subject is resolved to its digest by Ratify first.
    assert_eq!(ratify(attached)["isSuccess"], json!(true));
    for (subject, reason) in
        [(format!("{r}/alicek8s.test/ratified@{revoked_digest}"), "(record-"), (format!("{r}/alicek8s.test/ratified@{unsigned_digest}"), "record-not-found")]
    {
        let report = ratify(&subject);
        assert!(report.get("isSuccess").is_none_or(|v| v == &json!(false)), "{subject}: {report}");
        let first = &report["verifierReports"][0];
        assert_eq!(first["isSuccess"], json!(false), "{report}");
        assert!(first["message"].as_str().unwrap_or_default().contains(reason), "{subject}: {report}");
    }
    assert!(world.signed.contains(r));
}

/// The Helm chart: `helm lint` passes, `helm template` renders objects the real API server
/// accepts (server-side dry run), and they say what the plain manifests say.
#[test]
fn the_helm_chart_lints_renders_and_matches_the_plain_manifests() {
    let plane = plane();
    let helm = cluster::tool(&format!("helm-{}/helm", cluster::HELM));
    let chart = repo_root().join("packaging/kubernetes/helm/atproto-verifier");
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&helm).args(args).env("HOME", home.path()).env("XDG_CACHE_HOME", home.path()).output().unwrap();
        assert!(out.status.success(), "helm {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let chart_path = chart.display().to_string();
    assert!(run(&["lint", "--strict", &chart_path]).contains("0 chart(s) failed"));
    // Monitoring behind its values: it lints and renders the ServiceMonitor, the alerts and the
    // dashboard (their CRDs are not in this cluster: the text is checked, the ConfigMap applied).
    let monitoring =
        ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboard.enabled=true"];
    let mut lint = vec!["lint", "--strict", chart_path.as_str()];
    lint.extend(monitoring);
    assert!(run(&lint).contains("0 chart(s) failed"));
    let mut template = vec!["template", "atproto-verifier", chart_path.as_str(), "--namespace", "atproto-verifier"];
    template.extend(monitoring);
    let with_monitoring = run(&template);
    for needle in [
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "alert: AtprotoVerifierWatcherDisconnected",
        "name: atproto-verifier-dashboard",
        "grafana_dashboard: \"1\"",
    ] {
        assert!(with_monitoring.contains(needle), "no {needle:?} in the chart rendered with monitoring");
    }
    let rendered = home.path().join("rendered.yaml");
    std::fs::write(&rendered, run(&["template", "atproto-verifier", &chart_path, "--namespace", "atproto-verifier"])).unwrap();
    plane.ok(&["apply", "--server-side", "-f", &repo_root().join("packaging/kubernetes/namespace.yaml").display().to_string()], None);
    let out = plane.ok(&["apply", "--server-side", "--dry-run=server", "-f", &rendered.display().to_string()], None);
    assert!(out.contains("deployment.apps/atproto-verifier serverside-applied (server dry run)"), "{out}");
    let chart_objects = plane.objects(&rendered);
    let find = |objects: &[serde_json::Value], kind: &str| objects.iter().find(|o| o["kind"] == kind).cloned().unwrap_or_else(|| panic!("no {kind}"));
    let dir = repo_root().join("packaging/kubernetes");
    let plain_deployment = find(&plane.objects(&dir.join("deployment.yaml")), "Deployment");
    let chart_deployment = find(&chart_objects, "Deployment");
    for pointer in [
        "/spec/replicas",
        "/spec/template/spec/containers/0/args",
        "/spec/template/spec/containers/0/securityContext",
        "/spec/template/spec/securityContext",
        "/spec/template/spec/volumes",
    ] {
        assert_eq!(chart_deployment.pointer(pointer), plain_deployment.pointer(pointer), "{pointer}");
    }
    let (plain_policy, chart_policy) = (find(&plane.objects(&dir.join("networkpolicy.yaml")), "NetworkPolicy"), find(&chart_objects, "NetworkPolicy"));
    assert_eq!(chart_policy["spec"], plain_policy["spec"], "NetworkPolicy");
    let plain_hooks = plane.objects(&dir.join("webhooks.yaml"));
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        let (plain, chart) = (find(&plain_hooks, kind), find(&chart_objects, kind));
        for field in ["name", "rules", "namespaceSelector", "matchConditions", "failurePolicy", "timeoutSeconds", "sideEffects"] {
            assert_eq!(chart["webhooks"][0][field], plain["webhooks"][0][field], "{kind} {field}");
        }
        assert_eq!(chart["webhooks"][0]["clientConfig"]["service"], plain["webhooks"][0]["clientConfig"]["service"], "{kind}");
    }
    // The publisher, behind its value: the same Deployment and config as publisher.yaml.
    let with_publisher = home.path().join("publisher.yaml");
    std::fs::write(&with_publisher, run(&["template", "atproto-verifier", &chart_path, "--namespace", "atproto-verifier", "--set", "publisher.enabled=true"]))
        .unwrap();
    assert!(run(&["lint", "--strict", &chart_path, "--set", "publisher.enabled=true"]).contains("0 chart(s) failed"));
    let out = plane.ok(&["apply", "--server-side", "--dry-run=server", "-f", &with_publisher.display().to_string()], None);
    assert!(out.contains("deployment.apps/atproto-verifier-publisher serverside-applied (server dry run)"), "{out}");
    let publisher_objects = plane.objects(&with_publisher);
    let plain_publisher = plane.objects(&dir.join("publisher.yaml"));
    let named = |objects: &[serde_json::Value], kind: &str, name: &str| {
        objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name).cloned().unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let (plain, chart) =
        (named(&plain_publisher, "Deployment", "atproto-verifier-publisher"), named(&publisher_objects, "Deployment", "atproto-verifier-publisher"));
    for pointer in ["/spec/strategy", "/spec/template/spec/containers/0/args", "/spec/template/spec/securityContext", "/spec/template/spec/volumes"] {
        assert_eq!(chart.pointer(pointer), plain.pointer(pointer), "publisher {pointer}");
    }
    assert_eq!(
        named(&publisher_objects, "ConfigMap", "atproto-verifier-publisher")["data"]["config.toml"].as_str().unwrap().trim(),
        named(&plain_publisher, "ConfigMap", "atproto-verifier-publisher")["data"]["config.toml"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
    );
    let (plain_config, chart_config) = (find(&plane.objects(&dir.join("config.yaml")), "ConfigMap"), find(&chart_objects, "ConfigMap"));
    assert_eq!(
        chart_config["data"]["config.toml"].as_str().unwrap().trim(),
        plain_config["data"]["config.toml"].as_str().unwrap().lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n").trim()
    );
}

/// certs/private-ca.sh: a CA and a server certificate for the Service's name, and the webhook
/// configurations and Provider with the CA filled in, which the API server accepts.
#[test]
fn the_private_ca_script_makes_a_certificate_the_webhooks_trust() {
    let plane = plane();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    // The script stores the Secret with the kubectl on PATH (this cluster's).
    plane.ok(&["apply", "--server-side", "-f", &repo_root().join("packaging/kubernetes/namespace.yaml").display().to_string()], None);
    let kubectl_dir = cluster::tool(&format!("kubernetes-{}/kubectl", cluster::K8S)).parent().unwrap().to_owned();
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("packaging/kubernetes/certs/private-ca.sh"))
        .arg(&out_dir)
        .env("PATH", format!("{}:/usr/bin:/bin", kubectl_dir.display()))
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()
        .unwrap();
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{yaml}{}", String::from_utf8_lossy(&out.stderr));
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", &out_dir.join("ca.crt").display().to_string(), &out_dir.join("tls.crt").display().to_string()])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let text = std::process::Command::new("openssl").args(["x509", "-noout", "-text", "-in", &out_dir.join("tls.crt").display().to_string()]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("DNS:atproto-verifier.atproto-verifier.svc"));
    let mode = std::fs::metadata(out_dir.join("ca.key")).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).unwrap();
    assert_eq!(mode, 0o600, "ca.key must be private");
    // The webhooks, then the Provider (Gatekeeper's CRD may not be in this cluster: read as text).
    let (webhooks_yaml, provider_yaml) = yaml.rsplit_once("\n---\n").unwrap();
    let patched = dir.path().join("patched.yaml");
    std::fs::write(&patched, webhooks_yaml).unwrap();
    let objects = plane.objects(&patched);
    let ca = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(out_dir.join("ca.crt")).unwrap())
    };
    let hooks: Vec<_> = objects.iter().filter(|o| o["kind"].as_str().unwrap_or("").ends_with("WebhookConfiguration")).collect();
    assert_eq!(hooks.len(), 2);
    for hook in &hooks {
        assert_eq!(hook["webhooks"][0]["clientConfig"]["caBundle"], json!(ca), "{hook}");
    }
    assert!(provider_yaml.contains("kind: Provider") && provider_yaml.contains(&format!("caBundle: {ca}")), "{provider_yaml}");
    let secret = plane.ok(&["get", "secret", "atproto-verifier-tls", "-n", "atproto-verifier", "-o", "jsonpath={.type}"], None);
    assert_eq!(secret, "kubernetes.io/tls");
    // The API server accepts the webhook configurations as patched.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": hooks});
    plane.ok(&["apply", "--server-side", "--dry-run=server", "-f", "-"], Some(&list.to_string()));
}

/// `coverage cluster` reads the Pods from the API server its kubeconfig names (CA file, bearer
/// token, paginated), and finds the same images as kubectl's JSON on stdin.
#[test]
fn coverage_lists_the_pods_of_a_real_api_server_from_a_kubeconfig() {
    let plane = plane();
    let world = world();
    let verifier = verifier();
    namespace(plane, "coverage", false);
    for (name, image) in [("signed", &world.signed), ("unsigned", &world.unsigned), ("untrusted", &world.untrusted)] {
        let (ok, out) = run_pod(plane, "coverage", name, image, &[]);
        assert!(ok, "{out}");
    }
    let out = verifier.command(&["coverage", "cluster", "--kubeconfig", plane.kubeconfig.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(String, String)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["found"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().starts_with("pod coverage/")))
        .map(|r| (r["image"].as_str().unwrap().to_owned(), r["status"].as_str().unwrap().to_owned()))
        .collect();
    assert!(rows.contains(&(world.signed.clone(), "admitted".into())), "{rows:?}");
    assert!(rows.contains(&(world.unsigned.clone(), "unsigned".into())), "{rows:?}");
    assert!(rows.contains(&(world.untrusted.clone(), "unsigned".into())), "{rows:?}");
    // The same images as kubectl's own listing, piped in.
    let listed = plane.ok(&["get", "pods", "-A", "-o", "json"], None);
    let piped = {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["coverage", "cluster", "--pods", "-", "--format", "json"])
            .env("ATPROTO_VERIFIER_CONFIG", &verifier.config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(listed.as_bytes()).unwrap();
        serde_json::from_slice::<Json>(&child.wait_with_output().unwrap().stdout).unwrap()
    };
    let images = |r: &Json| r["results"].as_array().unwrap().iter().map(|x| x["image"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(images(&piped), images(&report));
    // Credentials that may not list Pods: exit 2, said as such.
    let denied = verifier.dir.path().join("denied.kubeconfig");
    std::fs::write(&denied, std::fs::read_to_string(&plane.kubeconfig).unwrap().replace("test-admin-token", "not-a-token")).unwrap();
    let out = verifier.command(&["coverage", "cluster", "--kubeconfig", denied.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Gatekeeper asking `server` for the Pods of namespace `gk-<suffix>`: the packaged Provider
/// (named `atproto-verifier-<suffix>`) pointed at it, and the packaged template and a
/// constraint for that namespace.
fn gatekeeper_for(plane: &ControlPlane, server: &Server, suffix: &str) -> &'static Gatekeeper {
    let gatekeeper = gatekeeper();
    let name = format!("atproto-verifier-{suffix}");
    let mut provider = plane.objects(&repo_root().join("packaging/kubernetes/gatekeeper/provider.yaml"));
    provider[0]["metadata"]["name"] = json!(name);
    provider[0]["spec"]["url"] = json!(server.url("/gatekeeper"));
    provider[0]["spec"]["caBundle"] = json!(plane.pki.ca_base64());
    plane.apply(&provider);
    let ns = format!("gk-{suffix}");
    plane.apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})]);
    packaged_template_for(plane, suffix, &name, &ns);
    gatekeeper
}

/// `serve` as packaging/kubernetes/deployment.yaml runs it (its container's args) with
/// config.yaml's config.toml: only what names the cluster is rewritten (paths, the listen
/// address, Jetstream's URL to the loopback Jetstream); the loopback world's PLC, PDS and
/// registry are added.
fn packaged_server(plane: &ControlPlane, dir: &std::path::Path, policy: &str, jetstream: u16) -> Server {
    let packaging = repo_root().join("packaging/kubernetes");
    let deployment = plane.objects(&packaging.join("deployment.yaml")).into_iter().find(|o| o["kind"] == "Deployment").unwrap();
    let args: Vec<String> =
        deployment["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    assert!(args.iter().any(|a| a == "--watch"), "the packaged Deployment runs no watcher: {args:?}");
    let config_map = plane.objects(&packaging.join("config.yaml")).remove(0);
    let packaged = config_map["data"]["config.toml"].as_str().unwrap();
    let mut config = String::new();
    for line in packaged.lines() {
        match line.split('=').next().unwrap_or("").trim() {
            "policy" => config.push_str(&format!("policy = {:?}\n", dir.join("trust-policy.yaml"))),
            "cache_dir" => config.push_str(&format!("cache_dir = {:?}\n", dir.join("cache"))),
            "watch_url" => config.push_str(&format!("watch_url = \"ws://127.0.0.1:{jetstream}\"\n")),
            _ => {
                config.push_str(line);
                config.push('\n');
            }
        }
    }
    assert!(config.contains("watch_source = \"jetstream\""), "the packaged config watches no relay or Jetstream: {packaged}");
    let env = env();
    config.push_str(&format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\n", env.pds.plc, env.pds.pds, env.registry.host));
    std::fs::write(dir.join("trust-policy.yaml"), policy).unwrap();
    std::fs::write(dir.join("config.toml"), &config).unwrap();
    let server = Server::start_packaged(&plane.pki, &dir.join("config.toml"), &args);
    // The watcher is following Jetstream before anything is revoked.
    let started = Instant::now();
    loop {
        let metrics = cluster::https(&plane.pki, "GET", &server.url("/metrics"), None).1;
        if metrics.lines().any(|l| l.starts_with("atproto_verifier_watch_source_connected{") && l.ends_with(" 1")) {
            break;
        }
        assert!(started.elapsed() < cluster::patience(Duration::from_secs(30)), "the watcher never connected:\n{metrics}\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// How long after `since` a new Pod with `image` in `ns` is first denied for `reason`.
fn first_denial(plane: &ControlPlane, ns: &str, image: &str, reason: &str, since: Instant) -> Duration {
    for i in 0.. {
        let (ok, out) = run_pod(plane, ns, &format!("probe-{i}"), image, &["--dry-run=server"]);
        if !ok && out.contains(reason) {
            return since.elapsed();
        }
        assert!(since.elapsed() < cluster::patience(Duration::from_secs(60)), "{image} is still admitted in {ns}: {out}");
    }
    unreachable!()
}

/// The revocation promise of the packaged cluster: the server as the manifests run it (`serve
/// --watch` on Jetstream) denies a Pod whose record was deleted within 2 s through the webhooks,
/// and within Gatekeeper's cache TTL + 2 s through Gatekeeper.
#[test]
fn the_packaged_server_revokes_in_seconds_through_the_webhook_and_gatekeeper() {
    let env = env();
    let plane = plane();
    let jetstream = streams::Jetstream::start();
    let alice = env.pds.create_account("alicerev");
    let r = &env.registry.host;
    let push = |name: &str| {
        let digest = env.registry.push_image(&format!("alicerev.test/{name}"), "v1", &format!("revocation-{name}"));
        let rkey = env.pds.put_manifest(&alice, &digest, name, OCI_MANIFEST);
        (format!("{r}/alicerev.test/{name}:v1"), rkey)
    };
    let (hooked, hooked_rkey) = push("hooked");
    let (gated, gated_rkey) = push("gated");
    let dir = tempfile::tempdir().unwrap();
    let rules = format!("  - name: signed\n    scope: \"{r}/**\"\n    require: {{ signature: true }}\n    action: enforce\n");
    let policy = policy(&[(&alice.handle, &alice.did, None)], &rules, "{ action: enforce, require: { signature: true } }");
    let server = packaged_server(plane, dir.path(), &policy, jetstream.port);

    // Through the webhooks.
    register_webhooks_for_namespace(plane, &server, "revoke");
    plane.apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "revoke"}})]);
    until_webhook_answers(plane, "revoke", &hooked);
    let (ok, out) = run_pod(plane, "revoke", "hooked", &hooked, &[]);
    assert!(ok, "{out}\n{}", server.log_text());
    let deleted = Instant::now();
    env.pds.delete_record(&alice, &hooked_rkey);
    let webhook = first_denial(plane, "revoke", &hooked, "record-deleted", deleted);

    // Through Gatekeeper (its cache TTL as the packaged Provider says).
    let gatekeeper = gatekeeper_for(plane, &server, "revoke");
    let started = Instant::now();
    loop {
        let (ok, out) = run_pod(plane, "gk-revoke", "probe", &world().unsigned, &["--dry-run=server"]);
        if !ok && out.contains("record-not-found") {
            break;
        }
        assert!(started.elapsed() < cluster::patience(Duration::from_secs(60)), "Gatekeeper did not enforce: {out}\n{}", gatekeeper.log_tail());
        std::thread::sleep(Duration::from_millis(250));
    }
    let (ok, out) = run_pod(plane, "gk-revoke", "gated", &gated, &[]);
    assert!(ok, "{out}\n{}", server.log_text());
    let deleted = Instant::now();
    env.pds.delete_record(&alice, &gated_rkey);
    let through_gatekeeper = first_denial(plane, "gk-revoke", &gated, "record-deleted", deleted);

    eprintln!("packaged cluster: deleteRecord -> first denied Pod: webhook {webhook:?}, Gatekeeper {through_gatekeeper:?}");
    let ttl = Duration::from_secs(1);
    assert!(webhook <= cluster::patience(Duration::from_secs(2)), "webhook: denied {webhook:?} after deleteRecord");
    assert!(through_gatekeeper <= ttl + cluster::patience(Duration::from_secs(2)), "Gatekeeper: denied {through_gatekeeper:?} after deleteRecord");
    let log = server.log_text();
    assert!(log.contains("dropped from memory"), "{log}");
}

/// README, the packaged Provider, `doctor --gatekeeper` and these tests name one cache TTL.
#[test]
fn every_place_that_names_gatekeepers_cache_ttl_agrees() {
    let flag = "--external-data-provider-response-cache-ttl=";
    let root = repo_root();
    let mut found = Vec::new();
    for file in ["README.md", "packaging/kubernetes/gatekeeper/provider.yaml", "crates/containerd-verifier/src/cli/doctor/mod.rs", "BENCHMARKS.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for (i, _) in text.match_indices(flag) {
            let value: String = text[i + flag.len()..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            found.push((file, value));
        }
    }
    assert!(found.iter().any(|(f, _)| *f == "README.md") && found.iter().any(|(f, _)| f.ends_with("provider.yaml")), "{found:?}");
    // `0s` (the cache off) may be named as the alternative, and a format string names none;
    // every other value is the one.
    let values: std::collections::BTreeSet<&str> = found.iter().map(|(_, v)| v.as_str()).filter(|v| !v.is_empty() && *v != "0s").collect();
    assert_eq!(values.into_iter().collect::<Vec<_>>(), [GATEKEEPER_CACHE_TTL], "{found:?}");
}

/// A PLC directory that can be made to stall: every request waits 30 s while `stalled` is set,
/// else is passed to the loopback PLC.
fn stallable_plc(stalled: std::sync::Arc<std::sync::atomic::AtomicBool>) -> harness::FakeServer {
    let upstream = env().pds.plc.clone();
    harness::FakeServer::start(Box::new(move |request| {
        if stalled.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(30));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into();
        match agent.get(&format!("{upstream}{}", request.path)).call() {
            Ok(mut response) => {
                let status = response.status().as_u16();
                harness::FakeResponse::new(status, "application/json", response.body_mut().read_to_vec().unwrap_or_default())
            }
            Err(e) => harness::FakeResponse::new(502, "text/plain", e.to_string()),
        }
    }))
}

/// Lets the stalled PLC recover; returns how long until a Pod with `image` in `ns` is admitted
/// (at most 2 s, scaled by load, or the test fails).
fn admitted_after_recovery(plane: &ControlPlane, stalled: &std::sync::atomic::AtomicBool, ns: &str, image: &str) -> Duration {
    stalled.store(false, std::sync::atomic::Ordering::SeqCst);
    let recovered = Instant::now();
    for i in 0.. {
        let (ok, out) = run_pod(plane, ns, &format!("recovered-{i}"), image, &["--dry-run=server"]);
        if ok {
            break;
        }
        assert!(
            recovered.elapsed() < cluster::patience(Duration::from_secs(2)),
            "still denied in {ns} {:?} after the PDS recovered: {out}",
            recovered.elapsed()
        );
    }
    recovered.elapsed()
}

/// One admission, one decision: with the signer's PLC directory stalled, a Pod is denied after
/// one deadline (the mutating review waits it out, the validating review reuses its undecided
/// answer), not two; when the directory recovers, the Pod is admitted within 2 s, through the
/// webhooks and through Gatekeeper (whose cache never holds the undecided answer).
#[test]
fn a_stalled_pds_costs_one_deadline_and_a_recovered_one_admits_within_two_seconds() {
    let env = env();
    let plane = plane();
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let plc = stallable_plc(std::sync::Arc::clone(&stalled));
    let r = &env.registry.host;
    let (hooked_account, gated_account) = (env.pds.create_account("stallhook"), env.pds.create_account("stallgate"));
    let image = |account: &harness::Account, name: &str| {
        let digest = env.registry.push_image(&format!("{}/{name}", account.handle), "v1", &format!("stall-{name}"));
        env.pds.put_manifest(account, &digest, name, OCI_MANIFEST);
        format!("{r}/{}/{name}:v1", account.handle)
    };
    let (hooked, gated) = (image(&hooked_account, "hooked"), image(&gated_account, "gated"));
    let rules = format!("  - name: signed\n    scope: \"{r}/**\"\n    require: {{ signature: true }}\n    action: enforce\n");
    let trusted = [(hooked_account.handle.as_str(), hooked_account.did.as_str(), None), (gated_account.handle.as_str(), gated_account.did.as_str(), None)];
    let config = format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{r:?}]\nbudget = \"8s\"\n", plc.url, env.pds.pds);
    let verifier = Verifier::new(&config, &policy(&trusted, &rules, "{ action: enforce, require: { signature: true } }"));
    let ca = plane.pki.ca().display().to_string();
    let deadline = Duration::from_secs(2);
    let server = Server::start(
        &plane.pki,
        &verifier.config,
        &["--webhook-deadline=2s", "--provider-deadline=2s", &format!("--client-ca={ca}"), "--client-auth=provider"],
    );

    // Through the webhooks.
    register_webhooks_for_namespace(plane, &server, "stall");
    plane.apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "stall"}})]);
    until_webhook_answers(plane, "stall", &world().unsigned);
    let started = Instant::now();
    let (ok, out) = run_pod(plane, "stall", "stalled", &hooked, &["--dry-run=server"]);
    let took = started.elapsed();
    assert!(!ok && (out.contains("deadline-exceeded") || out.contains("network-error")), "{out}");
    assert!(took < deadline * 2, "one admission cost {took:?}: two deadlines of {deadline:?}");
    let webhook_recovery = admitted_after_recovery(plane, &stalled, "stall", &hooked);

    // Through Gatekeeper.
    stalled.store(true, std::sync::atomic::Ordering::SeqCst);
    let gatekeeper = gatekeeper_for(plane, &server, "stall");
    let started = Instant::now();
    loop {
        let (ok, out) = run_pod(plane, "gk-stall", "gated", &gated, &["--dry-run=server"]);
        if !ok && out.contains("atproto-verifier did not decide") {
            assert!(out.contains("deadline-exceeded") || out.contains("network-error"), "{out}");
            break;
        }
        assert!(
            started.elapsed() < cluster::patience(Duration::from_secs(60)),
            "Gatekeeper did not deny the undecided image: {out}\n{}",
            gatekeeper.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let gatekeeper_recovery = admitted_after_recovery(plane, &stalled, "gk-stall", &gated);
    eprintln!("stalled PDS: one admission {took:?}; recovered: webhook {webhook_recovery:?}, Gatekeeper {gatekeeper_recovery:?}");
}
