//! Trust policies: every file under tests/policies and packaging/policies, with error messages
//! snapshotted; decisions for ATCR's example as its comments describe them; validity windows at
//! their edges; scope globs against a regex oracle.

use std::path::{Path, PathBuf};

use atproto_sig_core::policy::{Outcome, Policy, scope_matches};
use atproto_sig_core::reference::ImageRef;
use atproto_sig_core::syntax::parse_datetime_micros;
use atproto_sig_core::{Facts, Reason, Verdict};
use proptest::prelude::*;

fn dir(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn files(path: &Path) -> Vec<PathBuf> {
    // Files only: packaging/policies/tests/ holds the starter policies' cases (`policy test`).
    let mut out: Vec<PathBuf> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    out.sort();
    assert!(!out.is_empty(), "{} is empty", path.display());
    out
}

fn load(path: &Path) -> Policy {
    let text = std::fs::read_to_string(path).unwrap();
    Policy::parse(&text).unwrap_or_else(|errors| {
        let rendered: Vec<String> = errors.iter().map(|e| e.render(&path.display().to_string(), "error")).collect();
        panic!("{}", rendered.join("\n"))
    })
}

#[test]
fn valid_and_example_policies_parse() {
    for path in files(&dir("tests/policies/valid")).into_iter().chain(files(&dir("../../packaging/policies"))) {
        let policy = load(&path);
        assert!(!policy.rules.is_empty(), "{}", path.display());
        assert!(policy.default.is_some(), "{} should have a default", path.display());
    }
}

#[test]
fn invalid_policies_report_every_error_with_position() {
    for path in files(&dir("tests/policies/invalid")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let errors = Policy::parse(&text).expect_err(&path.display().to_string());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let rendered: Vec<String> = errors.iter().map(|e| e.render(&name, "error")).collect();
        insta::assert_snapshot!(name.clone(), rendered.join("\n"));
    }
}

#[test]
fn atcr_example_warns_about_illustrative_dids() {
    let policy = load(&dir("tests/policies/valid/atcr-example.yaml"));
    let warnings: Vec<String> = policy.warnings.iter().map(|w| w.render("atcr-example.yaml", "warning")).collect();
    insta::assert_snapshot!("atcr_example_warnings", warnings.join("\n"));
}

fn micros(text: &str) -> i64 {
    parse_datetime_micros(text).unwrap()
}

fn signed_by(did: &str) -> Verdict {
    Verdict { reason: Reason::Verified, message: "verified".into(), facts: Facts { did: did.into(), ..Facts::default() } }
}

fn failed(did: &str, reason: Reason) -> Verdict {
    Verdict { reason, message: format!("{} for {did}", reason.code()), facts: Facts { did: did.into(), ..Facts::default() } }
}

fn image(name: &str) -> ImageRef {
    ImageRef::parse(&format!("{name}@sha256:{}", "ab".repeat(32))).unwrap()
}

#[test]
fn atcr_example_decisions_follow_its_comments() {
    let policy = load(&dir("tests/policies/valid/atcr-example.yaml"));
    let now = micros("2026-06-01T00:00:00Z");
    let cases: Vec<(&str, Vec<Verdict>, i64, Outcome, Reason, &str)> = vec![
        // "Production images require signatures from trusted DIDs"
        ("atcr.io/alice.test/prod-api", vec![signed_by("did:plc:alice123")], now, Outcome::Admit, Reason::Verified, "production-images"),
        ("atcr.io/alice.test/prod-api", vec![], now, Outcome::Reject, Reason::RecordNotFound, "production-images"),
        ("atcr.io/alice.test/prod-api", vec![signed_by("did:plc:charlie789")], now, Outcome::Reject, Reason::UntrustedSigner, "production-images"),
        // Bob's trust ended 2025-12-31T23:59:59Z.
        ("atcr.io/bob.test/prod-db", vec![signed_by("did:plc:bob456")], now, Outcome::Reject, Reason::SignerExpired, "production-images"),
        ("atcr.io/bob.test/prod-db", vec![signed_by("did:plc:bob456")], micros("2025-06-01T00:00:00Z"), Outcome::Admit, Reason::Verified, "production-images"),
        // Bob's trust starts 2024-06-01.
        (
            "atcr.io/bob.test/prod-db",
            vec![signed_by("did:plc:bob456")],
            micros("2024-05-31T23:59:59Z"),
            Outcome::Reject,
            Reason::SignerExpired,
            "production-images",
        ),
        // "Staging images require signatures from any of the team's DIDs"
        ("atcr.io/charlie.test/staging-web", vec![signed_by("did:plc:charlie789")], now, Outcome::Admit, Reason::Verified, "staging-images"),
        (
            "atcr.io/charlie.test/staging-web",
            vec![failed("did:plc:charlie789", Reason::RecordDeleted)],
            now,
            Outcome::Reject,
            Reason::RecordDeleted,
            "staging-images",
        ),
        // "Development images are audited but not enforced"
        ("atcr.io/dana.test/dev-tool", vec![], now, Outcome::Admit, Reason::NotRequired, "dev-images"),
        // Our default: everything else needs no signature.
        ("docker.io/library/nginx", vec![], now, Outcome::Admit, Reason::NotRequired, "default"),
        // `*` stays within one segment: a nested path is not "atcr.io/*/prod-*".
        ("atcr.io/alice.test/team/prod-api", vec![], now, Outcome::Admit, Reason::NotRequired, "default"),
    ];
    for (name, verdicts, at, outcome, reason, rule) in cases {
        let decision = policy.decide(&image(name), &verdicts, at);
        assert_eq!((decision.outcome, decision.reason, decision.rule.as_deref()), (outcome, reason, Some(rule)), "{name}: {}", decision.message);
    }
}

const WINDOWED: &str = r#"
version: 1.0
trustedDIDs:
  did:plc:ewvi7nxzyoun6zhxrhs64oiz: { name: "A", validFrom: "2025-01-01T00:00:00Z", expiresAt: "2026-01-01T00:00:00Z" }
  did:plc:ragtjsm2j2vknwkz3zp4oxrd: { name: "B", validFrom: null, expiresAt: null }
policies:
  - name: two-signers
    scope: "atcr.io/*/prod-*"
    require: { signature: true, minSignatures: 2 }
    action: enforce
  - name: audited
    scope: "atcr.io/**"
    require: { signature: true, trustedDIDs: [did:plc:ewvi7nxzyoun6zhxrhs64oiz] }
    action: audit
"#;

const A: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
const B: &str = "did:plc:ragtjsm2j2vknwkz3zp4oxrd";

#[test]
fn validity_window_edges() {
    let policy = Policy::parse(WINDOWED).unwrap();
    let img = image("atcr.io/x.test/app");
    let from = micros("2025-01-01T00:00:00Z");
    let until = micros("2026-01-01T00:00:00Z");
    for (at, outcome, reason) in [
        (from - 1, Outcome::AuditAdmit, Reason::SignerExpired),
        (from, Outcome::Admit, Reason::Verified),
        (until - 1, Outcome::Admit, Reason::Verified),
        (until, Outcome::AuditAdmit, Reason::SignerExpired),
    ] {
        let decision = policy.decide(&img, &[signed_by(A)], at);
        assert_eq!((decision.outcome, decision.reason), (outcome, reason), "at {at}: {}", decision.message);
    }
    let audited = policy.decide(&img, &[], from);
    assert_eq!(audited.outcome, Outcome::AuditAdmit);
    assert!(audited.message.starts_with("audit: would reject (record-not-found)"), "{}", audited.message);
}

#[test]
fn distinct_signers_count_toward_min_signatures() {
    let policy = Policy::parse(WINDOWED).unwrap();
    let img = image("atcr.io/x.test/prod-api");
    let now = micros("2025-06-01T00:00:00Z");
    let one = policy.decide(&img, &[signed_by(A), signed_by(A)], now);
    assert_eq!((one.outcome, one.reason), (Outcome::Reject, Reason::TooFewSignatures), "{}", one.message);
    let two = policy.decide(&img, &[signed_by(A), signed_by(B)], now);
    assert_eq!((two.outcome, two.reason), (Outcome::Admit, Reason::Verified));
    assert_eq!(two.signers, vec![A.to_owned(), B.to_owned()]);
    // After A's window, B alone is too few, and A is reported as outside its window.
    let later = policy.decide(&img, &[signed_by(A), signed_by(B)], micros("2026-06-01T00:00:00Z"));
    assert_eq!(later.reason, Reason::SignerExpired, "{}", later.message);
}

/// Two DIDs whose commits verified under one key are one signer: `minSignatures: 2` needs two
/// distinct keys.
#[test]
fn min_signatures_counts_distinct_keys_not_dids() {
    let policy = Policy::parse(WINDOWED).unwrap();
    let img = image("atcr.io/x.test/prod-api");
    let now = micros("2025-06-01T00:00:00Z");
    let key = |seed: &str| atproto_sig_core::crypto::PrivateKey::from_seed(atproto_sig_core::crypto::Curve::K256, seed).public_key();
    let with_key = |did: &str, seed: &str| Verdict { facts: Facts { signing_key: Some(key(seed)), ..signed_by(did).facts }, ..signed_by(did) };
    let shared = policy.decide(&img, &[with_key(A, "same"), with_key(B, "same")], now);
    assert_eq!((shared.outcome, shared.reason), (Outcome::Reject, Reason::TooFewSignatures), "{}", shared.message);
    let distinct = policy.decide(&img, &[with_key(A, "one"), with_key(B, "two")], now);
    assert_eq!((distinct.outcome, distinct.reason), (Outcome::Admit, Reason::Verified), "{}", distinct.message);
}

#[test]
fn failures_are_explained_by_the_most_telling_verdict() {
    let policy = Policy::parse(WINDOWED).unwrap();
    let img = image("atcr.io/x.test/prod-api");
    let now = micros("2025-06-01T00:00:00Z");
    let decision = policy.decide(&img, &[failed(B, Reason::NetworkError), failed(A, Reason::SignatureInvalid)], now);
    assert_eq!(decision.reason, Reason::SignatureInvalid);
    let decision = policy.decide(&img, &[failed(B, Reason::NetworkError)], now);
    assert_eq!(decision.reason, Reason::NetworkError, "a network failure is never reported as a bad signature");
    // Failures of other candidates (an untrusted publisher in the path, say) never outweigh
    // enough trusted signers.
    let decision = policy.decide(&img, &[failed("did:plc:zzzzzzzzzzzzzzzzzzzzzzzz", Reason::UntrustedSigner), signed_by(A), signed_by(B)], now);
    assert_eq!((decision.outcome, decision.reason), (Outcome::Admit, Reason::Verified));
}

#[test]
fn no_default_rejects_unmatched_images() {
    let policy = Policy::parse(WINDOWED).unwrap();
    assert!(policy.default.is_none());
    assert!(policy.warnings.iter().any(|w| w.message.contains("no `default`")));
    let decision = policy.decide(&image("docker.io/library/nginx"), &[], 0);
    assert_eq!((decision.outcome, decision.reason), (Outcome::Reject, Reason::NoMatchingRule));
}

fn glob_to_regex(glob: &str) -> regex::Regex {
    let mut pattern = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '*' {
            if chars.peek() == Some(&'*') {
                chars.next();
                pattern.push_str(".*");
            } else {
                pattern.push_str("[^/]*");
            }
        } else {
            pattern.push_str(&regex::escape(&c.to_string()));
        }
    }
    pattern.push('$');
    regex::Regex::new(&pattern).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn scope_glob_agrees_with_regex_oracle(glob in "[ab/*.]{0,12}", text in "[ab/.]{0,12}") {
        let matched = scope_matches(&glob, &text);
        prop_assert_eq!(matched, glob_to_regex(&glob).is_match(&text), "{} vs {}", glob, text);
        // Without `**`, nothing crosses a `/`: a match means the same number of segments.
        if matched && !glob.contains("**") {
            prop_assert_eq!(glob.matches('/').count(), text.matches('/').count());
        }
    }

    #[test]
    fn a_path_matches_itself_and_its_generalizations(segments in proptest::collection::vec("[a-z0-9]{1,6}", 2..6), index in any::<usize>()) {
        let path = segments.join("/");
        prop_assert!(scope_matches(&path, &path));
        prop_assert!(scope_matches("**", &path));
        let i = index % segments.len();
        let mut starred = segments.clone();
        starred[i] = "*".into();
        prop_assert!(scope_matches(&starred.join("/"), &path));
        let head = format!("{}/**", segments[0]);
        prop_assert!(scope_matches(&head, &path));
    }
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_key() {
    let text = "\u{feff}version: \"1.0\"\ntrustedDIDs: {}\npolicies: []\ndefault: { require: { signature: false }, action: enforce }\n";
    let policy = Policy::parse(text);
    assert!(policy.is_ok(), "{:?}", policy.err());
}
