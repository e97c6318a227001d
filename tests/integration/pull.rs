//! Pull-time verification against real components on loopback: the reference PDS + PLC
//! directory (npm), Debian's docker-registry, images pushed by our own pusher, and the verifier
//! exec'd exactly as containerd execs it. Each case asserts the exit code and the reason code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Account, Env, FakeResponse, FakeServer, Pds, Pull, Verifier, env, policy};
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn base_config(env: &Env) -> String {
    format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\nbudget = \"8s\"\n", env.pds.plc, env.pds.pds, env.registry.host)
}

fn trusting(env: &Env, accounts: &[&Account], action: &str) -> String {
    let trusted: Vec<(&str, &str, Option<&str>)> = accounts.iter().map(|a| (a.handle.as_str(), a.did.as_str(), None)).collect();
    policy(
        &trusted,
        &format!("  - name: signed-images\n    scope: \"{}/**\"\n    require: {{ signature: true }}\n    action: {action}\n", env.registry.host),
        "{ action: enforce, require: { signature: true } }",
    )
}

/// Every stdout is one short line that names a reason.
fn check_line(pull: &Pull) {
    assert!(pull.stdout.ends_with('\n') && pull.stdout.matches('\n').count() == 1, "one line: {:?}", pull.stdout);
    assert!(pull.stdout.len() <= 401, "short: {} bytes", pull.stdout.len());
}

fn expect(pull: &Pull, code: i32, reason: &str) {
    check_line(pull);
    assert_eq!((pull.code, pull.reason()), (Some(code), reason), "{}", pull.stdout);
}

#[test]
fn signed_and_trusted_images_are_admitted_single_and_index() {
    let env = env();
    let alice = env.pds.create_account("alice1");
    let image = format!("{}/alice1.test/myapp", env.registry.host);
    let digest = env.registry.push_image("alice1.test/myapp", "v1", "alice1");
    env.pds.put_manifest(&alice, &digest, "myapp", OCI_MANIFEST);
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&alice], "enforce"));
    let pull = verifier.pull(&format!("{image}:v1"), &digest);
    expect(&pull, 0, "verified");
    assert!(pull.stdout.contains(&alice.did));
    // Pulled again within the TTLs: decided from the cache, with no request at all.
    expect(&verifier.pull(&format!("{image}:v1"), &digest), 0, "verified");
    let again = verifier.audit().pop().unwrap();
    assert_eq!((again["requests"].as_u64(), again["registryRequests"].as_u64()), (Some(0), Some(0)), "{again}");

    // An index: containerd passes the index digest, and ATCR records indexes too.
    let index = env.registry.push_index("alice1.test/myapp", "multi", "alice1-multi");
    env.pds.put_manifest(&alice, &index, "myapp", OCI_INDEX);
    expect(&verifier.pull(&format!("{image}:multi"), &index), 0, "verified");

    // A record under a TID rkey is found by the bounded listRecords scan.
    let tid_digest = env.registry.push_image("alice1.test/myapp", "v2", "alice1-tid");
    env.pds.put_manifest_tid(&alice, &tid_digest, "myapp");
    expect(&verifier.pull(&format!("{image}:v2"), &tid_digest), 0, "verified");

    let audit = verifier.audit();
    assert_eq!(audit.len(), 4);
    assert!(audit.iter().all(|a| a["outcome"] == "admitted" && a["signers"][0] == json!(alice.did)));

    // The CLI: the tag is resolved through the registry, then the same decision.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["verify", &format!("{image}:v1"), "--config", verifier.config.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!((out.status.code(), result["digest"].as_str(), result["reason"].as_str()), (Some(0), Some(digest.as_str()), Some("verified")));
}

#[test]
fn image_without_a_record_is_rejected() {
    let env = env();
    let bob = env.pds.create_account("bob2");
    let digest = env.registry.push_image("bob2.test/app", "v1", "bob2");
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&bob], "enforce"));
    expect(&verifier.pull(&format!("{}/bob2.test/app:v1", env.registry.host), &digest), 1, "record-not-found");
}

#[test]
fn deleted_record_revokes_the_image_once_the_proof_cache_expires() {
    let env = env();
    let carol = env.pds.create_account("carol3");
    let digest = env.registry.push_image("carol3.test/app", "v1", "carol3");
    let rkey = env.pds.put_manifest(&carol, &digest, "app", OCI_MANIFEST);
    let config = format!("{}proof_ttl = \"0s\"\n", base_config(env));
    let verifier = Verifier::new(&config, &trusting(env, &[&carol], "enforce"));
    let name = format!("{}/carol3.test/app:v1", env.registry.host);
    expect(&verifier.pull(&name, &digest), 0, "verified");
    env.pds.delete_record(&carol, &rkey);
    expect(&verifier.pull(&name, &digest), 1, "record-deleted");
}

