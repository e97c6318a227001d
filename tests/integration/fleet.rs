//! The fleet on the registry: a publisher (`bundle push`, real PDS + PLC on loopback) pushes
//! each signer's bundle to Debian's docker-registry; nodes read it (`bundle_source`) with
//! `cache refresh`, an air-gapped one from inside a network namespace whose only server is the
//! registry. What a node decides from it, and what a signed publication changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "harness.rs"]
mod harness;

use harness::{Account, Verifier, env, online_config, trusting};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A signer with one signed image, and a publisher (a connected machine) with a key of its own.
struct World {
    account: Account,
    image: String,
    digest: String,
    rkey: String,
    publisher: Verifier,
    key: std::path::PathBuf,
    did_key: String,
    source: String,
}

fn world(name: &str) -> World {
    let env = env();
    let account = env.pds.create_account(name);
    let repository = format!("{name}.test/app");
    let digest = env.registry.push_image(&repository, "v1", name);
    let rkey = env.pds.put_manifest(&account, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
    let publisher = Verifier::new(&online_config(env), &trusting(env, &account));
    let key = publisher.dir.path().join("publisher.key");
    let out = publisher.command(&["bundle", "keygen", "-o", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let did_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(did_key.starts_with("did:key:z"), "{did_key}");
    let source = format!("oci://{}/fleet/{name}", env.registry.host);
    World { account, image: format!("{}/{repository}:v1", env.registry.host), digest, rkey, publisher, key, did_key, source }
}

impl World {
    fn push(&self, signed: bool) -> String {
        let mut args = vec!["bundle", "push", "--did", &self.account.did, &self.source];
        if signed {
            args.extend(["--key", self.key.to_str().unwrap()]);
        }
        let out = self.publisher.command(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        text(&out)
    }

    fn node(&self, extra: &str) -> Verifier {
        let env = env();
        Verifier::new(&format!("bundle_source = {:?}\nbundle_signers = [{:?}]\n{extra}", self.source, self.did_key), &trusting(env, &self.account))
    }
}

#[test]
fn an_air_gapped_node_that_reaches_only_the_registry_imports_the_fleets_bundles_and_decides_offline() {
    let env = env();
    let w = world("fleet1");
    let said = w.push(true);
    assert!(said.contains(&format!("published {}", w.account.did)) && said.contains("signed") && said.contains(":index"), "{said}");
    let node = w.node("offline = true\nplc_directory = \"https://plc.invalid\"\n");
    // Before: nothing known.
    assert_eq!(node.pull_without_network(&w.image, &w.digest).code, Some(1));
    let out = node.command_with_only_the_registry(&env.registry, &["cache", "refresh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The index and the artifact's manifest, which embeds the bundle and its publication.
    assert!(text(&out).contains("1 imported, 0 unchanged, 2 registry requests"), "{}", text(&out));
    let pull = node.pull_without_network(&w.image, &w.digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{}{}", pull.stdout, pull.stderr);
    assert_eq!(node.audit().last().unwrap()["requests"], 0);
    // A second refresh with nothing new published reads the index alone.
    let out = node.command_with_only_the_registry(&env.registry, &["cache", "refresh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("0 imported, 1 unchanged, 1 registry requests"), "{}", text(&out));
}

#[test]
fn a_deleted_record_reaches_the_node_with_the_next_publication() {
    let env = env();
    let w = world("fleet2");
    w.push(true);
    let node = w.node("offline = true\nplc_directory = \"https://plc.invalid\"\n");
    assert_eq!(node.command_with_only_the_registry(&env.registry, &["cache", "refresh"]).status.code(), Some(0));
    assert_eq!(node.pull_without_network(&w.image, &w.digest).code, Some(0));
    env.pds.delete_record(&w.account, &w.rkey);
    // The publisher's second push within did_ttl reuses the document, audit log and handle it
    // fetched for the first: one identity request, the export that proves the deletion.
    let said = w.push(true);
    assert!(said.contains("; 1 identity requests)"), "{said}");
    let out = node.command_with_only_the_registry(&env.registry, &["cache", "refresh"]);
    assert!(text(&out).contains("1 imported"), "{}", text(&out));
    let pull = node.pull_without_network(&w.image, &w.digest);
    assert_eq!(pull.code, Some(1), "revoked: {}{}", pull.stdout, pull.stderr);
    // An older publication replayed by the registry moves nothing backwards.
    let out = node.command_with_only_the_registry(&env.registry, &["cache", "refresh"]);
    assert!(text(&out).contains("1 unchanged"), "{}", text(&out));
    assert_eq!(node.pull_without_network(&w.image, &w.digest).code, Some(1));
}

/// Online, a signed publication's fetch time counts as the node's own: the node decides from it
/// without asking the PDS. An unsigned one's is a claim, capped by the signed commit time: once
/// the commit is older than proof_ttl, the node asks the PDS itself.
#[test]
fn an_online_node_decides_from_a_signed_publication_without_asking_the_pds() {
    let env = env();
    let w = world("fleet3");
    // The commit ages past proof_ttl (a property of the commit's signed time, not a wait for readiness).
    std::thread::sleep(std::time::Duration::from_secs(7));
    w.push(true);
    let ttl = "proof_ttl = \"6s\"\n";
    let signed = w.node(&format!("{}{ttl}", online_config(env)));
    let out = signed.command(&["cache", "refresh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pull = signed.pull(&w.image, &w.digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{}{}", pull.stdout, pull.stderr);
    assert_eq!(signed.audit().last().unwrap()["requests"], 0, "decided from the signed publication: {:?} {}", signed.audit(), pull.stderr);

    // The same bundle, unsigned: its fetch times are claims.
    w.push(false);
    let unsigned = w.node(&format!("{}{ttl}", online_config(env)));
    let out = unsigned.command(&["cache", "refresh"]);
    assert!(text(&out).contains("the publication is unsigned"), "{}", text(&out));
    let pull = unsigned.pull(&w.image, &w.digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{}{}", pull.stdout, pull.stderr);
    assert!(unsigned.audit().last().unwrap()["requests"].as_u64().unwrap() >= 1, "asked the PDS: {:?}", unsigned.audit());
}

/// Starts `watch` for `node` with `extra` arguments, its log at `log` (debug level).
fn watch(node: &Verifier, extra: &[&str], log: &std::path::Path) -> harness::Guard {
    let mut args: Vec<String> = vec!["watch".into(), "--run-for".into(), "180s".into()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    harness::spawn_tied(
        std::path::Path::new(env!("CARGO_BIN_EXE_atproto-verifier")),
        &args,
        &[("ATPROTO_VERIFIER_CONFIG", node.config.to_string_lossy().into_owned()), ("ATPROTO_VERIFIER_LOG", "debug".into())],
        log,
    )
}

/// Pulls (offline) until the exit code is `code`, at most `within`; returns how long it took.
fn until_pull(node: &Verifier, (image, digest): (&str, &str), code: i32, within: std::time::Duration, logs: &[&std::path::Path]) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        let pull = node.pull_without_network(image, digest);
        if pull.code == Some(code) {
            return started.elapsed();
        }
        let said: Vec<String> = logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect();
        assert!(started.elapsed() < within, "not exit {code} after {within:?}: {}{}\n{}", pull.stdout, pull.stderr, said.join("\n----\n"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Revocation across the fleet, end to end: the publisher (`watch --publish`, subscribed to the
/// real PDS's firehose) publishes at start and again on the record's deletion; a node that
/// reaches nothing but the registry (`watch_source = "registry"`, polled every second) imports
/// each publication, and its next pull is blocked within seconds of the deletion.
#[test]
fn a_deletion_reaches_a_node_that_reads_the_registry_within_seconds() {
    let env = env();
    let w = world("fleet4");
    let publisher_log = w.publisher.dir.path().join("publisher.log");
    let _publisher = watch(&w.publisher, &["--publish", &w.source, "--key", w.key.to_str().unwrap()], &publisher_log);
    let text = harness::wait_for_log(&publisher_log, "watch: published", std::time::Duration::from_secs(30));
    assert!(text.contains(&format!("watch: published {}", w.account.did)), "{text}");
    let text = harness::wait_for_log(&publisher_log, "subscribed to", std::time::Duration::from_secs(30));
    assert!(text.contains("subscribed to"), "{text}");

    let node = w.node("offline = true\nplc_directory = \"https://plc.invalid\"\nwatch_source = \"registry\"\nwatch_poll_interval = \"1s\"\n");
    let node_log = node.dir.path().join("watch.log");
    let _node_watch = watch(&node, &[], &node_log);
    until_pull(&node, (&w.image, &w.digest), 0, std::time::Duration::from_secs(30), &[&publisher_log, &node_log]);

    // A freshly pushed image: the publisher republishes and attaches the new record's proof to
    // the image; the node decides its first pull from what it imported, with no network at all.
    let repository = "fleet4.test/app";
    let fresh = env.registry.push_image(repository, "v2", "fleet4-fresh");
    env.pds.put_manifest(&w.account, &fresh, "app", "application/vnd.oci.image.manifest.v1+json");
    let text = harness::wait_for_log(&publisher_log, "attached sha256:", std::time::Duration::from_secs(30));
    assert!(text.contains(&format!("to {}/{repository}@{fresh}", env.registry.host)), "{text}");
    let (status, _, index) = harness::http(
        "GET",
        &format!("http://{}/v2/{repository}/manifests/{}", env.registry.host, fresh.replace(':', "-")),
        &[("accept", "application/vnd.oci.image.index.v1+json")],
        None,
    );
    assert_eq!(status, 200, "the artifact is listed under the image's sha256- tag: {}", String::from_utf8_lossy(&index));
    let fresh_image = format!("{}/{repository}:v2", env.registry.host);
    until_pull(&node, (&fresh_image, &fresh), 0, std::time::Duration::from_secs(30), &[&publisher_log, &node_log]);

    env.pds.delete_record(&w.account, &w.rkey);
    let blocked = until_pull(&node, (&w.image, &w.digest), 1, std::time::Duration::from_secs(30), &[&publisher_log, &node_log]);
    eprintln!("deleteRecord -> blocked on a node reading the registry: {blocked:?}");
    let text = harness::wait_for_log(&node_log, "revoked (from the fleet's registry)", std::time::Duration::from_secs(5));
    assert!(text.contains("revoked (from the fleet's registry)"), "{text}");
}
