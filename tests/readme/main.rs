//! Every command in README.md runs here: each ```sh block is extracted and executed, in the
//! environment its section describes.
//!
//! - The newcomer's block runs `./scripts/demo` (the other line, `./scripts/test`, is the
//!   command running this test).
//! - Installing and wiring a node run as root inside a mount namespace whose /etc, /opt, /usr
//!   and /var are overlays (writes land in a scratch directory; the machine is untouched):
//!   `dpkg -i` installs the .deb from dist/ for real, `install -D` writes where the README says.
//!   `systemctl` is the one command recorded instead of run (no init system in CI).
//! - Air-gapped and first-policy blocks run against a loopback world (the reference PDS + PLC and
//!   docker-registry of tests/integration), with the README's example identities mapped onto it:
//!   `alice.bsky.social` → a loopback account, its DID, `atcr.io/` → the loopback registry.
//!
//! A ```sh block in any other section fails the test: give it an environment here.

#[allow(dead_code, unused_imports)]
#[path = "../integration/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

struct Block {
    section: String,
    line: usize,
    text: String,
}

/// The ```sh blocks of README.md, unindented, with their section (the last `## ` heading).
fn sh_blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut current: Option<(usize, String, usize)> = None; // (line, text, indent)
    for (i, line) in readme.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((start, mut text, ind)) = current.take() {
            if trimmed.starts_with("```") {
                out.push(Block { section: section.clone(), line: start, text });
            } else {
                text.push_str(line.get(ind..).unwrap_or(trimmed));
                text.push('\n');
                current = Some((start, text, ind));
            }
            continue;
        }
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading.to_owned();
        } else if trimmed == "```sh" {
            current = Some((i + 1, String::new(), indent));
        }
    }
    out
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Runs a block with bash (`-euo pipefail`), optionally inside the overlay sandbox.
fn run(block: &Block, script: &str, cwd: &Path, env: &[(&str, String)], sandbox: Option<&Path>) {
    let mut program = String::from("set -euo pipefail\n");
    let mut command = match sandbox {
        Some(root) => {
            let mut prelude = String::from("set -e\n");
            for d in ["etc", "opt", "usr", "var"] {
                let (up, work) = (root.join(format!("ov/{d}/up")), root.join(format!("ov/{d}/work")));
                std::fs::create_dir_all(&up).unwrap();
                std::fs::create_dir_all(&work).unwrap();
                prelude.push_str(&format!("mount -t overlay overlay -o lowerdir=/{d},upperdir={},workdir={} /{d}\n", up.display(), work.display()));
            }
            program = prelude + &program;
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--fork", "bash", "-c"]);
            c
        }
        None => {
            let mut c = Command::new("bash");
            c.arg("-c");
            c
        }
    };
    program.push_str(script);
    command.arg(&program).current_dir(cwd);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("bash and unshare (util-linux)");
    assert!(
        out.status.success(),
        "README.md line {} ({}), exit {:?}:\n{}\n--- stdout\n{}\n--- stderr\n{}",
        block.line,
        block.section,
        out.status.code(),
        script,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_command_in_the_readme_runs() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 6, "found {} sh blocks", blocks.len());
    let dist = root.join("dist");
    assert!(dist.join("SHA256SUMS").is_file(), "dist/ has no release artifacts: run scripts/release first (scripts/test does)");

    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    // The node: a home with the locally built binary where `cargo install` would put it, and a
    // recorder for systemctl.
    let home = s.join("home");
    std::fs::create_dir_all(home.join(".cargo/bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_atproto-verifier"), home.join(".cargo/bin/atproto-verifier")).unwrap();
    let shims = s.join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    let systemctl_log = s.join("systemctl.log");
    std::fs::write(shims.join("systemctl"), format!("#!/bin/sh\necho \"$*\" >> {systemctl_log:?}\n")).unwrap();
    std::fs::set_permissions(shims.join("systemctl"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", shims.display(), home.join(".cargo/bin").display());
    let node_env = vec![("HOME", home.display().to_string()), ("PATH", path.clone())];
    let sandbox = s.join("sandbox");
    let dist_copy = s.join("dist");
    std::fs::create_dir_all(&dist_copy).unwrap();
    for entry in std::fs::read_dir(&dist).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dist_copy.join(p.file_name().unwrap())).unwrap();
    }

    // The loopback world for the network examples.
    let env = harness::env();
    let alice = env.pds.create_account("alicereadme");
    let digest = env.registry.push_image(&format!("{}/app", alice.handle), "v1.4", "readme");
    env.pds.put_manifest(&alice, &digest, "app", "application/vnd.oci.image.manifest.v1+json");
    let host = &env.registry.host;
    let map = |text: &str| {
        text.replace("did:plc:ewvi7nxzyoun6zhxrhs64oiz", &alice.did).replace("alice.bsky.social", &alice.handle).replace("atcr.io/", &format!("{host}/"))
    };
    let work = s.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let policy = work.join("trust-policy.yaml");
    std::fs::write(
        &policy,
        format!("version: \"1.0\"\ntrustedDIDs:\n  {}: {{ name: alice }}\npolicies:\n  - name: ours\n    scope: \"{host}/**\"\n    require: {{ signature: true }}\n    action: enforce\n", alice.did),
    )
    .unwrap();
    let connected = work.join("connected.toml");
    std::fs::write(
        &connected,
        format!(
            "policy = {policy:?}\ncache_dir = {:?}\nplc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{host:?}]\n",
            work.join("connected-cache"),
            env.pds.plc,
            env.pds.pds
        ),
    )
    .unwrap();
    let offline = work.join("node.toml");
    std::fs::write(&offline, format!("offline = true\npolicy = {policy:?}\ncache_dir = {:?}\n", work.join("node-cache"))).unwrap();
    let with_config = |config: &Path| {
        let mut e = vec![("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", home.join(".cargo/bin").display()))];
        e.push(("ATPROTO_VERIFIER_CONFIG", config.display().to_string()));
        e
    };

    let mut air_gapped = 0;
    let mut fleet = 0;
    for block in &blocks {
        match block.section.as_str() {
            // The newcomer's two commands: the demo runs; `./scripts/test` is what runs this test.
            "" => {
                let script: String = block.text.lines().filter(|l| !l.trim_start().starts_with("./scripts/test")).map(|l| format!("{l}\n")).collect();
                assert!(script.contains("./scripts/demo"), "{script}");
                run(block, &script, &root, &[], None);
            }
            "Installing" => run(block, &block.text, &dist_copy, &node_env, Some(&sandbox)),
            "Wiring it into a containerd node (by hand)" => {
                run(block, &block.text, &root, &node_env, Some(&sandbox));
                let recorded = std::fs::read_to_string(&systemctl_log).unwrap_or_default();
                assert!(recorded.contains("restart containerd"), "systemctl was not asked to restart containerd: {recorded}");
            }
            "Air-gapped nodes" => {
                // First the connected machine, then the node (offline).
                let config = if air_gapped == 0 { &connected } else { &offline };
                run(block, &map(&block.text), &work, &with_config(config), None);
                air_gapped += 1;
            }
            "A first policy" => run(block, &map(&block.text), &work, &with_config(&connected), None),
            // The publisher's commands, on the connected machine (its key under the sandbox's /etc),
            // publishing to the loopback registry; the index is then there for nodes to read.
            "A fleet on the registry" => {
                let text = map(&block.text).replace("registry.example/", &format!("{host}/"));
                run(block, &text, &work, &with_config(&connected), Some(&sandbox));
                let (status, _, index) = harness::http(
                    "GET",
                    &format!("http://{host}/v2/atproto-verifier/bundles/manifests/index"),
                    &[("accept", "application/vnd.oci.image.index.v1+json")],
                    None,
                );
                assert_eq!(status, 200, "no index published: {}", String::from_utf8_lossy(&index));
                assert!(String::from_utf8_lossy(&index).contains(&alice.did), "the index does not list the DID");
                fleet += 1;
            }
            // The starter policies' own cases, from the repository root.
            "In CI" => run(block, &block.text, &root, &with_config(&connected), None),
            other => panic!("README.md line {}: a sh block in section {other:?} has no environment in tests/readme/main.rs", block.line),
        }
    }
    assert_eq!(air_gapped, 2, "the air-gapped walkthrough has its two command blocks");
    assert_eq!(fleet, 1, "the fleet section has its publisher's block");
    // The sandbox kept what the blocks installed, and only there.
    assert!(sandbox.join("ov/opt/up/containerd/image-verifier/bin/atproto-verifier").exists());
    assert!(sandbox.join("ov/etc/up/atproto-verifier/config.toml").exists());
}
