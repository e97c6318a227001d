//! Air-gapped nodes: a bundle is created on a connected machine (real PDS + PLC on loopback),
//! carried, imported, and the verifier then decides inside a network namespace with no usable
//! interface (`unshare --net`), proving it made no network call. Tampered bundles are refused at
//! import; proofs older than max_proof_age are refused at decision time; strict_plc takes keys
//! from the verified audit log, not from the directory's rendered document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "harness.rs"]
mod harness;

use harness::{Account, Env, FakeResponse, FakeServer, Verifier, env, online_config, trusting};
use serde_json::Value as Json;

/// A signed image, and a bundle of its signer's records created on the connected side.
fn signed_image_and_bundle(name: &str) -> (Account, String, String, tempfile::TempDir, std::path::PathBuf) {
    let env = env();
    let account = env.pds.create_account(name);
    let repository = format!("{name}.test/app");
    let digest = env.registry.push_image(&repository, "v1", name);
    env.pds.put_manifest(&account, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
    let connected = Verifier::new(&online_config(env), &trusting(env, &account));
    let carry = tempfile::tempdir().unwrap();
    let bundle = carry.path().join("bundle.json");
    let out = connected.command(&["bundle", "create", "-o", bundle.to_str().unwrap(), "--did", &account.did]);
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // It says how large the signed collection state is (what importing it costs a node).
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("collection state of {}: 1 record, ", account.did)) && said.contains(" MiB"), "{said}");
    let image = format!("{}/{repository}:v1", env.registry.host);
    (account, image, digest, carry, bundle)
}

fn offline_node(env: &Env, account: &Account, extra: &str) -> Verifier {
    // The node's own config: offline, and a PLC directory it could never reach anyway.
    Verifier::new(&format!("offline = true\nplc_directory = \"https://plc.invalid\"\n{extra}"), &trusting(env, account))
}