#[test]
fn record_for_another_repository_is_rejected() {
    let env = env();
    let dave = env.pds.create_account("dave4");
    let digest = env.registry.push_image("dave4.test/app", "v1", "dave4");
    env.pds.put_manifest(&dave, &digest, "otherapp", OCI_MANIFEST);
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&dave], "enforce"));
    expect(&verifier.pull(&format!("{}/dave4.test/app:v1", env.registry.host), &digest), 1, "repository-mismatch");
}

#[test]
fn untrusted_signer_and_signer_outside_its_window_are_rejected() {
    let env = env();
    let erin = env.pds.create_account("erin5");
    let frank = env.pds.create_account("frank5");
    let digest = env.registry.push_image("erin5.test/app", "v1", "erin5");
    env.pds.put_manifest(&erin, &digest, "app", OCI_MANIFEST);
    let name = format!("{}/erin5.test/app:v1", env.registry.host);
    // Only frank is trusted; the image is erin's. Erin's repository is never consulted (no
    // document or proof is fetched for a signer the rule cannot accept): no trusted record,
    // and the line names erin's handle and what to do.
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&frank], "enforce"));
    let pull = verifier.pull(&name, &digest);
    expect(&pull, 1, "record-not-found");
    assert!(pull.stdout.contains("erin5.test") && pull.stdout.contains("does not trust"), "{}", pull.stdout);
    let cached = verifier.command(&["cache", "list", "--format", "json"]);
    let cached = String::from_utf8_lossy(&cached.stdout);
    assert!(cached.contains(&frank.did) && !cached.contains(&erin.did), "only frank's document is fetched: {cached}");
    // erin is trusted, but her window closed in 2021.
    let expired = policy(
        &[(erin.handle.as_str(), erin.did.as_str(), Some("2021-01-01T00:00:00Z"))],
        &format!("  - name: signed\n    scope: \"{}/**\"\n    require: {{ signature: true }}\n", env.registry.host),
        "{ action: enforce, require: { signature: true } }",
    );
    let verifier = Verifier::new(&base_config(env), &expired);
    expect(&verifier.pull(&name, &digest), 1, "signer-expired");
}

#[test]
fn audit_rule_admits_and_says_it_would_reject() {
    let env = env();
    let gina = env.pds.create_account("gina6");
    let digest = env.registry.push_image("gina6.test/app", "v1", "gina6");
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&gina], "audit"));
    let pull = verifier.pull(&format!("{}/gina6.test/app:v1", env.registry.host), &digest);
    expect(&pull, 0, "audit");
    assert!(pull.stdout.starts_with("audit: would reject (record-not-found)"), "{}", pull.stdout);
    assert_eq!(verifier.audit()[0]["outcome"], "admitted (audit)");
}

#[test]
fn unsigned_image_under_a_signature_false_rule_makes_no_network_call() {
    let env = env();
    let watched = FakeServer::start(Box::new(|_| FakeResponse::new(500, "text/plain", "should not be called")));
    let digest = env.registry.push_image("library/tool", "v1", "unsigned");
    let rules = format!("  - name: tools\n    scope: \"{}/library/*\"\n    require: {{ signature: false }}\n", env.registry.host);
    let config = format!("plc_directory = {:?}\nhandle_resolver = {:?}\n", watched.url, watched.url);
    let verifier = Verifier::new(&config, &policy(&[], &rules, "{ action: enforce, require: { signature: true } }"));
    expect(&verifier.pull(&format!("{}/library/tool:v1", env.registry.host), &digest), 0, "not-required");
    assert!(watched.hits.lock().unwrap().is_empty());
    assert_eq!((verifier.audit()[0]["requests"].as_u64(), verifier.audit()[0]["registryRequests"].as_u64()), (Some(0), Some(0)));
}

#[test]
fn stopped_pds_warm_cache_admits_stale_cold_cache_is_a_network_error() {
    let env = env();
    let mut own = Pds::start();
    let hana = own.create_account("hana8");
    let digest = env.registry.push_image("hana8.test/app", "v1", "hana8");
    own.put_manifest(&hana, &digest, "app", OCI_MANIFEST);
    let config = format!(
        "plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\ndid_ttl = \"0s\"\nproof_ttl = \"0s\"\nmax_stale = \"1h\"\n",
        own.plc, own.pds, env.registry.host
    );
    let policy_text = trusting(env, &[&hana], "enforce");
    let warm = Verifier::new(&config, &policy_text);
    let name = format!("{}/hana8.test/app:v1", env.registry.host);
    expect(&warm.pull(&name, &digest), 0, "verified");
    own.stop();
    let pull = warm.pull(&name, &digest);
    expect(&pull, 0, "verified");
    assert!(pull.stdout.contains("cached data past its TTL"), "{}", pull.stdout);
    let cold = Verifier::new(&config, &policy_text);
    let pull = cold.pull(&name, &digest);
    expect(&pull, 2, "network-error");
    assert!(!pull.stdout.contains("signature"), "never reported as a bad signature: {}", pull.stdout);
}

