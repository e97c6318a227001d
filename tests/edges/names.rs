//! Class: names. One registry and repository has many spellings; every comparison must see one.
//! A reference that cannot be canonicalized is refused, never defaulted.

use atproto_sig_core::policy::Policy;
use atproto_sig_core::reference::ImageRef;

#[test]
fn normalization_matches_the_distribution_tables() {
    let table = std::fs::read_to_string(crate::data("references.tsv")).unwrap();
    let mut checked = 0;
    for line in table.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (input, expected) = line.split_once('\t').unwrap();
        match (ImageRef::parse(input), expected) {
            (Err(_), "!invalid") => {}
            (Ok(r), "!invalid") => panic!("{input:?} must be refused, got {r}"),
            (Ok(r), want) => assert_eq!(r.to_string(), want, "{input:?}"),
            (Err(e), want) => panic!("{input:?} must be {want}: {e}"),
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} cases read");
}

const POLICY: &str = r#"
version: "1.0"
trustedDIDs:
  did:plc:ewvi7nxzyoun6zhxrhs64oiz: { name: "release bot" }
policies:
  - name: prod
    scope: "atcr.io/*/prod-*"
    require: { signature: true }
    action: enforce
  - name: hub
    scope: "docker.io/library/*"
    require: { signature: false }
    action: enforce
  - name: spelled-with-port
    scope: "registry.example.com:443/**"
    require: { signature: false }
    action: enforce
  - name: loopback
    scope: "127.0.0.1:5000/**"
    require: { signature: false }
    action: enforce
default:
  require: { signature: true }
  action: enforce
"#;

/// Every spelling of one repository gets the same rule.
#[test]
fn every_spelling_of_a_repository_gets_one_rule() {
    let policy = Policy::parse(POLICY).unwrap();
    let rule = |r: &str| policy.rule_for(&ImageRef::parse(r).unwrap()).rule.map(|r| r.name.clone()).unwrap();
    for spelling in ["atcr.io/alice/prod-api:1", "atcr.io:443/alice/prod-api:1", "ATCR.IO/alice/prod-api", "Atcr.Io:443/alice/prod-api"] {
        assert_eq!(rule(spelling), "prod", "{spelling}");
    }
    for spelling in
        ["nginx", "docker.io/nginx", "docker.io/library/nginx", "index.docker.io/nginx", "registry-1.docker.io/library/nginx", "registry-1.docker.io:443/nginx"]
    {
        assert_eq!(rule(spelling), "hub", "{spelling}");
    }
    for spelling in ["registry.example.com/a/b", "registry.example.com:443/a/b"] {
        assert_eq!(rule(spelling), "spelled-with-port", "{spelling}");
    }
    // A different port is a different registry.
    assert_eq!(rule("registry.example.com:5000/a/b"), "default");
    // Every address form Go's resolver (so containerd) dials as 127.0.0.1 is that registry.
    for spelling in ["127.0.0.1:5000/app", "[::ffff:7f00:1]:5000/app", "[::FFFF:7F00:1]:5000/app", "[0:0:0:0:0:ffff:7f00:1]:5000/app"] {
        assert_eq!(rule(spelling), "loopback", "{spelling}");
    }
    // An IPv4-compatible address (deprecated, not mapped) is another host.
    assert_eq!(rule("[::7f00:1]:5000/app"), "default");
}
