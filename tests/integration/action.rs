//! The CI integrations, run as CI runs them: packaging/ci/verify-images.sh (the file the GitHub
//! Action at the repository root runs, and the GitLab template downloads) against the loopback
//! world (reference PDS + PLC, docker-registry) and a loopback release server holding the binary
//! under test with its SHA256SUMS: a signed image passes; an unsigned and a revoked one fail the
//! job with their reason codes, as annotations and in the outputs; a binary that does not match
//! the release's checksums is never run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::{Env, FakeResponse, FakeServer, Verifier, env, policy, repo_root, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn arch() -> &'static str {
    if cfg!(target_arch = "aarch64") { "aarch64" } else { "x86_64" }
}

/// A release directory served on loopback: `/v<version>/<file>`.
struct Release {
    dir: tempfile::TempDir,
    server: FakeServer,
}

impl Release {
    /// The binary under test as the release's static binary for this machine, the CI script,
    /// and SHA256SUMS over both.
    fn start() -> Release {
        let dir = tempfile::tempdir().unwrap();
        let binary = std::fs::read(env!("CARGO_BIN_EXE_atproto-verifier")).unwrap();
        let script = std::fs::read(repo_root().join("packaging/ci/verify-images.sh")).unwrap();
        let name = format!("atproto-verifier-{VERSION}-{}-linux-musl", arch());
        std::fs::write(dir.path().join(&name), &binary).unwrap();
        std::fs::write(dir.path().join("verify-images.sh"), &script).unwrap();
        let sums = format!("{}  {name}\n{}  verify-images.sh\n", hex(&binary), hex(&script));
        std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
        let root = dir.path().to_owned();
        let server = FakeServer::start(Box::new(move |request| {
            let file = request.path.strip_prefix(&format!("/v{VERSION}/")).filter(|f| !f.contains('/') && !f.contains(".."));
            match file.map(|f| std::fs::read(root.join(f))) {
                Some(Ok(bytes)) => FakeResponse::new(200, "application/octet-stream", bytes),
                _ => FakeResponse::new(404, "text/plain", "not found"),
            }
        }));
        Release { dir, server }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn hex(bytes: &[u8]) -> String {
    sha256(bytes).trim_start_matches("sha256:").to_owned()
}

struct Job {
    output: Output,
    outputs: String,
    summary: String,
    out: tempfile::TempDir,
}

impl Job {
    fn log(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned() + &String::from_utf8_lossy(&self.output.stderr)
    }
}

/// Runs `program` as a GitHub Actions step would: GITHUB_* files, RUNNER_TEMP, the inputs.
fn run_job(program: &[&str], release: &Release, inputs: &[(&str, &str)]) -> Job {
    run_job_in(program, release, inputs, |_| {})
}

/// [`run_job`] with the job's working directory prepared first.
fn run_job_in(program: &[&str], release: &Release, inputs: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Job {
    let out = tempfile::tempdir().unwrap();
    prepare(out.path());
    let (outputs, summary) = (out.path().join("github_output"), out.path().join("step_summary"));
    let mut command = Command::new(program[0]);
    command
        .args(&program[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", out.path())
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &outputs)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("RUNNER_TEMP", out.path())
        .env("ATPROTO_VERIFIER_VERSION", VERSION)
        .env("ATPROTO_VERIFIER_RELEASE_URL", &release.server.url)
        .current_dir(out.path());
    for (name, value) in inputs {
        command.env(name, value);
    }
    let output = command.output().expect("bash and curl are needed: apt-get install bash curl");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Job { output, outputs: read(&outputs), summary: read(&summary), out }
}

fn script() -> String {
    repo_root().join("packaging/ci/verify-images.sh").to_string_lossy().into_owned()
}

/// A signed, an unsigned and a revoked image, and a verifier installation trusting the signer
/// whose cache (kept between CI runs, as a runner cache would) saw the revoked image admitted
/// before its record was deleted.
fn world(env: &Env, name: &str) -> (Verifier, [String; 3]) {
    let account = env.pds.create_account(name);
    let repository = format!("{name}.test/app");
    let signed = env.registry.push_image(&repository, "v1", &format!("{name}-signed"));
    env.pds.put_manifest(&account, &signed, "app", OCI_MANIFEST);
    // The unsigned tag: pushed, never recorded.
    env.registry.push_image(&repository, "v2", &format!("{name}-unsigned"));
    let revoked = env.registry.push_image(&repository, "v3", &format!("{name}-revoked"));
    let rkey = env.pds.put_manifest(&account, &revoked, "app", OCI_MANIFEST);
    let config = format!(
        "plc_directory = {:?}\nhandle_resolver = {:?}\natproto_registries = [{:?}]\nbudget = \"8s\"\nproof_ttl = \"1s\"\n",
        env.pds.plc, env.pds.pds, env.registry.host
    );
    let policy = policy(
        &[(account.handle.as_str(), account.did.as_str(), None)],
        &format!("  - name: ours\n    scope: \"{}/**\"\n    require: {{ signature: true }}\n    action: enforce\n", env.registry.host),
        "{ action: enforce, require: { signature: true } }",
    );
    let image = |tag: &str| format!("{}/{repository}:{tag}", env.registry.host);
    let verifier = Verifier::new(&config, &policy);
    let before = verifier.command(&["verify", &image("v3")]);
    assert_eq!(before.status.code(), Some(0), "{}", String::from_utf8_lossy(&before.stdout));
    env.pds.delete_record(&account, &rkey);
    // Past the cached proof's TTL (1 s here): the job asks the PDS again and sees the deletion.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    (verifier, [image("v1"), image("v2"), image("v3")])
}

#[test]
fn the_action_script_passes_signed_images_and_fails_the_job_with_each_reason() {
    let env = env();
    let release = Release::start();
    let (verifier, [signed, unsigned, revoked]) = world(env, "ci1");
    let config = verifier.config.to_string_lossy().into_owned();

    let job = run_job(&["bash", &script()], &release, &[("ATPROTO_VERIFIER_IMAGES", &signed), ("ATPROTO_VERIFIER_CONFIG", &config)]);
    assert_eq!(job.output.status.code(), Some(0), "{}", job.log());
    assert!(job.log().contains(&format!("{signed}: admitted (verified)")), "{}", job.log());
    assert!(job.outputs.contains("admitted=1\nrejected=0\nundecided=0\n"), "{}", job.outputs);

    // All three, one per line, SARIF: the job fails, and every image is still decided.
    let images = format!("{signed}\n{unsigned}\n{revoked}\n");
    let inputs = [("ATPROTO_VERIFIER_IMAGES", images.as_str()), ("ATPROTO_VERIFIER_CONFIG", &config), ("ATPROTO_VERIFIER_FORMAT", "sarif")];
    let job = run_job(&["bash", &script()], &release, &inputs);
    let log = job.log();
    assert_eq!(job.output.status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("{signed}: admitted (verified)")), "{log}");
    assert!(log.contains(&format!("::error title={unsigned}: rejected (record-not-found)::")), "{log}");
    assert!(log.contains(&format!("::error title={revoked}: rejected (record-deleted)::")), "{log}");
    assert!(job.outputs.contains("admitted=1\nrejected=2\nundecided=0\n"), "{}", job.outputs);
    assert!(job.summary.contains(&format!("| `{revoked}` | rejected | `record-deleted` |")), "{}", job.summary);
    let sarif_dir = job.out.path().join("atproto-verifier/sarif");
    let levels: Vec<String> = (1..=3)
        .map(|n| {
            let sarif: serde_json::Value = serde_json::from_slice(&std::fs::read(sarif_dir.join(format!("{n}.sarif"))).unwrap()).unwrap();
            format!("{}:{}", sarif["runs"][0]["results"][0]["level"].as_str().unwrap(), sarif["runs"][0]["results"][0]["ruleId"].as_str().unwrap())
        })
        .collect();
    assert_eq!(levels, ["none:verified", "error:record-not-found", "error:record-deleted"]);
    let results = std::fs::read_to_string(job.out.path().join("atproto-verifier/results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 3, "{results}");

    // The policy input replaces the config's: a policy trusting nobody rejects the signed image.
    let nobody = verifier.dir.path().join("nobody.yaml");
    let rules = format!("  - name: ours\n    scope: \"{}/**\"\n    require: {{ signature: true }}\n    action: enforce\n", env.registry.host);
    std::fs::write(&nobody, policy(&[("someone else", "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", None)], &rules, "{ action: enforce, require: { signature: true } }"))
        .unwrap();
    let inputs = [("ATPROTO_VERIFIER_IMAGES", signed.as_str()), ("ATPROTO_VERIFIER_CONFIG", &config), ("ATPROTO_VERIFIER_POLICY", nobody.to_str().unwrap())];
    let job = run_job(&["bash", &script()], &release, &inputs);
    assert_eq!(job.output.status.code(), Some(1), "{}", job.log());

    // The image list is split on whitespace, never expanded against the runner's files.
    let images = format!("{signed} decoy-*\n[::1]:5000/app:v1\n");
    let inputs = [("ATPROTO_VERIFIER_IMAGES", images.as_str()), ("ATPROTO_VERIFIER_CONFIG", &config)];
    let job = run_job_in(&["bash", &script()], &release, &inputs, |dir| {
        for name in ["decoy-one", "decoy-two", ":"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
    });
    let results = std::fs::read_to_string(job.out.path().join("atproto-verifier/results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 3, "{results}");
    assert!(job.log().contains("decoy-*") && !job.log().contains("decoy-one") && job.log().contains("[::1]:5000/app:v1"), "{}", job.log());
}

#[test]
fn a_binary_that_does_not_match_the_release_checksums_is_never_run() {
    let env = env();
    let release = Release::start();
    let (verifier, [signed, _, _]) = world(env, "ci2");
    let name = format!("atproto-verifier-{VERSION}-{}-linux-musl", arch());
    let mut bytes = std::fs::read(release.file(&name)).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(release.file(&name), bytes).unwrap();
    let config = verifier.config.to_string_lossy().into_owned();
    let job = run_job(&["bash", &script()], &release, &[("ATPROTO_VERIFIER_IMAGES", &signed), ("ATPROTO_VERIFIER_CONFIG", &config)]);
    assert_eq!(job.output.status.code(), Some(2), "{}", job.log());
    assert!(job.log().contains("does not match the release's SHA256SUMS: refusing to run it"), "{}", job.log());
    assert!(!job.out.path().join(format!("atproto-verifier/bin/{name}")).exists());
    assert!(!job.out.path().join("atproto-verifier/results.jsonl").exists(), "the verifier ran");

    // And a release that does not exist says so, rather than failing later.
    let job = run_job(&["bash", &script()], &release, &[("ATPROTO_VERIFIER_IMAGES", &signed), ("ATPROTO_VERIFIER_VERSION", "9.9.9")]);
    assert_eq!(job.output.status.code(), Some(2));
    assert!(job.log().contains("cannot download"), "{}", job.log());
}

/// The GitLab template's own `script:` lines, run in order in one shell as GitLab's runner does.
#[test]
fn the_gitlab_template_downloads_the_checked_script_and_runs_it() {
    let env = env();
    let release = Release::start();
    let (verifier, [signed, unsigned, _]) = world(env, "ci3");
    let template = std::fs::read_to_string(repo_root().join("packaging/ci/gitlab-ci.yml")).unwrap();
    let lines: Vec<&str> = template
        .split("\n  script:\n")
        .nth(1)
        .expect("a script: section")
        .lines()
        .take_while(|l| l.starts_with("    - "))
        .map(|l| l.trim_start_matches("    - "))
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    let job_script = format!("set -e\n{}\n", lines.join("\n"));
    let config = verifier.config.to_string_lossy().into_owned();
    let run = |images: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("atproto-verifier");
        let job = run_job(
            &["bash", "-c", &job_script],
            &release,
            &[
                ("ATPROTO_VERIFIER_IMAGES", images),
                ("ATPROTO_VERIFIER_CONFIG", &config),
                ("ATPROTO_VERIFIER_OUT", out.to_str().unwrap()),
                ("GITHUB_ACTIONS", ""),
            ],
        );
        (job, dir)
    };
    let (job, _dir) = run(&signed);
    assert_eq!(job.output.status.code(), Some(0), "{}", job.log());
    let (job, _dir) = run(&format!("{signed} {unsigned}"));
    assert_eq!(job.output.status.code(), Some(1), "{}", job.log());
    assert!(job.log().contains(&format!("error: {unsigned}: rejected (record-not-found)")), "{}", job.log());

    // A script that is not the released one is refused by the checksum line.
    std::fs::write(release.file("verify-images.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    let (job, _dir) = run(&signed);
    assert_ne!(job.output.status.code(), Some(0), "{}", job.log());
}

/// `offline-bundle`: the images are decided from the bundle alone (no identity lookups), in a
/// job whose cache starts empty.
#[test]
fn the_action_script_verifies_offline_from_a_bundle() {
    let env = env();
    let release = Release::start();
    let (connected, [signed, unsigned, _]) = world(env, "ci4");
    let bundle = connected.dir.path().join("material.bundle.json");
    let made = connected.command(&["bundle", "create", "-o", bundle.to_str().unwrap(), "--image", &signed]);
    assert_eq!(made.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&made.stdout), String::from_utf8_lossy(&made.stderr));
    // A job with an empty cache, and a PLC directory and PDS it could not reach anyway.
    let config = format!("plc_directory = \"http://127.0.0.1:1\"\natproto_registries = [{:?}]\nbudget = \"8s\"\n", env.registry.host);
    let policy = std::fs::read_to_string(connected.dir.path().join("trust-policy.yaml")).unwrap();
    let job_node = Verifier::new(&config, &policy);
    let config = job_node.config.to_string_lossy().into_owned();
    // Offline, a tag cannot be resolved: a pipeline verifies the digests it built.
    let pinned = |image: &str| {
        let out = connected.command(&["verify", image, "--format", "json"]);
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        format!("{}@{}", image.rsplit_once(':').unwrap().0, record["digest"].as_str().unwrap())
    };
    let (signed, unsigned) = (pinned(&signed), pinned(&unsigned));
    let images = format!("{signed}\n{unsigned}");
    let inputs =
        [("ATPROTO_VERIFIER_IMAGES", images.as_str()), ("ATPROTO_VERIFIER_CONFIG", &config), ("ATPROTO_VERIFIER_OFFLINE_BUNDLE", bundle.to_str().unwrap())];
    let job = run_job(&["bash", &script()], &release, &inputs);
    let log = job.log();
    assert_eq!(job.output.status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("{signed}: admitted (verified)")), "{log}");
    assert!(log.contains(&format!("{unsigned}: rejected (")), "{log}");
    let results = std::fs::read_to_string(job.out.path().join("atproto-verifier/results.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(results.lines().next().unwrap()).unwrap();
    assert_eq!(first["requests"], 0, "offline: no identity request: {first}");

    // A bundle that cannot be imported stops the job before any image is decided.
    std::fs::write(&bundle, "{}").unwrap();
    let job = run_job(&["bash", &script()], &release, &inputs);
    assert_eq!(job.output.status.code(), Some(2), "{}", job.log());
    assert!(job.log().contains("cannot import"), "{}", job.log());
}
