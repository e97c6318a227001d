//! The file-only commands, run as a user would: exit codes, JSON fields, and snapshots of the
//! text people read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, Tamper, TestRepo, digest_of};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

fn pds_fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pds").join(name).to_string_lossy().into_owned()
}

fn meta() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(pds_fixture("meta.json")).unwrap()).unwrap()
}

struct Generated {
    _dir: tempfile::TempDir,
    car: String,
    doc: String,
    log: String,
    uri: String,
    digest: String,
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

fn generated(tamper: Tamper) -> Generated {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = TestRepo::new(Identity::new(Curve::P256, "cli"));
    repo.put_filler(20);
    let digest = digest_of("cli-image");
    let rkey = repo.put_manifest(&digest, "myapp");
    Generated {
        car: write(dir.path(), "proof.car", &repo.proof_with(MANIFEST_COLLECTION, &rkey, &tamper)),
        doc: write(dir.path(), "did.json", repo.identity.did_document_multikey().as_bytes()),
        log: write(dir.path(), "log.json", repo.identity.audit_log().as_bytes()),
        uri: format!("at://{}/{MANIFEST_COLLECTION}", repo.identity.did),
        digest,
        _dir: dir,
    }
}

const NOW: &str = "2026-01-01T00:00:00Z";

fn verify_generated(g: &Generated, extra: &[&str]) -> Output {
    let mut args = vec!["proof", "verify", "--car", &g.car, "--uri", &g.uri, "--digest", &g.digest, "--now", NOW];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn proof_verify_real_pds_fixture_json() {
    let meta = meta();
    let uri = format!("at://{}/io.atcr.manifest", meta["did"].as_str().unwrap());
    for doc in ["did-legacy.json", "did-multikey.json"] {
        let out = run(&[
            "proof",
            "verify",
            "--car",
            &pds_fixture("manifest-hex-rkey.car"),
            "--did-doc",
            &pds_fixture(doc),
            "--uri",
            &uri,
            "--digest",
            meta["digest"].as_str().unwrap(),
            "--repository",
            "myapp",
            "--format",
            "json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        let v = json(&out);
        assert_eq!(v["admitted"], true);
        assert_eq!(v["reason"], "verified");
        assert_eq!(v["did"], meta["did"]);
        assert!(v["commit"].as_str().unwrap().starts_with("bafyrei"));
        assert!(v["rev"].is_string());
        assert!(v["message"].as_str().unwrap().contains(meta["digest"].as_str().unwrap()));
    }
}

#[test]
fn proof_verify_text_snapshots() {
    let g = generated(Tamper::None);
    let out = verify_generated(&g, &["--did-doc", &g.doc, "--repository", "myapp"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!("verified_text", stdout(&out));
    let out = verify_generated(&g, &["--audit-log", &g.log]);
    assert_eq!(out.status.code(), Some(0), "key from the verified audit log: {}", stdout(&out));

    let g = generated(Tamper::HighS);
    let out = verify_generated(&g, &["--did-doc", &g.doc]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("high_s_text", stdout(&out));
}

#[test]
fn proof_verify_rejections_exit_1_with_their_code() {
    for (tamper, code) in [
        (Tamper::WrongKey, "signature-invalid"),
        (Tamper::FlipRecordByte, "proof-malformed"),
        (Tamper::FutureRev, "rev-in-future"),
        (Tamper::CommitDid("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into()), "did-mismatch"),
    ] {
        let g = generated(tamper);
        let out = verify_generated(&g, &["--did-doc", &g.doc, "--format", "json"]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert_eq!(json(&out)["reason"], code);
    }
    let g = generated(Tamper::None);
    let out = verify_generated(&g, &["--did-doc", &g.doc, "--repository", "other", "--format", "json"]);
    assert_eq!(json(&out)["reason"], "repository-mismatch");
}

#[test]
fn proof_verify_usage_and_unreadable_input_exit_2() {
    let g = generated(Tamper::None);
    let out = run(&["proof", "verify", "--car", "/nonexistent.car", "--did-doc", &g.doc, "--uri", &g.uri, "--digest", &g.digest]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent.car"));
    let out = run(&["proof", "verify", "--car", &g.car, "--did-doc", &g.doc, "--uri", "at://alice.test/io.atcr.manifest", "--digest", &g.digest]);
    assert_eq!(out.status.code(), Some(2), "a handle is not accepted offline");
    let out = run(&["proof", "verify", "--car", &g.car, "--uri", &g.uri, "--digest", &g.digest]);
    assert_eq!(out.status.code(), Some(2), "a key source is required");
}

#[test]
fn proof_inspect_reports_commit_path_and_record() {
    let meta = meta();
    let path = format!("io.atcr.manifest/{}", meta["tidRkey"].as_str().unwrap());
    let out = run(&["proof", "inspect", "--car", &pds_fixture("repo.car"), "--path", &path, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert!(v["blocks"].as_u64().unwrap() > 300);
    assert_eq!(v["commit"]["version"], 3);
    assert_eq!(v["mst"]["present"], true);
    assert_eq!(v["mst"]["record"]["digest"], meta["digest"]);
    assert!(v["mst"]["nodes"].as_array().unwrap().len() >= 2);

    let out = run(&["proof", "inspect", "--car", &pds_fixture("deleted.car"), "--path", &format!("io.atcr.manifest/{}", meta["hexRkey"].as_str().unwrap())]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("absent"));

    let g = generated(Tamper::Version2);
    let out = run(&["proof", "inspect", "--car", &g.car]);
    assert_eq!(out.status.code(), Some(0), "v2 commits are reported, not crashed on");
    assert!(stdout(&out).contains("version 2 commits are not accepted"));

    let g = generated(Tamper::Truncate);
    let out = run(&["proof", "inspect", "--car", &g.car]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("invalid CAR"));
}

#[test]
fn did_verify_log_real_and_interop() {
    let meta = meta();
    let out = run(&["did", "verify-log", "--did", meta["did"].as_str().unwrap(), "--audit-log", &pds_fixture("audit-log.json"), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["handle"], "alice.test");
    assert!(v["signingKey"].as_str().unwrap().starts_with("did:key:zQ3s"));
    assert!(v["pds"].as_str().unwrap().starts_with("http://localhost:"));

    let interop = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/plc-audit-log/invalid/log_invalid_sig_p256_high_s.json");
    let log: serde_json::Value = serde_json::from_slice(&std::fs::read(&interop).expect("tests/interop (vendored) is required")).unwrap();
    let out = run(&["did", "verify-log", "--did", log[0]["did"].as_str().unwrap(), "--audit-log", interop.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("invalid audit log"));
}

fn policy_file(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crates/atproto-sig-core/tests/policies").join(name).to_string_lossy().into_owned()
}

#[test]
fn policy_check_summary_errors_and_missing_file() {
    let out = run(&["policy", "check", &policy_file("valid/atcr-example.yaml")]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).lines().count(), 1, "one-line summary: {}", stdout(&out));
    assert!(stdout(&out).contains("3 policies, 3 trusted DIDs"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: did:plc:alice123 can never verify"));

    let out = run(&["policy", "check", &policy_file("invalid/bad-values.yaml")]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.lines().filter(|l| l.contains(": error: ")).count() >= 15, "every error, not just the first: {text}");
    assert!(text.lines().all(|l| l.starts_with("  hint:") || l.contains("bad-values.yaml")));

    let out = run(&["policy", "check", "/nonexistent/policy.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit-only-starter.yaml"));

    // Via config.toml, and via $ATPROTO_VERIFIER_CONFIG.
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "config.toml", format!("policy = {:?}\n", policy_file("valid/json-form.json")).as_bytes());
    let out = run(&["policy", "check", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = bin().args(["policy", "check"]).env("ATPROTO_VERIFIER_CONFIG", &config).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let bad = write(dir.path(), "bad.toml", b"polcy = \"x\"\n");
    let out = bin().args(["policy", "check"]).env("ATPROTO_VERIFIER_CONFIG", &bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The misspelt key is named by what it is close to, never quoted from the file.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("line 1, column 1") && said.contains("did you mean `policy`") && !said.contains("polcy"), "{said}");
    // Scripts reading JSON get the config-invalid code, not a generic one.
    let out = bin()
        .args(["verify", "nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000", "--format", "json"])
        .env("ATPROTO_VERIFIER_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["reason"], "config-invalid");
}

#[test]
fn policy_explain_text_snapshot_and_json() {
    let policy = policy_file("valid/atcr-example.yaml");
    let out = run(&["policy", "explain", "--policy", &policy, "--now", "2026-06-01T00:00:00Z", "atcr.io/bob.test/staging-web:v2"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!("explain_staging", stdout(&out));
    let out = run(&["policy", "explain", "--policy", &policy, "--format", "json", "nginx"]);
    let v = json(&out);
    assert_eq!(v["image"], "docker.io/library/nginx");
    assert_eq!(v["rule"]["default"], true);
    assert_eq!(v["skipped"].as_array().unwrap().len(), 3);
    let out = run(&["policy", "explain", "--policy", &policy, "Not A Ref"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn doctor_catches_the_silent_failure_modes_of_containerds_hook() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("verifiers");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let policy = policy_file("valid/atcr-example.yaml");
    let config = write(dir.path(), "config.toml", format!("policy = {policy:?}\ncache_dir = {:?}\n", dir.path().join("cache")).as_bytes());
    let containerd = |extra: &str| {
        write(
            dir.path(),
            "containerd.toml",
            format!("version = 3\n[plugins.\"io.containerd.image-verifier.v1.bindir\"]\nbin_dir = {bin_dir:?}\nmax_verifiers = 10\n{extra}").as_bytes(),
        )
    };
    let doctor = |containerd_config: &str| {
        let out = run(&["doctor", "--config", &config, "--containerd-config", containerd_config]);
        (out.status.code(), stdout(&out))
    };
    // Empty bin_dir: containerd would admit everything.
    let (code, text) = doctor(&containerd("per_verifier_timeout = \"10s\"\n"));
    assert_eq!(code, Some(1));
    assert!(text.contains("admits EVERY pull"), "{text}");
    // Installed, executable, timeout above the 8 s budget: healthy.
    let installed = bin_dir.join("atproto-verifier");
    std::fs::copy(env!("CARGO_BIN_EXE_atproto-verifier"), &installed).unwrap();
    let (code, text) = doctor(&containerd("per_verifier_timeout = \"10s\"\n"));
    assert_eq!(code, Some(0), "{text}");
    // A stray non-executable file, a timeout below the budget, and CRI's local pull.
    let stray = bin_dir.join("README");
    std::fs::write(&stray, "notes").unwrap();
    std::fs::set_permissions(&stray, std::fs::Permissions::from_mode(0o644)).unwrap();
    let broken = containerd("per_verifier_timeout = \"5s\"\n[plugins.\"io.containerd.cri.v1.images\"]\nuse_local_image_pull = true\n");
    let (code, text) = doctor(&broken);
    assert_eq!(code, Some(1));
    // The number of system roots depends on the machine.
    let report: String = text
        .replace(&dir.path().display().to_string(), "<dir>")
        .replace(&policy, "<policy>")
        .lines()
        .map(|l| {
            if l.contains("trust roots") && l.contains("roots from the system store") {
                "ok   trust roots       https trusts <n> roots from the system store\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    insta::assert_snapshot!("doctor_broken", report);
}

#[test]
fn doctor_warns_about_nerdctl_releases_that_pull_without_verifiers() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "config.toml", format!("cache_dir = {:?}\n", dir.path().join("cache")).as_bytes());
    let report = |version: &str| {
        let bin = dir.path().join(format!("path-{version}"));
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("nerdctl");
        std::fs::write(&fake, format!("#!/bin/sh\necho \"nerdctl version {version}\"\n")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
            .args(["doctor", "--config", &config, "--containerd-config", "/nonexistent/containerd.toml"])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        stdout(&out)
    };
    let old = report("2.2.1");
    assert!(old.contains("nerdctl 2.2.1 is on PATH") && old.contains("NO image verifier"), "{old}");
    let new = report("2.3.0");
    assert!(new.contains("nerdctl 2.3.0 pulls through the transfer service"), "{new}");
}

#[test]
fn ci_facing_commands_keep_their_exit_codes_and_formats() {
    // policy check --format json: every error with file, line, column and hint; exit 1.
    let out = run(&["policy", "check", &policy_file("invalid/unknown-keys.yaml"), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    let first = &v["errors"][0];
    assert!(first["line"].as_u64().unwrap() > 0 && first["column"].as_u64().unwrap() > 0 && first["message"].is_string(), "{v}");
    let out = run(&["policy", "check", &policy_file("valid/atcr-example.yaml"), "--format", "json"]);
    assert_eq!((out.status.code(), json(&out)["ok"].as_bool()), (Some(0), Some(true)));

    // proof verify with a malformed digest: a usage error (exit 2), not a rejection.
    let g = generated(Tamper::None);
    let out = run(&["proof", "verify", "--car", &g.car, "--uri", &g.uri, "--digest", "sha256:1234", "--did-doc", &g.doc, "--now", NOW]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));

    // verify --policy FILE overrides config.toml's policy (here: no signature needed → exit 0
    // without any network, while the configured one would need a signer).
    let dir = tempfile::tempdir().unwrap();
    let lenient = write(dir.path(), "lenient.yaml", b"version: \"1.0\"\ndefault: { action: enforce, require: { signature: false } }\n");
    let config = write(
        dir.path(),
        "config.toml",
        format!("policy = {:?}\ncache_dir = {:?}\n", policy_file("valid/atcr-example.yaml"), dir.path().join("cache")).as_bytes(),
    );
    let image = format!("registry.example.com/app@sha256:{}", "ab".repeat(32));
    let out = run(&["verify", &image, "--config", &config, "--policy", &lenient, "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let sarif = json(&out);
    let uri = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].as_str().unwrap().to_owned();
    assert_eq!(uri, image, "the canonical reference, its digest once");
}

#[test]
fn observability_audit_failures_logfmt_journal_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.yaml", b"version: \"1.0\"\ndefault: { action: enforce, require: { signature: false } }\n");
    let missing_audit = dir.path().join("no-such-dir/audit.jsonl");
    let config = write(
        dir.path(),
        "config.toml",
        format!("policy = {policy:?}\ncache_dir = {:?}\naudit_log = {missing_audit:?}\n", dir.path().join("cache")).as_bytes(),
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pull = |env: &[(&str, &str)]| {
        let mut command = bin();
        command.args(["-name", "registry.example.com/app:v1", "-digest", &digest]).env("ATPROTO_VERIFIER_CONFIG", &config).stdin(std::process::Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    // An audit log that cannot be written never blocks a pull, and each decision says so.
    let out = pull(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("level=warn") && stderr.contains("cannot be written"), "{stderr}");
    // Under systemd, the journal priority prefix; with ATPROTO_VERIFIER_LOG=error, nothing.
    let out = pull(&[("JOURNAL_STREAM", "8:1234")]);
    assert!(String::from_utf8_lossy(&out.stderr).lines().any(|l| l.starts_with("<4>level=warn")), "{}", String::from_utf8_lossy(&out.stderr));
    let out = pull(&[("ATPROTO_VERIFIER_LOG", "error")]);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // doctor reports it.
    let out = run(&["doctor", "--config", &config, "--containerd-config", "/nonexistent.toml"]);
    assert!(stdout(&out).contains("audit log") && stdout(&out).contains("cannot be written"), "{}", stdout(&out));

    // The refresh timer writes a Prometheus textfile: decisions by outcome and reason.
    let audit = write(
        dir.path(),
        "audit.jsonl",
        concat!(
            "{\"outcome\":\"admitted\",\"reason\":\"verified\"}\n",
            "{\"outcome\":\"admitted\",\"reason\":\"verified\"}\n",
            "{\"outcome\":\"rejected\",\"reason\":\"record-deleted\"}\n",
            "not json\n"
        )
        .as_bytes(),
    );
    let bundles = dir.path().join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let metrics = dir.path().join("atproto-verifier.prom");
    let offline = write(
        dir.path(),
        "offline.toml",
        format!(
            "offline = true\npolicy = {policy:?}\ncache_dir = {:?}\naudit_log = {audit:?}\nbundle_dir = {bundles:?}\nmetrics_file = {metrics:?}\n",
            dir.path().join("cache")
        )
        .as_bytes(),
    );
    let out = run(&["cache", "refresh", "--config", &offline]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("atproto_verifier_decisions_total{outcome=\"admitted\",reason=\"verified\"} 2"), "{text}");
    assert!(text.contains("atproto_verifier_decisions_total{outcome=\"rejected\",reason=\"record-deleted\"} 1"), "{text}");
    assert!(text.contains("# TYPE atproto_verifier_cache_entries gauge") && text.contains("atproto_verifier_refresh_last_run_timestamp_seconds"), "{text}");
}
