//! The verifier under the real containerd (2.2 and 2.4, built by `install.sh`): pulls by ctr
//! (transfer service) and by the CRI (crictl), the settings that make CRI skip verifiers, what
//! `doctor` says about each containerd it is pointed at, and budgets. Every test decides by
//! what containerd did (image stored or not, the client's error), never by reading logs by eye.

mod daemon;

#[allow(dead_code, unused_imports)]
#[path = "../integration/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use daemon::{Containerd, Setup, VERSIONS};
use harness::{Account, Env, env};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The verifier's side: config.toml, trust policy and audit log in a temp dir.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Node {
    /// Trusts `signers`: images under `<registry>/audit/` are audited, everything else
    /// on the registry must be signed.
    fn new(env: &Env, signers: &[&Account], extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut policy = String::from("version: \"1.0\"\ntrustedDIDs:\n");
        for a in signers {
            policy.push_str(&format!("  {}: {{ name: {:?} }}\n", a.did, a.handle));
        }
        let host = &env.registry.host;
        policy.push_str(&format!(
            "policies:\n  - name: audited\n    scope: \"{host}/audit/**\"\n    require: {{ signature: true }}\n    action: audit\n  - name: signed\n    scope: \"{host}/**\"\n    require: {{ signature: true }}\n    action: enforce\ndefault: {{ action: enforce, require: {{ signature: true }} }}\n"
        ));
        let policy_path = dir.path().join("trust-policy.yaml");
        std::fs::write(&policy_path, policy).unwrap();
        let config = dir.path().join("config.toml");
        let defaults = format!(
            "policy = {policy_path:?}\ncache_dir = {:?}\naudit_log = {:?}\nplc_directory = {:?}\nhandle_resolver = {:?}\nbudget = \"5s\"\nproof_ttl = \"0s\"\n",
            dir.path().join("cache"),
            dir.path().join("audit.jsonl"),
            env.pds.plc,
            env.pds.pds
        );
        // `extra` overrides a default key of the same name.
        let key = |line: &str| line.split('=').next().unwrap_or_default().trim().to_owned();
        let overridden: Vec<String> = extra.lines().map(key).collect();
        let mut text: String = defaults.lines().filter(|l| !overridden.contains(&key(l))).map(|l| format!("{l}\n")).collect();
        text.push_str(extra);
        std::fs::write(&config, text).unwrap();
        Node { dir, config }
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// `doctor --live`: asks `containerd` to pull `image` (which the policy must block).
    fn doctor_live(&self, containerd: &Containerd, image: &str) -> (Option<i32>, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["doctor", "--config", self.config.to_str().unwrap(), "--containerd-config", containerd.config.to_str().unwrap(), "--live", image])
            .arg("--address")
            .arg(&containerd.socket)
            .arg("--ctr")
            .arg(daemon::ctr_bin(&containerd.version))
            .arg("--hosts-dir")
            .arg(&containerd.hosts_dir)
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `doctor` against `containerd` (its config and socket), without --live: (exit code, report).
    fn doctor_live_free(&self, containerd: &Containerd) -> (Option<i32>, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["doctor", "--config", self.config.to_str().unwrap(), "--containerd-config", containerd.config.to_str().unwrap()])
            .arg("--address")
            .arg(&containerd.socket)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `doctor` against a containerd config: (exit code, report).
    fn doctor(&self, containerd_config: &Path) -> (Option<i32>, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["doctor", "--config", self.config.to_str().unwrap(), "--containerd-config", containerd_config.to_str().unwrap()])
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn setup<'a>(version: &'a str, env: &'a Env, node: &'a Node) -> Setup<'a> {
    Setup { version, registry: &env.registry.host, verifier_config: &node.config, ..Setup::default() }
}

/// A signed image: pushed, and its record written by `account`.
fn signed(env: &Env, account: &Account, repository: &str, tag: &str) -> (String, String) {
    let digest = env.registry.push_image(repository, tag, &format!("{repository}-{tag}"));
    let rkey = env.pds.put_manifest(account, &digest, repository.rsplit('/').next().unwrap(), OCI_MANIFEST);
    (format!("{}/{repository}:{tag}", env.registry.host), rkey)
}