#[test]
fn a_server_that_never_answers_is_decided_within_the_budget() {
    let env = env();
    let ivy = env.pds.create_account("ivy9");
    let digest = env.registry.push_image("ivy9.test/app", "v1", "ivy9");
    let silent = FakeServer::silent();
    let config = format!("plc_directory = {silent:?}\nbudget = \"1500ms\"\nrequest_timeout = \"1500ms\"\n");
    let verifier = Verifier::new(&config, &trusting(env, &[&ivy], "enforce"));
    let pull = verifier.pull(&format!("{}/ivy9.test/app:v1", env.registry.host), &digest);
    expect(&pull, 2, "deadline-exceeded");
    assert!(pull.elapsed < Duration::from_millis(3000), "took {:?}", pull.elapsed);
}

#[test]
fn a_handle_its_did_document_does_not_claim_is_rejected() {
    let env = env();
    let jack = env.pds.create_account("jack10");
    let kim = env.pds.create_account("kim10");
    let digest = env.registry.push_image("mallory.test/app", "v1", "jack10");
    env.pds.put_manifest(&jack, &digest, "app", OCI_MANIFEST);
    // A resolver that says mallory.test is kim's DID (trusted); kim's document claims
    // kim10.test. The handle does not verify: that is the reason, not kim's missing record.
    let kim_did = kim.did.clone();
    let resolver = FakeServer::start(Box::new(move |r| {
        if r.path.contains("handle=mallory.test") {
            FakeResponse::new(200, "application/json", format!("{{\"did\":\"{kim_did}\"}}"))
        } else {
            FakeResponse::new(400, "application/json", "{}")
        }
    }));
    let config = format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\n", env.pds.plc, resolver.url, env.registry.host);
    let verifier = Verifier::new(&config, &trusting(env, &[&kim], "enforce"));
    let pull = verifier.pull(&format!("{}/mallory.test/app:v1", env.registry.host), &digest);
    expect(&pull, 1, "identity-unresolved");
    assert!(pull.stdout.contains("kim10.test"), "{}", pull.stdout);
}

#[test]
fn thirty_concurrent_pulls_share_one_cache() {
    let env = env();
    let liam = env.pds.create_account("liam11");
    let mut digests = Vec::new();
    for i in 0..3 {
        let digest = env.registry.push_image("liam11.test/app", &format!("v{i}"), &format!("liam11-{i}"));
        env.pds.put_manifest(&liam, &digest, "app", OCI_MANIFEST);
        digests.push(digest);
    }
    let verifier = std::sync::Arc::new(Verifier::new(&base_config(env), &trusting(env, &[&liam], "enforce")));
    let name = format!("{}/liam11.test/app", env.registry.host);
    let handles: Vec<_> = (0..30)
        .map(|i| {
            let verifier = std::sync::Arc::clone(&verifier);
            let digest = digests[i % 3].clone();
            let name = format!("{name}:v{}", i % 3);
            std::thread::spawn(move || verifier.pull(&name, &digest))
        })
        .collect();
    for handle in handles {
        expect(&handle.join().unwrap(), 0, "verified");
    }
    assert!(verifier.cache_is_intact() >= 1 + 3 + 3, "document, locators and proofs cached");
    assert_eq!(verifier.audit().len(), 30);
}