#[test]
fn imported_bundle_admits_without_any_network_and_missing_material_is_named() {
    let env = env();
    let (account, image, digest, _carry, bundle) = signed_image_and_bundle("olga20");
    let node = offline_node(env, &account, "");
    let out = node.command(&["bundle", "import", bundle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let pull = node.pull_without_network(&image, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{}{}", pull.stdout, pull.stderr);
    assert_eq!(node.audit()[0]["requests"], 0);

    // An image the bundle does not cover: rejected, and the reason says how to fix it.
    let other = env.registry.push_image("olga20.test/app", "v2", "olga20-unbundled");
    env.pds.put_manifest(&account, &other, "app", "application/vnd.oci.image.manifest.v1+json");
    let pull = node.pull_without_network(&image.replace(":v1", ":v2"), &other);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-not-found"), "{}", pull.stdout);
    assert!(pull.stdout.contains("bundle create") && pull.stdout.contains("bundle import"), "{}", pull.stdout);

    // A bundle made from the image reference (signers from the policy) works the same way.
    let connected = Verifier::new(&online_config(env), &trusting(env, &account));
    let by_image = node.dir.path().join("by-image.bundle");
    let out = connected.command(&["bundle", "create", "-o", by_image.to_str().unwrap(), "--image", &image]);
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let inspected = connected.command(&["bundle", "inspect", by_image.to_str().unwrap(), "--format", "json"]);
    let listing: Json = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(listing["dids"][0]["did"], account.did.as_str());
    assert_eq!(listing["dids"][0]["auditLog"], true, "did:plc documents travel with their audit log");
    assert_eq!(listing["proofs"].as_array().unwrap().len(), 1);
    let fresh = offline_node(env, &account, "");
    assert_eq!(fresh.command(&["bundle", "import", by_image.to_str().unwrap()]).status.code(), Some(0));
    let pull = fresh.pull_without_network(&image, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{}", pull.stdout);

    // A node with nothing imported: the DID document is what is missing.
    let empty = offline_node(env, &account, "");
    let pull = empty.pull_without_network(&image, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "did-unresolved"), "{}", pull.stdout);
    assert!(pull.stdout.contains("bundle import"), "{}", pull.stdout);
}

#[test]
fn a_read_only_bundle_directory_is_imported_by_the_refresh_not_by_pulls() {
    let env = env();
    let (account, image, digest, carry, _bundle) = signed_image_and_bundle("pia21");
    let node = offline_node(env, &account, &format!("bundle_dir = {:?}\n", carry.path()));
    // Pulls only read the cache: a bundle in bundle_dir (possibly hostile, possibly huge) is
    // never parsed on the pull path.
    let pull = node.pull_without_network(&image, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "did-unresolved"), "{}{}", pull.stdout, pull.stderr);
    // The refresh timer (or the operator) imports it.
    let out = node.command(&["cache", "refresh"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let pull = node.pull_without_network(&image, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{}{}", pull.stdout, pull.stderr);
}

#[test]
fn tampered_bundles_are_refused_at_import() {
    let env = env();
    let (account, image, digest, carry, bundle_path) = signed_image_and_bundle("quinn22");
    let original: Json = serde_json::from_slice(&std::fs::read(&bundle_path).unwrap()).unwrap();
    let mallory = env.pds.create_account("mallory22");
    // Mallory's key, in the same (legacy) form the PLC renders documents in.
    let (_, _, mallory_doc) = harness::http("GET", &format!("{}/{}", env.pds.plc, mallory.did), &[], None);
    let mallory_key = serde_json::from_slice::<Json>(&mallory_doc).unwrap()["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap().to_owned();
    let edit = |f: &dyn Fn(&mut Json)| {
        let mut b = original.clone();
        f(&mut b);
        b
    };
    let set_document = |b: &mut Json, from: &str, to: &str| {
        let doc = b["dids"][0]["document"].as_str().unwrap().replace(from, to);
        b["dids"][0]["document"] = Json::String(doc);
    };
    let document: Json = serde_json::from_str(original["dids"][0]["document"].as_str().unwrap()).unwrap();
    let real_key = document["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap().to_owned();
    let cases: Vec<(&str, Json, &str)> = vec![
        ("edited document", edit(&|b| set_document(b, "at://quinn22.test", "at://admin.test")), "differs from its audit log"),
        ("swapped key", edit(&|b| set_document(b, &real_key, &mallory_key)), "differs from the key"),
        (
            "forged audit-log entry",
            edit(&|b| {
                let log = b["dids"][0]["auditLog"].as_str().unwrap().replace("at://quinn22.test", "at://admin.test");
                b["dids"][0]["auditLog"] = Json::String(log);
            }),
            "audit log invalid",
        ),
        ("missing audit log", edit(&|b| b["dids"][0]["auditLog"] = Json::Null), "no audit log"),
    ];
    // A locator pointing a digest at a record that names another digest is refused, while the
    // (authentic) proof itself is kept.
    let mut wrong_locator = original.clone();
    wrong_locator["locators"][0]["digest"] = Json::String(format!("sha256:{}", "e".repeat(64)));
    let path = carry.path().join("wrong-locator.json");
    std::fs::write(&path, serde_json::to_vec(&wrong_locator).unwrap()).unwrap();
    let node = offline_node(env, &account, "");
    let out = node.command(&["bundle", "import", path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["refused"].to_string().contains("does not verify for that digest"), "{report}");
    assert_eq!(report["stored"].as_array().unwrap().len(), 3, "document, proof and the signed collection state: {report}");
    assert!(report["stored"].to_string().contains("collection state"), "{report}");
    for (label, tampered, expected) in cases {
        let path = carry.path().join(format!("{}.json", label.replace(' ', "-")));
        std::fs::write(&path, serde_json::to_vec(&tampered).unwrap()).unwrap();
        let node = offline_node(env, &account, "");
        let out = node.command(&["bundle", "import", path.to_str().unwrap(), "--format", "json"]);
        assert_eq!(out.status.code(), Some(1), "{label}");
        let report: Json = serde_json::from_slice(&out.stdout).unwrap();
        let refused = report["refused"].to_string();
        assert!(refused.contains(&account.did) && refused.contains(expected), "{label}: {refused}");
        // Nothing of the tampered identity entered the cache: the pull is not admitted.
        let pull = node.pull_without_network(&image, &digest);
        assert_ne!(pull.code, Some(0), "{label}: {}", pull.stdout);
    }
}

#[test]
fn proofs_older_than_max_proof_age_are_refused_at_decision_time() {
    let env = env();
    let (account, image, digest, _carry, bundle) = signed_image_and_bundle("rosa23");
    let node = offline_node(env, &account, "max_proof_age = \"1s\"\n");
    assert_eq!(node.command(&["bundle", "import", bundle.to_str().unwrap()]).status.code(), Some(0));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let pull = node.pull_without_network(&image, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "proof-too-old"), "{}", pull.stdout);
    assert!(pull.stdout.contains("max_proof_age"), "{}", pull.stdout);
}

#[test]
fn strict_plc_takes_the_key_from_the_audit_log_not_the_rendered_document() {
    let env = env();
    let sam = env.pds.create_account("sam24");
    let mallory = env.pds.create_account("mallory24");
    let digest = env.registry.push_image("sam24.test/app", "v1", "sam24");
    env.pds.put_manifest(&sam, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
    // A directory that lies: sam's document carries mallory's key; the audit log is genuine.
    let (_, _, document) = harness::http("GET", &format!("{}/{}", env.pds.plc, sam.did), &[], None);
    let (_, _, mallory_doc) = harness::http("GET", &format!("{}/{}", env.pds.plc, mallory.did), &[], None);
    let (_, _, log) = harness::http("GET", &format!("{}/{}/log/audit", env.pds.plc, sam.did), &[], None);
    let key = |doc: &[u8]| serde_json::from_slice::<Json>(doc).unwrap()["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap().to_owned();
    let lying = String::from_utf8(document).unwrap().replace(
        &key(&{
            let (_, _, d) = harness::http("GET", &format!("{}/{}", env.pds.plc, sam.did), &[], None);
            d
        }),
        &key(&mallory_doc),
    );
    let did = sam.did.clone();
    let directory = FakeServer::start(Box::new(move |r| {
        if r.path == format!("/{did}") {
            FakeResponse::new(200, "application/json", lying.clone())
        } else if r.path == format!("/{did}/log/audit") {
            FakeResponse::new(200, "application/json", log.clone())
        } else {
            FakeResponse::new(404, "text/plain", "")
        }
    }));
    let config = |strict: bool| {
        format!(
            "plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\nstrict_plc = {strict}\n",
            directory.url, env.pds.pds, env.registry.host
        )
    };
    let name = format!("{}/sam24.test/app:v1", env.registry.host);
    let trusting_directory = Verifier::new(&config(false), &trusting(env, &sam));
    let pull = trusting_directory.pull(&name, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "signature-invalid"), "{}", pull.stdout);
    let strict = Verifier::new(&config(true), &trusting(env, &sam));
    let pull = strict.pull(&name, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{}{}", pull.stdout, pull.stderr);
}

#[test]
fn an_attached_proof_is_read_from_the_registry_with_no_other_network() {
    let env = env();
    let (account, image, digest, _carry, bundle) = signed_image_and_bundle("tara25");
    // Connected side: attach the proof to the image in the registry.
    let connected = Verifier::new(&online_config(env), &trusting(env, &account));
    let out = connected.command(&["attach", &image]);
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("listed under the tag sha256-"), "{}", String::from_utf8_lossy(&out.stdout));
    // The node: DID documents from the bundle, but no proof in its cache.
    let node = offline_node(env, &account, "");
    assert_eq!(node.command(&["bundle", "import", bundle.to_str().unwrap()]).status.code(), Some(0));
    for kind in ["proof", "locator"] {
        let _ = std::fs::remove_dir_all(node.dir.path().join("cache/v1").join(kind));
    }
    let pull = node.pull_without_network(&image, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(1), "record-not-found"), "without the registry: {}", pull.stdout);
    let pull = node.pull_with_only_the_registry(&env.registry, &image, &digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{}{}", pull.stdout, pull.stderr);
    assert!(pull.stderr.contains("carries a proof"), "{}", pull.stderr);
    let audit = node.audit();
    let last = audit.last().unwrap();
    assert_eq!(last["requests"], 0, "no PLC, PDS or handle request");
    assert!(last["registryRequests"].as_u64().unwrap() >= 2);
}

#[test]
fn cache_list_refresh_and_prune() {
    let env = env();
    let uma = env.pds.create_account("uma26");
    let digest = env.registry.push_image("uma26.test/app", "v1", "uma26");
    env.pds.put_manifest(&uma, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
    let config = format!("{}did_ttl = \"2s\"\nproof_ttl = \"2s\"\nmax_stale = \"1s\"\n", online_config(env));
    let node = Verifier::new(&config, &trusting(env, &uma));
    assert_eq!(node.pull(&format!("{}/uma26.test/app:v1", env.registry.host), &digest).code, Some(0));
    let json = |args: &[&str]| -> Json {
        let out = node.command(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let listed = json(&["cache", "list", "--format", "json"]);
    assert_eq!((listed["dids"].as_array().unwrap().len(), listed["proofs"].as_array().unwrap().len()), (1, 1));
    assert_eq!(listed["proofs"][0]["state"], "fresh");
    // Past half their TTL, refresh fetches them again (what the systemd timer runs).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let refreshed = json(&["cache", "refresh", "--format", "json"]);
    assert_eq!(refreshed["refreshed"].as_array().unwrap().len(), 2, "{refreshed}");
    assert!(refreshed["failed"].as_array().unwrap().is_empty());
    // Past TTL + max_stale, prune removes them.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let pruned = json(&["cache", "prune", "--format", "json"]);
    assert_eq!(pruned["removed"].as_array().unwrap().len(), 2, "{pruned}");
    assert_eq!(json(&["cache", "list", "--format", "json"])["proofs"].as_array().unwrap().len(), 0);
}

#[test]
fn systemd_units_run_commands_that_exist() {
    let unit = std::fs::read_to_string(harness::repo_root().join("systemd/atproto-verifier-refresh.service")).unwrap();
    let timer = std::fs::read_to_string(harness::repo_root().join("systemd/atproto-verifier-refresh.timer")).unwrap();
    assert!(timer.contains("OnUnitActiveSec="));
    for line in unit.lines().filter(|l| l.starts_with("ExecStart")) {
        let args: Vec<&str> = line.split_once('=').unwrap().1.split_whitespace().skip(1).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier")).args(&args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for directive in ["ProtectSystem=strict", "ReadWritePaths=/var/lib/atproto-verifier", "NoNewPrivileges=yes", "CapabilityBoundingSet="] {
        assert!(unit.contains(directive), "missing sandboxing directive {directive}");
    }
}