fn unsigned(env: &Env, repository: &str, tag: &str) -> String {
    env.registry.push_image(repository, tag, &format!("{repository}-{tag}-unsigned"));
    format!("{}/{repository}:{tag}", env.registry.host)
}

#[test]
fn ctr_pulls_through_the_transfer_service_are_decided_by_the_verifier() {
    let env = env();
    for version in VERSIONS {
        let v = version.replace('.', "");
        let alice = env.pds.create_account(&format!("ctra{v}"));
        let bob = env.pds.create_account(&format!("ctrb{v}"));
        let node = Node::new(env, &[&alice], "");
        let containerd = Containerd::start(&setup(version, env, &node));
        // A second verifier that records what containerd passes (and admits): the contract as
        // observed, per version (README's table).
        let record = containerd.dir.path().join("argv.log");
        let recorder = containerd.bin_dir.join("zz-record-argv");
        std::fs::write(&recorder, format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> {0:?}\ncat >> {0:?}\nexit 0\n", record)).unwrap();
        std::fs::set_permissions(&recorder, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

        // Signed by a trusted DID: admitted and stored.
        let (image, rkey) = signed(env, &alice, &format!("ctr{v}/app"), "v1");
        let pull = containerd.ctr_pull(&image);
        assert!(pull.ok, "{version}: {pull}\n{}", containerd.log());
        assert!(containerd.has_image("default", &image), "{version}");
        let seen = std::fs::read_to_string(&record).unwrap();
        let digest = node.audit().last().unwrap()["digest"].as_str().unwrap().to_owned();
        let argv = seen.lines().next().unwrap();
        assert_eq!(argv, format!("-name {image} -digest {digest} -stdin-media-type application/vnd.oci.descriptor.v1+json"), "{version}: argv");
        let descriptor: serde_json::Value = serde_json::from_str(seen.lines().nth(1).unwrap()).unwrap();
        assert_eq!(
            (descriptor["digest"].as_str(), descriptor["mediaType"].as_str()),
            (Some(digest.as_str()), Some(OCI_MANIFEST)),
            "{version}: stdin is one descriptor"
        );
        std::fs::remove_file(&recorder).unwrap();

        // The record is deleted: the next pull is blocked, and ctr's error carries our reason.
        env.pds.delete_record(&alice, &rkey);
        containerd.ctr(&["image", "rm", &image]);
        let pull = containerd.ctr_pull(&image);
        assert!(!pull.ok && pull.text.contains("record-deleted"), "{version}: {pull}");
        assert!(!containerd.has_image("default", &image), "{version}: a blocked image is not stored");

        // Unsigned, in an enforce scope.
        let image = unsigned(env, &format!("ctr{v}/unsigned"), "v1");
        let pull = containerd.ctr_pull(&image);
        assert!(!pull.ok && pull.text.contains("record-not-found"), "{version}: {pull}");

        // Signed by someone the policy does not trust.
        let (image, _) = signed(env, &bob, &format!("ctr{v}/bobs"), "v1");
        let pull = containerd.ctr_pull(&image);
        assert!(!pull.ok && pull.text.contains("image verifier") && pull.text.contains("blocked"), "{version}: {pull}");

        // Audit scope: admitted, and the audit line says what would have been rejected.
        let image = unsigned(env, &format!("audit/ctr{v}"), "v1");
        let pull = containerd.ctr_pull(&image);
        assert!(pull.ok, "{version}: {pull}");
        let audit = node.audit();
        let line = audit.iter().rev().find(|l| l["name"] == image.as_str()).unwrap_or_else(|| panic!("{version}: no audit line for {image}: {audit:?}"));
        assert_eq!((line["outcome"].as_str(), line["reason"].as_str()), (Some("admitted (audit)"), Some("record-not-found")), "{line}");

        // A multi-arch index: decided once, on the index digest containerd hands over.
        let repository = format!("ctr{v}/multi");
        let index = env.registry.push_index(&repository, "v1", &format!("multi{v}"));
        env.pds.put_manifest(&alice, &index, "multi", "application/vnd.oci.image.index.v1+json");
        let image = format!("{}/{repository}:v1", env.registry.host);
        let pull = containerd.ctr_pull(&image);
        assert!(pull.ok, "{version}: {pull}");
        let decisions: Vec<_> = node.audit().into_iter().filter(|l| l["name"] == image.as_str()).collect();
        assert_eq!(decisions.len(), 1, "{version}: one decision per pull: {decisions:?}");
        assert_eq!(decisions[0]["digest"].as_str(), Some(index.as_str()), "{version}");
    }
}

/// Each setting containerd's `CheckLocalImagePullConfigs` (2.2.9 and 2.4.2) treats as a reason
/// to pull without the transfer service, as an operator would write it (v3 layout unless
/// named), with the word `doctor` must name.
const LOCAL_PULL_TRIGGERS: [(&str, &str, &str); 9] = [
    (
        "use_local_image_pull",
        "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  use_local_image_pull = true\n",
        "use_local_image_pull = true",
    ),
    (
        "disable_snapshot_annotations",
        "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  disable_snapshot_annotations = false\n",
        "disable_snapshot_annotations = false",
    ),
    (
        "discard_unpacked_layers",
        "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  discard_unpacked_layers = true\n",
        "discard_unpacked_layers = true",
    ),
    (
        "mirrors (v3 layout)",
        "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  [plugins.\"io.containerd.cri.v1.images\".registry.mirrors.\"REGISTRY\"]\n    endpoint = [\"http://REGISTRY\"]\n",
        "registry.mirrors",
    ),
    (
        "configs",
        "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  [plugins.\"io.containerd.cri.v1.images\".registry.configs.\"REGISTRY\".tls]\n    insecure_skip_verify = true\n",
        "registry.configs",
    ),
    (
        "auths",
        "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  [plugins.\"io.containerd.cri.v1.images\".registry.auths.\"http://REGISTRY\"]\n    username = \"someone\"\n",
        "registry.auths",
    ),
    (
        "max_concurrent_downloads",
        "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  max_concurrent_downloads = 5\n",
        "max_concurrent_downloads = 5",
    ),
    (
        "image_pull_with_sync_fs",
        "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n  image_pull_with_sync_fs = true\n",
        "image_pull_with_sync_fs = true",
    ),
    // The same mirrors in a version 2 file imported by the main config (migrated by containerd;
    // no config_path, which containerd refuses beside mirrors).
    (
        "mirrors (v2 layout, imported)",
        "imports = [\"conf.d/*.toml\"]\n[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n",
        "registry.mirrors",
    ),
];

#[test]
fn cri_pulls_are_verified_and_every_local_pull_trigger_bypasses_verifiers_and_doctor_says_so() {
    let env = env();
    for version in VERSIONS {
        let v = version.replace('.', "");
        let alice = env.pds.create_account(&format!("cria{v}"));
        let node = Node::new(env, &[&alice], "");

        // The good config: CRI pulls go through the transfer service and the verifier.
        let containerd = Containerd::start(&Setup { cri: true, ..setup(version, env, &node) });
        let (image, _) = signed(env, &alice, &format!("cri{v}/app"), "v1");
        let pull = containerd.crictl_pull(&image);
        assert!(pull.ok && containerd.has_image("k8s.io", &image), "{version}: {pull}\n{}", containerd.log());
        let image = unsigned(env, &format!("cri{v}/unsigned"), "v1");
        let pull = containerd.crictl_pull(&image);
        assert!(!pull.ok && pull.text.contains("record-not-found"), "{version}: {pull}");
        let (code, report) = node.doctor(&containerd.config);
        assert_eq!(code, Some(0), "{version}: doctor must be green when verifiers run:\n{report}");
        drop(containerd);

        for (i, (name, section, named)) in LOCAL_PULL_TRIGGERS.iter().enumerate() {
            let extra = section.replace("REGISTRY", &env.registry.host);
            let files = if name.contains("v2 layout") {
                vec![(
                    "conf.d/10-mirrors.toml",
                    format!(
                        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{0}\"]\n  endpoint = [\"http://{0}\"]\n",
                        env.registry.host
                    ),
                )]
            } else {
                Vec::new()
            };
            let containerd = Containerd::start(&Setup { cri: true, extra: &extra, files: &files, ..setup(version, env, &node) });
            check_trigger(env, &node, &containerd, version, &v, i, name, named);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_trigger(env: &Env, node: &Node, containerd: &Containerd, version: &str, v: &str, i: usize, name: &&str, named: &str) {
    // An unsigned image is pulled: no verifier ran.
    let image = unsigned(env, &format!("trig{v}/t{i}"), "v1");
    let pull = containerd.crictl_pull(&image);
    assert!(pull.ok, "{version} {name}: the local pull should admit the unsigned image (no verifier): {pull}\n{}", containerd.log());
    let log = containerd.log();
    assert!(!log.lines().any(|l| l.contains("Verifying image pull") && l.contains(&image)), "{version} {name}: a verifier was asked");
    if *name != "use_local_image_pull" {
        assert!(log.contains("Falling back to local image pull mode"), "{version} {name}: containerd did not say it fell back");
    }
    // And doctor is red, naming the setting.
    let (code, report) = node.doctor(&containerd.config);
    assert_eq!(code, Some(1), "{version} {name}: doctor must be red:\n{report}");
    assert!(report.contains(named) && report.contains("local image pull"), "{version} {name}:\n{report}");
}

/// `doctor` red ⇔ containerd admits an unsigned image: each way the hook silently does nothing.
#[test]
fn doctor_tells_the_truth_about_the_containerd_it_is_pointed_at() {
    let env = env();
    // containerd's default bin_dir must not exist on the test machine (the tests never create it).
    assert!(
        !Path::new(containerd_config_default_bin_dir()).exists(),
        "{} exists on this machine: the test needs a node without it",
        containerd_config_default_bin_dir()
    );
    for version in VERSIONS {
        let v = version.replace('.', "");
        let alice = env.pds.create_account(&format!("doc{v}"));
        let node = Node::new(env, &[&alice], "");
        let cases: [(&str, Setup); 2] = [
            ("no bindir section", Setup { no_bindir_section: true, ..setup(version, env, &node) }),
            (
                "bindir disabled",
                Setup {
                    extra: "disabled_plugins = [\"io.containerd.nri.v1.nri\", \"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \"io.containerd.cri.v1.runtime\", \"io.containerd.image-verifier.v1.bindir\"]\n",
                    ..setup(version, env, &node)
                },
            ),
        ];
        for (i, (name, case)) in cases.into_iter().enumerate() {
            let containerd = Containerd::start(&case);
            let image = unsigned(env, &format!("doc{v}/case{i}"), "v1");
            let pull = containerd.ctr_pull(&image);
            // Observed: with the bindir plugin disabled, 2.2 cannot load its transfer service at
            // all (every ctr pull fails); 2.4 loads it and pulls with no verifier.
            let transfer_broken = name == "bindir disabled" && version.starts_with("v2.2");
            if transfer_broken {
                assert!(!pull.ok && pull.text.contains("unknown service containerd.services.transfer"), "{version} {name}: {pull}");
            } else {
                assert!(pull.ok, "{version} {name}: containerd runs no verifier here: {pull}");
            }
            let (code, report) = node.doctor(&containerd.config);
            assert_eq!(code, Some(1), "{version} {name}: doctor must be red:\n{report}");
            let live = node.doctor_live(&containerd, &unsigned(env, &format!("doc{v}/live{i}"), "v1"));
            let expected = if transfer_broken { "failed before any verifier decided" } else { "no verifier blocked it" };
            assert!(live.0 == Some(1) && live.1.contains(expected), "{version} {name}: doctor --live must be red:\n{}", live.1);
        }

        // The packaged drop-in, imported from conf.d exactly as the package installs it (only
        // bin_dir points into the test's directory): verifiers run, doctor and --live are green.
        let fragment = std::fs::read_to_string(daemon::repo_root().join("packaging/containerd/atproto-verifier.toml")).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let bin_dir = scratch.path().join("image-verifier/bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_atproto-verifier"), bin_dir.join("atproto-verifier")).unwrap();
        let fragment = fragment.replace("/opt/containerd/image-verifier/bin", bin_dir.to_str().unwrap());
        let files = [("conf.d/atproto-verifier.toml", fragment)];
        let containerd =
            Containerd::start(&Setup { no_bindir_section: true, extra: "imports = [\"conf.d/*.toml\"]\n", files: &files, ..setup(version, env, &node) });
        let image = unsigned(env, &format!("doc{v}/dropin"), "v1");
        let pull = containerd.ctr_pull(&image);
        assert!(!pull.ok && pull.text.contains("record-not-found"), "{version} drop-in: {pull}\n{}", containerd.log());
        let (code, report) = node.doctor(&containerd.config);
        assert_eq!(code, Some(0), "{version} drop-in: doctor must be green:\n{report}");
        assert!(report.contains("imported"), "{report}");
        let live = node.doctor_live(&containerd, &unsigned(env, &format!("doc{v}/dropin-live"), "v1"));
        assert_eq!(live.0, Some(0), "{version} drop-in: doctor --live:\n{}", live.1);
        // A bin_dir entry that cannot run blocks every pull; doctor says so.
        std::fs::write(bin_dir.join("notes.txt"), "not a verifier").unwrap();
        let (code, report) = node.doctor(&containerd.config);
        assert!(code == Some(1) && report.contains("notes.txt is not an executable file"), "{report}");
        let pull = containerd.ctr_pull(&unsigned(env, &format!("doc{v}/nonexec"), "v1"));
        assert!(!pull.ok, "{version}: a non-executable bin_dir entry fails every pull: {pull}");
        std::fs::remove_file(bin_dir.join("notes.txt")).unwrap();
        std::fs::remove_file(bin_dir.join("atproto-verifier")).unwrap();
        let (code, report) = node.doctor(&containerd.config);
        assert!(code == Some(1) && report.contains("is empty"), "{report}");
    }
}

fn containerd_config_default_bin_dir() -> &'static str {
    "/opt/containerd/image-verifier/bin"
}

#[test]
fn doctor_changes_nothing_and_says_what_it_did_not_find() {
    let env = env();
    let node = Node::new(env, &[], "");
    // The verifier config names a cache that does not exist: doctor must not create it.
    let config = node.dir.path().join("fresh.toml");
    let cache = node.dir.path().join("never-created");
    std::fs::write(&config, std::fs::read_to_string(&node.config).unwrap().replace(&format!("{:?}", node.dir.path().join("cache")), &format!("{cache:?}")))
        .unwrap();
    let containerd = Containerd::start(&setup(VERSIONS[1], env, &node));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["doctor", "--config", config.to_str().unwrap(), "--containerd-config", containerd.config.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!cache.exists(), "doctor created {}", cache.display());
    assert!(report.contains("does not exist yet"), "{report}");
    // With CRI disabled, doctor does not report a CRI pull mode as if it applied.
    assert!(report.contains("the CRI plugin is disabled"), "{report}");
    // No verifier config at the default path: said, not "loads".
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
        .args(["doctor", "--containerd-config", containerd.config.to_str().unwrap()])
        .env("ATPROTO_VERIFIER_CONFIG", node.dir.path().join("absent.toml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!report.contains("absent.toml loads"), "{report}");
}

#[test]
fn budgets_and_failures_under_containerd() {
    let env = env();
    for version in VERSIONS {
        let v = version.replace('.', "");
        // A PDS of its own, so it can be stopped.
        let mut own = harness::Pds::start();
        let hana = own.create_account(&format!("hana{v}"));
        let digest = env.registry.push_image(&format!("budget{v}/app"), "v1", &format!("budget{v}"));
        own.put_manifest(&hana, &digest, "app", OCI_MANIFEST);
        let image = format!("{}/budget{v}/app:v1", env.registry.host);
        let extra = format!("plc_directory = {:?}\nhandle_resolver = {:?}\ndid_ttl = \"0s\"\nmax_stale = \"1h\"\n", own.plc, own.pds);
        let warm = Node::new(env, &[&hana], &extra);
        let cold = Node::new(env, &[&hana], &extra);
        let warm_containerd = Containerd::start(&setup(version, env, &warm));
        let cold_containerd = Containerd::start(&setup(version, env, &cold));
        assert!(warm_containerd.ctr_pull(&image).ok, "{version}");
        own.stop();
        // Warm cache, PDS gone: admitted from cache within max_stale, and the reason says so.
        warm_containerd.ctr(&["image", "rm", &image]);
        assert!(warm_containerd.ctr_pull(&image).ok, "{version}: warm cache admits");
        let line = warm.audit().into_iter().last().unwrap();
        assert!(line["message"].as_str().unwrap().contains("past its TTL"), "{line}");
        // Cold cache: blocked with a network reason, never a signature one.
        let started = std::time::Instant::now();
        let pull = cold_containerd.ctr_pull(&image);
        assert!(!pull.ok && pull.text.contains("network-error") && !pull.text.contains("signature-invalid"), "{version}: {pull}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{version}: decided within per_verifier_timeout");
    }
}

#[test]
fn our_budget_decides_before_containerd_kills_and_a_hanging_verifier_fails_the_pull() {
    let env = env();
    // A PLC directory that never answers.
    let silent = harness::FakeServer::start(Box::new(|_| {
        std::thread::sleep(std::time::Duration::from_secs(30));
        harness::FakeResponse::new(500, "text/plain", "")
    }));
    for version in VERSIONS {
        let v = version.replace('.', "");
        let ivy = env.pds.create_account(&format!("ivy{v}"));
        let (image, _) = signed(env, &ivy, &format!("slow{v}/app"), "v1");
        let node = Node::new(env, &[&ivy], &format!("plc_directory = {:?}\nbudget = \"2s\"\nrequest_timeout = \"1s\"\n", silent.url));
        let containerd = Containerd::start(&Setup { per_verifier_timeout: "4s", ..setup(version, env, &node) });
        let pull = containerd.ctr_pull(&image);
        // Our verifier answered (exit 2, a network reason): containerd did not have to kill it.
        let ours = pull.text.contains("verifier atproto-verifier rejected image (exit code 2)")
            && (pull.text.contains("network-error") || pull.text.contains("deadline-exceeded"));
        assert!(!pull.ok && ours, "{version}: our verifier answers within its budget, with its reason: {pull}");
        // A verifier that hangs is killed by containerd at per_verifier_timeout: the pull fails.
        let hang = containerd.bin_dir.join("zz-hangs");
        std::fs::write(&hang, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::remove_file(containerd.bin_dir.join("atproto-verifier")).unwrap();
        let started = std::time::Instant::now();
        let pull = containerd.ctr_pull(&unsigned(env, &format!("slow{v}/other"), "v1"));
        assert!(!pull.ok, "{version}: {pull}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{version}: killed at the timeout");
    }
}

#[test]
fn twenty_concurrent_pulls_on_a_cold_cache_fetch_each_did_document_once() {
    let env = env();
    // Counts the requests for DID documents on their way to the real PLC directory.
    let plc = env.pds.plc.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = std::sync::Arc::clone(&seen);
    let proxy = harness::FakeServer::start(Box::new(move |r| {
        log.lock().unwrap().push(r.path.clone());
        let (status, _, body) = harness::http(&r.method, &format!("{plc}{}", r.path), &[], None);
        harness::FakeResponse::new(status, "application/json", body)
    }));
    let version = VERSIONS[1];
    let kai = env.pds.create_account("kai20");
    let images: Vec<String> = (0..20).map(|i| signed(env, &kai, &format!("many/app{i}"), "v1").0).collect();
    let node = Node::new(env, &[&kai], &format!("plc_directory = {:?}\n", proxy.url));
    let containerd = Containerd::start(&setup(version, env, &node));
    let pulls: Vec<_> = std::thread::scope(|s| {
        images.iter().map(|image| s.spawn(|| containerd.ctr_pull(image))).collect::<Vec<_>>().into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (image, pull) in images.iter().zip(&pulls) {
        assert!(pull.ok, "{image}: {pull}");
    }
    let documents = seen.lock().unwrap().iter().filter(|p| p.trim_start_matches('/') == kai.did).count();
    assert_eq!(documents, 1, "one fetch of the DID document for 20 pulls: {:?}", seen.lock().unwrap());
}

/// Containers started by a test, killed and deleted when dropped (before the containerd that
/// runs them: declare it after), so no shim or process outlives the test.
struct Started<'a> {
    containerd: &'a Containerd,
    ids: Vec<String>,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            self.containerd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_secs(10) && self.containerd.ctr(&["task", "rm", "-f", id]).status.code() != Some(0) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            self.containerd.ctr(&["container", "rm", id]);
        }
    }
}

#[test]
fn a_revoked_image_leaves_the_store_within_2_s_of_the_watcher_learning_it_and_what_still_runs_it_is_reported() {
    let env = env();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_atproto-verifier"));
    for version in VERSIONS {
        let v = version.replace('.', "");
        let alice = env.pds.create_account(&format!("rev{v}"));
        let node = Node::new(env, &[&alice], "on_revoke = \"remove-image\"\n");
        let containerd = Containerd::start(&setup(version, env, &node));
        // containerd's socket is known once it runs; the verifier reads its config at each use.
        let metrics = node.dir.path().join("watch.prom");
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config.push_str(&format!("containerd_socket = {:?}\nwatch_metrics_file = {metrics:?}\n", containerd.socket));
        std::fs::write(&node.config, config).unwrap();

        let repository = format!("revoke{v}/app");
        let digest = env.registry.push_runnable_image(&repository, "v1");
        let rkey = env.pds.put_manifest(&alice, &digest, "app", OCI_MANIFEST);
        let image = format!("{}/{repository}:v1", env.registry.host);
        let pull = containerd.ctr_pull(&image);
        assert!(pull.ok, "{version}: {pull}\n{}", containerd.log());
        let id = format!("revoked-{v}");
        let run = containerd.ctr(&["run", "-d", "--snapshotter", "native", &image, &id]);
        let _started = Started { containerd: &containerd, ids: vec![id.clone()] };
        assert!(
            run.status.success(),
            "{version}: ctr run: {}{}\n{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr),
            containerd.log()
        );
        let running = || String::from_utf8_lossy(&containerd.ctr(&["task", "ls"]).stdout).lines().any(|l| l.starts_with(&id) && l.contains("RUNNING"));
        let t = std::time::Instant::now();
        while !running() {
            assert!(t.elapsed() < std::time::Duration::from_secs(30), "{version}: the container never ran\n{}", containerd.log());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Before any revocation: nothing reported, nothing removed.
        let coverage = std::process::Command::new(bin).args(["coverage", "node", "--config", node.config.to_str().unwrap()]).output().unwrap();
        let said = String::from_utf8_lossy(&coverage.stdout).into_owned();
        assert_eq!(coverage.status.code(), Some(0), "{version}: {said}{}", String::from_utf8_lossy(&coverage.stderr));
        assert!(said.contains(&format!("admitted   {image}@{digest}")), "{version}: {said}");

        let log = node.dir.path().join("watch.log");
        let _watch = harness::spawn_tied(bin, &["watch".into(), "--config".into(), node.config.display().to_string()], &[], &log);
        let text = harness::wait_for_log(&log, "subscribed to", std::time::Duration::from_secs(60));
        assert!(text.contains("subscribed to"), "{version}: {text}");
        // The watcher's first survey is done (counted) before the record goes.
        let surveyed = || std::fs::read_to_string(&metrics).unwrap_or_default().contains("atproto_verifier_watch_node_surveys_total{result=\"done\"} 1");
        let t = std::time::Instant::now();
        while !surveyed() {
            assert!(t.elapsed() < std::time::Duration::from_secs(30), "{version}: no survey: {}", std::fs::read_to_string(&log).unwrap_or_default());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(containerd.has_image("default", &image), "{version}: an admitted image stays");

        env.pds.delete_record(&alice, &rkey);
        let t = std::time::Instant::now();
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("revoked (the record is deleted)") {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "{version}: the watcher never learned: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let learned = std::time::Instant::now();
        while containerd.has_image("default", &image) {
            assert!(
                learned.elapsed() < std::time::Duration::from_secs(2),
                "{version}: still in the store 2 s after the watcher learned: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let gone_after = learned.elapsed();
        eprintln!("{version}: image removed {gone_after:?} after the watcher learned of the deletion");
        // The running container is reported once, by id, and counted; nothing is killed.
        let text = harness::wait_for_log(&log, "still runs", std::time::Duration::from_secs(10));
        assert!(text.contains(&format!("container default {id} (task running) still runs {image}")), "{version}: {text}");
        assert!(running(), "{version}: a running container is never killed");
        let t = std::time::Instant::now();
        while !std::fs::read_to_string(&metrics).unwrap_or_default().contains("atproto_verifier_watch_revoked_containers_running 1") {
            assert!(t.elapsed() < std::time::Duration::from_secs(15), "{version}: {}", std::fs::read_to_string(&metrics).unwrap_or_default());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let metrics_text = std::fs::read_to_string(&metrics).unwrap();
        assert!(metrics_text.contains("atproto_verifier_watch_images_removed_total 1"), "{version}: {metrics_text}");
        let removed = node.audit().into_iter().find(|r| r["event"] == "image-removed").expect("an audit record of the removal");
        assert_eq!(
            (removed["image"].as_str(), removed["digest"].as_str(), removed["namespace"].as_str()),
            (Some(image.as_str()), Some(digest.as_str()), Some("default"))
        );
        // coverage node lists it, and fails.
        let coverage = std::process::Command::new(bin).args(["coverage", "node", "--config", node.config.to_str().unwrap()]).output().unwrap();
        let said = String::from_utf8_lossy(&coverage.stdout).into_owned();
        assert_eq!(coverage.status.code(), Some(1), "{version}: {said}");
        assert!(said.contains(&format!("running   container default {id} (task running): {image} ({digest}), whose record is deleted")), "{version}: {said}");
        // doctor fails on it, naming the container.
        let (code, report) = node.doctor_live_free(&containerd);
        assert_eq!(code, Some(1), "{version}: {report}");
        assert!(report.contains(&format!("container default {id} (task running) still runs {image}")), "{version}: {report}");
        // The next start cannot come from the store: it must pull, and the pull is blocked.
        let again = containerd.ctr(&["run", "--rm", "--snapshotter", "native", &image, &format!("again-{v}"), "/busybox", "true"]);
        assert!(!again.status.success(), "{version}: a container started from a removed image");
        assert!(String::from_utf8_lossy(&again.stderr).contains("not found"), "{version}: {}", String::from_utf8_lossy(&again.stderr));
        let pull = containerd.ctr_pull(&image);
        assert!(!pull.ok && pull.text.contains("record-deleted"), "{version}: {pull}");
    }
}

#[test]
fn a_pull_decided_revoked_removes_the_same_digest_already_in_the_store_in_every_namespace() {
    let env = env();
    let version = VERSIONS[0];
    let alice = env.pds.create_account("pullrevoke");
    let node = Node::new(env, &[&alice], "on_revoke = \"remove-image\"\n");
    let containerd = Containerd::start(&setup(version, env, &node));
    let mut config = std::fs::read_to_string(&node.config).unwrap();
    config.push_str(&format!("containerd_socket = {:?}\n", containerd.socket));
    std::fs::write(&node.config, config).unwrap();
    // One digest under two tags, in two namespaces.
    let digest = env.registry.push_image("pullrevoke/app", "v1", "pullrevoke");
    let manifest = {
        let (_, _, body) = harness::http("GET", &format!("http://{}/v2/pullrevoke/app/manifests/v1", env.registry.host), &[("accept", OCI_MANIFEST)], None);
        body
    };
    env.registry.push_manifest("pullrevoke/app", "v2", OCI_MANIFEST, &manifest);
    let rkey = env.pds.put_manifest(&alice, &digest, "app", OCI_MANIFEST);
    let (v1, v2) = (format!("{}/pullrevoke/app:v1", env.registry.host), format!("{}/pullrevoke/app:v2", env.registry.host));
    assert!(containerd.ctr_pull(&v1).ok, "{}", containerd.log());
    let other = containerd.ctr(&["--namespace", "other", "image", "pull", "--hosts-dir", containerd.hosts_dir.to_str().unwrap(), &v1]);
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    assert!(containerd.has_image("default", &v1) && containerd.has_image("other", &v1));
    // No watcher: the pull of the other tag is what learns of the deletion.
    env.pds.delete_record(&alice, &rkey);
    let pull = containerd.ctr_pull(&v2);
    assert!(!pull.ok && pull.text.contains("record-deleted"), "{pull}");
    assert!(!containerd.has_image("default", &v1), "the same digest under another tag stays in the store");
    assert!(!containerd.has_image("other", &v1), "the same digest in another namespace stays in the store");
    let removed: Vec<serde_json::Value> = node.audit().into_iter().filter(|r| r["event"] == "image-removed").collect();
    assert_eq!(removed.len(), 2, "{removed:?}");
}
