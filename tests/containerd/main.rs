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
use harness::{env, Account, Env};

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
        std::fs::write(
            &config,
            format!(
                "policy = {policy_path:?}\ncache_dir = {:?}\naudit_log = {:?}\nplc_directory = {:?}\nhandle_resolver = {:?}\nbudget = \"5s\"\nproof_ttl = \"0s\"\n{extra}",
                dir.path().join("cache"),
                dir.path().join("audit.jsonl"),
                env.pds.plc,
                env.pds.pds
            ),
        )
        .unwrap();
        Node { dir, config }
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
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

        // Signed by a trusted DID: admitted and stored.
        let (image, rkey) = signed(env, &alice, &format!("ctr{v}/app"), "v1");
        let pull = containerd.ctr_pull(&image);
        assert!(pull.ok, "{version}: {pull}\n{}", containerd.log());
        assert!(containerd.has_image("default", &image), "{version}");

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