#[test]
fn did_documents_in_legacy_and_multikey_form_both_verify() {
    let env = env();
    let mia = env.pds.create_account("mia12");
    let digest = env.registry.push_image("mia12.test/app", "v1", "mia12");
    env.pds.put_manifest(&mia, &digest, "app", OCI_MANIFEST);
    let name = format!("{}/mia12.test/app:v1", env.registry.host);
    // The reference PLC serves the legacy form (#atproto, EcdsaSecp256k1VerificationKey2019).
    let (_, _, legacy) = harness::http("GET", &format!("{}/{}", env.pds.plc, mia.did), &[], None);
    assert!(String::from_utf8_lossy(&legacy).contains("EcdsaSecp256k1VerificationKey2019"));
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&mia], "enforce"));
    expect(&verifier.pull(&name, &digest), 0, "verified");
    // plc.directory's Multikey form, rendered from the PLC's /data, served by a stand-in directory.
    let data = env.pds.plc_data(&mia.did);
    let did = mia.did.clone();
    let document = json!({
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "alsoKnownAs": data["alsoKnownAs"],
        "verificationMethod": [{"id": format!("{did}#atproto"), "type": "Multikey", "controller": did, "publicKeyMultibase": data["verificationMethods"]["atproto"].as_str().unwrap().trim_start_matches("did:key:")}],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": data["services"]["atproto_pds"]["endpoint"]}],
    })
    .to_string();
    let directory = FakeServer::start(Box::new(move |r| {
        if r.path == format!("/{did}") { FakeResponse::new(200, "application/did+ld+json", document.clone()) } else { FakeResponse::new(404, "text/plain", "") }
    }));
    let config = format!("plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\n", directory.url, env.pds.pds, env.registry.host);
    let verifier = Verifier::new(&config, &trusting(env, &[&mia], "enforce"));
    expect(&verifier.pull(&name, &digest), 0, "verified");
    assert!(directory.hits.lock().unwrap().iter().any(|p| p.contains(&mia.did)));
}

#[test]
fn descriptor_that_contradicts_the_digest_argument_is_rejected() {
    let env = env();
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[], "enforce").replace("signature: true }\n    action", "signature: false }\n    action"));
    let digest = format!("sha256:{}", "a".repeat(64));
    let other = format!("sha256:{}", "b".repeat(64));
    let pull = verifier.pull_with_stdin(&format!("{}/x.test/app:v1", env.registry.host), &digest, &format!("{{\"digest\":\"{other}\"}}"));
    expect(&pull, 1, "digest-mismatch");
}

#[test]
fn signature_artifacts_found_through_the_tag_fallback_are_used_as_hints() {
    let env = env();
    let nora = env.pds.create_account("nora13");
    // Mirrored into a path that names nobody: only the policy and the artifact name the signer.
    let digest = env.registry.push_image("mirror/app", "v1", "nora13");
    let rkey = env.pds.put_manifest_tid(&nora, &digest, "app");
    env.registry.push_signature_artifact("mirror/app", &digest, &nora.did, &rkey);
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&nora], "enforce"));
    let pull = verifier.pull(&format!("{}/mirror/app:v1", env.registry.host), &digest);
    expect(&pull, 0, "verified");
    assert!(pull.stderr.contains(&format!("names {} / {rkey}", nora.did)), "{}", pull.stderr);
}

#[test]
fn a_misleading_signature_artifact_cannot_hide_the_real_record() {
    let env = env();
    let vera = env.pds.create_account("vera14");
    let digest = env.registry.push_image("vera14.test/app", "v1", "vera14");
    env.pds.put_manifest(&vera, &digest, "app", OCI_MANIFEST);
    // Someone with push access attaches an artifact pointing at vera's record of another image.
    let other = env.registry.push_image("vera14.test/app", "v0", "vera14-old");
    let other_rkey = env.pds.put_manifest(&vera, &other, "app", OCI_MANIFEST);
    env.registry.push_signature_artifact("vera14.test/app", &digest, &vera.did, &other_rkey);
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&vera], "enforce"));
    let pull = verifier.pull(&format!("{}/vera14.test/app:v1", env.registry.host), &digest);
    expect(&pull, 0, "verified");
    assert!(pull.stderr.contains("does not prove"), "{}", pull.stderr);
}

#[test]
fn resolve_prints_the_did_for_a_policy_and_checks_the_handle_both_ways() {
    let env = env();
    let wes = env.pds.create_account("wes15");
    let verifier = Verifier::new(&base_config(env), &trusting(env, &[&wes], "enforce"));
    let out = verifier.command(&["resolve", "wes15.test", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["did"].as_str(), v["handle"].as_str(), v["handleVerified"].as_bool()), (Some(wes.did.as_str()), Some("wes15.test"), Some(true)));
    let out = verifier.command(&["resolve", &wes.did]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("      {}:", wes.did)), "policy snippet");
    // A resolver that lies about a handle: the DID document does not claim it back.
    let did = wes.did.clone();
    let liar = FakeServer::start(Box::new(move |_| FakeResponse::new(200, "application/json", format!("{{\"did\":\"{did}\"}}"))));
    let lied = Verifier::new(
        &format!("plc_directory = {:?}\nhandle_resolver = {:?}\n", env.pds.plc, liar.url),
        "version: 1.0\ndefault: { action: enforce, require: { signature: false } }\n",
    );
    let out = lied.command(&["resolve", "someone-else.test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT verified"), "{}", String::from_utf8_lossy(&out.stdout));
}
