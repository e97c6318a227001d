//! `coverage TARGET` against the loopback world (reference PDS + PLC, docker-registry): a
//! registry namespace (catalog and tags), an identity's records, and a cluster's Pods from
//! kubectl's JSON on stdin; every image decided (none stops the others), with totals and the
//! unsigned, revoked and untrusted ones named, in text, JSON, SARIF and a Prometheus textfile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "harness.rs"]
mod harness;

use std::io::Write;
use std::process::{Command, Stdio};

use harness::{Verifier, env, policy};
use serde_json::{Value as Json, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn coverage_names_every_unsigned_revoked_and_untrusted_image() {
    let env = env();
    let trusted = env.pds.create_account("cov1");
    let stranger = env.pds.create_account("cov2");
    let host = &env.registry.host;
    // cov1.test: a signed tag, an unsigned tag, a revoked tag; cov2.test signs its own image,
    // which the policy does not trust.
    let signed = env.registry.push_image("cov1.test/app", "v1", "cov-signed");
    env.pds.put_manifest(&trusted, &signed, "app", OCI_MANIFEST);
    // The unsigned tag: pushed, never recorded.
    env.registry.push_image("cov1.test/app", "v2", "cov-unsigned");
    let revoked = env.registry.push_image("cov1.test/tool", "v1", "cov-revoked");
    let rkey = env.pds.put_manifest(&trusted, &revoked, "tool", OCI_MANIFEST);
    let theirs = env.registry.push_image("cov2.test/app", "v1", "cov-theirs");
    env.pds.put_manifest(&stranger, &theirs, "app", OCI_MANIFEST);

    let config = format!(
        "plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{host:?}]\nbudget = \"8s\"\nproof_ttl = \"1s\"\n",
        env.pds.plc, env.pds.pds
    );
    let rules = format!("  - name: ours\n    scope: \"{host}/**\"\n    require: {{ signature: true }}\n    action: enforce\n");
    let verifier =
        Verifier::new(&config, &policy(&[(trusted.handle.as_str(), trusted.did.as_str(), None)], &rules, "{ action: enforce, require: { signature: true } }"));
    // This node admitted the tool before its record was deleted: past the proof's TTL (1 s
    // here) it asks again, and the signed repository proves the record gone.
    let before = verifier.command(&["verify", &format!("{host}/cov1.test/tool:v1")]);
    assert_eq!(before.status.code(), Some(0), "{}", String::from_utf8_lossy(&before.stdout));
    env.pds.delete_record(&trusted, &rkey);
    std::thread::sleep(std::time::Duration::from_millis(1500));

    // A registry namespace: every repository under it, every tag.
    let out = verifier.command(&["coverage", &format!("{host}/cov1.test/"), "--format", "json", "--jobs", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 3, "{report}");
    assert_eq!(report["totals"]["admitted"], 1);
    assert_eq!(report["unsigned"], json!([format!("{host}/cov1.test/app:v2")]));
    let statuses: Vec<(String, String)> =
        report["results"].as_array().unwrap().iter().map(|r| (r["image"].as_str().unwrap().to_owned(), r["reason"].as_str().unwrap().to_owned())).collect();
    assert!(statuses.contains(&(format!("{host}/cov1.test/app:v1"), "verified".into())), "{statuses:?}");
    assert!(statuses.contains(&(format!("{host}/cov1.test/tool:v1"), "record-deleted".into())), "{statuses:?}");
    assert_eq!(report["revoked"], json!([format!("{host}/cov1.test/tool:v1")]));
    let decided = report["results"].as_array().unwrap().iter().find(|r| r["reason"] == "verified").unwrap()["decided"].as_str().unwrap().to_owned();
    assert!(decided.ends_with(&signed), "{decided}");

    // An identity: its records, as images; the stranger's are signed, by someone untrusted.
    let out = verifier.command(&["coverage", &stranger.handle, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["untrusted"], json!([format!("{host}/{}/app@{theirs}", stranger.handle)]), "{report}");
    assert_eq!(report["results"][0]["signedBy"], json!(stranger.did));
    let out = verifier.command(&["coverage", &trusted.did, "--format", "json"]);
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 1, "the deleted record is no longer listed: {report}");
    assert_eq!(out.status.code(), Some(0), "{report}");

    // A cluster still running the revoked tool: the Pods, from kubectl's JSON on stdin, pinned to
    // the digests they run.
    let pods = json!({"kind": "List", "items": [
        {"metadata": {"namespace": "prod", "name": "app-1"}, "spec": {"containers": [{"name": "app", "image": format!("{host}/cov1.test/app:v1")}]},
         "status": {"containerStatuses": [{"name": "app", "imageID": format!("{host}/cov1.test/app@{signed}")}]}},
        {"metadata": {"namespace": "prod", "name": "tool-1"}, "spec": {"containers": [{"name": "tool", "image": format!("{host}/cov1.test/tool@{revoked}")}]}},
        {"metadata": {"namespace": "dev", "name": "gone"}, "spec": {"containers": [{"name": "x", "image": "127.0.0.1:1/nothing/here:v1"}]}},
    ]});
    let textfile = verifier.dir.path().join("coverage.prom");
    let mut child = Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["coverage", "cluster", "--pods", "-", "--format", "prometheus", "--output", textfile.to_str().unwrap()])
        .env("ATPROTO_VERIFIER_CONFIG", &verifier.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(pods.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("cluster: 3 image(s): 1 admitted"), "{said}");
    let prom = std::fs::read_to_string(&textfile).unwrap();
    assert!(prom.contains("atproto_verifier_coverage_images{target=\"cluster\",status=\"admitted\"} 1\n"), "{prom}");
    assert!(
        prom.contains("atproto_verifier_coverage_images{target=\"cluster\",status=\"undecided\"} 1\n"),
        "an unreachable registry is undecided, not unsigned: {prom}"
    );
    assert!(prom.contains(&format!("image=\"{host}/cov1.test/tool@{revoked}\",status=\"revoked\",reason=\"record-deleted\"")), "{prom}");

    // Text and SARIF: one line (or result) per image.
    let out = verifier.command(&["coverage", &format!("{host}/cov1.test/")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("unsigned   {host}/cov1.test/app:v2  (record-not-found, rule ours)")), "{text}");
    let out = verifier.command(&["coverage", &format!("{host}/cov1.test/"), "--format", "sarif"]);
    let sarif: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sarif["runs"][0]["results"].as_array().unwrap().len(), 3);

    // A target that cannot be listed is exit 2 with what to do.
    let out = verifier.command(&["coverage", "127.0.0.1:1/nothing/"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot list"), "{}", String::from_utf8_lossy(&out.stderr));
}
