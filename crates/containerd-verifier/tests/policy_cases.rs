//! `policy test FILE`: the starter policies' own cases pass; a policy change is shown as a diff
//! of each case it changes (exit 1); tampered material is refused as a node refuses it; a
//! broken case file says where (exit 2); and no case ever reaches the network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atproto-verifier"))
}

fn policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../packaging/policies")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).env_remove("ATPROTO_VERIFIER_CONFIG").output().unwrap()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// A copy of packaging/policies (policies, cases and data) to change.
fn copy_of_policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    };
    copy(&policies(), dir.path());
    copy(&policies().join("tests"), &dir.path().join("tests"));
    copy(&policies().join("tests/data"), &dir.path().join("tests/data"));
    dir
}

#[test]
fn every_starter_policy_passes_its_own_cases() {
    for name in ["audit-only-starter", "production", "mirror"] {
        let file = policies().join(format!("tests/{name}.yaml"));
        let out = run(&["policy", "test", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        assert!(text(&out).contains("all passed"), "{}", text(&out));
        // Every shipped policy has its cases.
        assert!(policies().join(format!("{name}.yaml")).is_file());
    }
    let shipped = std::fs::read_dir(policies()).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "yaml")).count();
    assert_eq!(shipped, 3, "a new starter policy needs its cases in packaging/policies/tests/");
}

#[test]
fn a_policy_change_is_shown_as_a_diff_of_the_cases_it_changes() {
    let dir = copy_of_policies();
    let production = dir.path().join("production.yaml");
    // The change under review: the release bot is no longer trusted for our atcr.io images.
    let changed = std::fs::read_to_string(&production)
        .unwrap()
        .replace("trustedDIDs: [did:plc:o2fexybrfj2d5goptvxkcupy, did:plc:ragtjsm2j2vknwkz3zp4oxrd]", "trustedDIDs: [did:plc:ragtjsm2j2vknwkz3zp4oxrd]");
    let proposed = dir.path().join("proposed.yaml");
    std::fs::write(&proposed, changed).unwrap();
    let cases = dir.path().join("tests/production.yaml");
    let out = run(&["policy", "test", cases.to_str().unwrap(), "--policy", proposed.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out).replace(dir.path().to_str().unwrap(), "[dir]");
    insta::assert_snapshot!("policy_test_diff", report);

    let out = run(&["policy", "test", cases.to_str().unwrap(), "--policy", proposed.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["passed"], 4);
    assert_eq!(json["failed"], 4);
    let first = &json["cases"][0];
    assert_eq!(first["status"], "failed");
    assert_eq!(first["expected"]["outcome"], "admitted");
    assert_eq!(first["actual"]["outcome"], "rejected");
    assert_eq!(first["differences"][0], serde_json::json!({"field": "outcome", "expected": "admitted", "actual": "rejected"}));
    // The unchanged cases still pass: every case is run, none stops the others.
    assert_eq!(json["cases"][6]["status"], "passed");
}

#[test]
fn tampered_material_is_refused_as_a_node_refuses_it() {
    let dir = copy_of_policies();
    let car = dir.path().join("tests/data/alice-myapp.car");
    let mut bytes = std::fs::read(&car).unwrap();
    // The last byte belongs to the record block: its hash no longer matches its CID.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&car, bytes).unwrap();
    let cases = dir.path().join("tests/mirror.yaml");
    let out = run(&["policy", "test", cases.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let admitted = &json["cases"][0];
    assert_eq!(admitted["status"], "failed", "{admitted}");
    assert_eq!(admitted["actual"]["outcome"], "rejected");
    assert!(admitted["actual"]["message"].as_str().unwrap().contains("refused"), "{admitted}");
}

#[test]
fn a_case_file_that_cannot_be_run_says_where_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.yaml");
    std::fs::write(&file, "policy: ../nowhere.yaml\ncases:\n  - name: a\n    image: atcr.io/a.test/app:v1\n    expect: {outcome: admited, reason: verified}\n")
        .unwrap();
    let out = run(&["policy", "test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out);
    assert!(said.contains("cases.yaml:3:") && said.contains("the image has no digest"), "{said}");
    assert!(said.contains("cases.yaml:5:") && said.contains("\"admited\""), "{said}");

    std::fs::write(
        &file,
        "policy: nowhere.yaml\ncases:\n  - name: a\n    image: docker.io/library/x@sha256:1111111111111111111111111111111111111111111111111111111111111111\n    expect: {outcome: admitted, reason: not-required}\n",
    )
    .unwrap();
    let out = run(&["policy", "test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("nowhere.yaml"), "{}", text(&out));

    let out = run(&["policy", "test", dir.path().join("missing.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_case_whose_material_is_missing_is_an_error_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policies().join("audit-only-starter.yaml");
    let file = dir.path().join("cases.yaml");
    std::fs::write(
        &file,
        format!(
            "policy: {}\ncases:\n  - name: missing material\n    image: atcr.io/alice.test/myapp@sha256:b0ff67b72a1d087090ad4fe635c35ad2752dd27d26f9435bb7877f40ecdc0bc3\n    material:\n      - bundle: nowhere.json\n    expect: {{outcome: admitted, reason: verified}}\n",
            policy.display()
        ),
    )
    .unwrap();
    let out = run(&["policy", "test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("ERROR missing material (line 3): material 1:"), "{}", text(&out));
}
