//! Class: bounded work. Hostile sizes cost a bounded, small amount of work, decided by limits
//! before any expensive step: did:plc audit logs are held to the did:plc limits before any
//! signature is checked; policies with tens of thousands of keys are refused by a limit, and
//! duplicate keys are found in linear time.

use atproto_sig_core::Limits;
use atproto_sig_core::plc::{PlcError, verify_audit_log};
use atproto_sig_core::policy::Policy;

const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";

#[test]
fn audit_logs_over_the_did_plc_limits_are_refused_at_the_first_operation() {
    let dir = crate::data("plc");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        // Every signature in these files is garbage: only a limit can be the reason.
        match verify_audit_log(DID, &bytes, &Limits::default()) {
            Err(PlcError::Entry { index: 0, reason }) => {
                let limit = name.split('_').next().unwrap();
                let named = match limit {
                    "rotation" => reason.contains("rotationKeys"),
                    "verification" => reason.contains("verificationMethods"),
                    "services" => reason.contains("services"),
                    "also" => reason.contains("alsoKnownAs"),
                    "operation" => reason.contains("7500 bytes"),
                    "field" => reason.contains("2048"),
                    other => panic!("no expectation for {other}"),
                };
                assert!(named, "{name}: {reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn a_one_megabyte_hostile_log_is_refused_by_a_limit() {
    let log = atproto_sig_core::testkit::hostile_plc_log(DID, 1 << 20);
    assert!(log.len() > 1_000_000);
    // The outcome, not the time (the time is in BENCHMARKS.md, from the criterion bench).
    match verify_audit_log(DID, log.as_bytes(), &Limits::default()) {
        Err(PlcError::Entry { index: 0, reason }) => assert!(reason.contains("rotationKeys"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn policies_with_tens_of_thousands_of_keys_are_refused_by_a_limit() {
    let mut text = String::from("version: \"1.0\"\ntrustedDIDs:\n");
    for i in 0..20_000 {
        text.push_str(&format!("  did:web:h{i}.x: {{}}\n"));
    }
    text.push_str("policies:\n");
    for i in 0..1_500 {
        text.push_str(&format!("  - {{name: r{i}, scope: a.io/{i}, require: {{signature: false}}, action: enforce}}\n"));
    }
    assert!(text.len() < 1 << 20, "under the policy file size limit: the key limits must do the work");
    let errors = Policy::parse(&text).unwrap_err();
    assert!(errors.iter().any(|e| e.message.contains("20000 DIDs, more than 1000")), "{errors:?}");
    assert!(errors.iter().any(|e| e.message.contains("rules, more than 1000")), "{errors:?}");

    // Thousands of duplicate keys are all reported (found with a hash set, not pairwise).
    let mut dups = String::from("version: \"1.0\"\ndefault: { action: enforce, require: { signature: false } }\nx:\n");
    for i in 0..20_000 {
        dups.push_str(&format!("  k{}: 1\n", i % 10_000));
    }
    let errors = Policy::parse(&dups).unwrap_err();
    assert_eq!(errors.iter().filter(|e| e.message.contains("duplicate key")).count(), 10_000);
}

#[test]
fn a_policy_larger_than_any_real_one_is_refused_before_it_is_checked() {
    let mut text = String::from("version: \"1.0\"\nx:\n");
    for _ in 0..120_000 {
        text.push_str("  - 1\n");
    }
    let errors = Policy::parse(&text).unwrap_err();
    assert!(errors.iter().any(|e| e.message.contains("more than 100000 values")), "{errors:?}");
}
