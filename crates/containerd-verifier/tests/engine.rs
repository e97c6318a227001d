//! The decision engine in-process: no server, no socket. Remote answers come from an in-memory
//! web (`MemoryFetch`, `MemoryResolve`) built from genuine test identities and signed
//! repositories, so each test chooses exactly what PLC, the PDS, DNS and the registry say.
//! Every reason code a pull can get is produced here, and the message a person reads for it is
//! snapshot-tested (`tests/snapshots/engine__*.snap`): a change of wording is a reviewed diff.

use std::sync::Arc;
use std::time::Duration;

use atproto_sig_core::cbor::{Map, Value};
use atproto_sig_core::crypto::Curve;
use atproto_sig_core::record::{MANIFEST_COLLECTION, manifest_value};
use atproto_sig_core::testkit::{Identity, T0_MICROS, Tamper, TestRepo, digest_of};
use atproto_sig_core::{Reason, policy::Policy};
use containerd_verifier::config::Config;
use containerd_verifier::engine::{self, Answer, Class, PolicyError, Request};
use containerd_verifier::remote::{Deadline, DnsError, InFlight, NetError, Remote};
use containerd_verifier::testkit::{MemoryFetch, MemoryResolve, query};

const PLC: &str = "https://plc.test";
const MINUTE: i64 = 60_000_000;
const DAY: i64 = 86_400_000_000;

/// One node and the world it sees.
struct World {
    _dir: tempfile::TempDir,
    fetch: Arc<MemoryFetch>,
    resolve: Arc<MemoryResolve>,
    config: Config,
    policy: Result<Policy, PolicyError>,
}

fn policy_for(dids: &[(&str, &str)], rule: &str) -> String {
    let trusted: String = dids.iter().map(|(did, extra)| format!("  {did}: {{ name: signer{extra} }}\n")).collect();
    format!("version: 1.0\ntrustedDIDs:\n{trusted}policies:\n{rule}")
}

const ENFORCE: &str = "  - name: prod\n    scope: \"registry.test/**\"\n    require: { signature: true }\n    action: enforce\n";

impl World {
    fn new(policy: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("docker.json"), "{}").unwrap();
        let config = Config {
            cache_dir: dir.path().join("cache"),
            plc_directory: PLC.into(),
            containerd_hosts_dir: dir.path().join("certs.d"),
            docker_config: Some(dir.path().join("docker.json")),
            atproto_registries: vec!["atcr.test".into()],
            ..Config::default()
        };
        World {
            _dir: dir,
            fetch: Arc::new(MemoryFetch::new()),
            resolve: Arc::new(MemoryResolve::new()),
            config,
            policy: Policy::parse(policy).map_err(|issues| PolicyError::Invalid(issues.iter().map(|i| i.render("policy.yaml", "error")).collect())),
        }
    }

    fn trusting(repo: &TestRepo) -> World {
        World::new(&policy_for(&[(&repo.identity.did, "")], ENFORCE))
    }

    /// PLC serves the identity's DID document.
    fn publish(&self, identity: &Identity) {
        self.fetch.serve(&format!("{PLC}/{}", identity.did), 200, identity.did_document_multikey());
        self.fetch.serve(&format!("{PLC}/{}/log/audit", identity.did), 200, identity.audit_log());
    }

    fn proof_url(identity: &Identity, rkey: &str) -> String {
        format!("{}/xrpc/com.atproto.sync.getRecord?{}", identity.pds, query(&[("did", &identity.did), ("collection", MANIFEST_COLLECTION), ("rkey", rkey)]))
    }

    fn list_url(identity: &Identity) -> String {
        format!(
            "{}/xrpc/com.atproto.repo.listRecords?{}",
            identity.pds,
            query(&[("repo", &identity.did), ("collection", MANIFEST_COLLECTION), ("limit", "100")])
        )
    }

    /// The PDS serves this proof for `rkey`, and lists no record.
    fn serve_proof(&self, repo: &TestRepo, rkey: &str, car: Vec<u8>) {
        self.fetch.serve(&World::proof_url(&repo.identity, rkey), 200, car);
        self.fetch.serve(&World::list_url(&repo.identity), 200, r#"{"records":[]}"#);
    }

    /// The identity published and the PDS serving `rkey` with `tamper`.
    fn serve(&self, repo: &TestRepo, rkey: &str, tamper: &Tamper) {
        self.publish(&repo.identity);
        self.serve_proof(repo, rkey, repo.proof_with(MANIFEST_COLLECTION, rkey, tamper));
    }

    fn decide_at(&self, reference: &str, digest: &str, descriptor: Option<&[u8]>, now: i64, budget: Duration) -> Answer {
        self.decide_over(&Remote::new(self.fetch.clone(), self.resolve.clone()), reference, digest, descriptor, now, budget)
    }

    fn decide_over(&self, remote: &Remote, reference: &str, digest: &str, descriptor: Option<&[u8]>, now: i64, budget: Duration) -> Answer {
        let request = Request {
            reference,
            digest: Some(digest),
            descriptor,
            policy: self.policy.as_ref(),
            config: &self.config,
            now_micros: now,
            deadline: Deadline::after(budget),
            in_flight: &InFlight::default(),
        };
        engine::decide(&request, remote)
    }

    fn decide(&self, reference: &str, digest: &str) -> Answer {
        self.decide_at(reference, digest, None, T0_MICROS + MINUTE, Duration::from_secs(8))
    }
}

fn repo_with_manifest(seed: &str, curve: Curve) -> (TestRepo, String, String) {
    let mut repo = TestRepo::new(Identity::new(curve, seed));
    let digest = digest_of(seed);
    let rkey = repo.put_manifest(&digest, "app");
    repo.put_filler(12);
    (repo, digest, rkey)
}

thread_local! {
    /// The reasons checked by `expect` on this thread.
    static SEEN: std::cell::RefCell<Vec<Reason>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks the reason and snapshots the message (named by the reason code).
fn expect(answer: &Answer, reason: Reason) {
    assert_eq!(answer.decision.reason, reason, "{}\nnotes: {:#?}", answer.decision.message, answer.notes);
    insta::assert_snapshot!(reason.code(), answer.decision.message);
    SEEN.with(|seen| seen.borrow_mut().push(reason));
}

fn verified_and_the_cached_proof_is_used_without_a_request() {
    let (repo, digest, rkey) = repo_with_manifest("verified", Curve::K256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    let answer = world.decide("registry.test/team/app:1", &digest);
    expect(&answer, Reason::Verified);
    assert!(answer.requests.identity >= 2, "{:?}", answer.requests);
    // The facts the admission rests on: the signed commit and rev, and the record.
    let facts = &answer.verdicts.first().expect("one verdict").facts;
    assert_eq!(facts.did, repo.identity.did);
    assert!(facts.commit.is_some() && facts.rev.is_some());
    assert_eq!(facts.record.as_ref().map(|r| r.digest.as_str()), Some(digest.as_str()));
    // Warm: the same decision from the cache, no request to PLC or the PDS.
    let warm = world.decide("registry.test/team/app:1", &digest);
    assert_eq!((warm.decision.reason, warm.requests.identity), (Reason::Verified, 0), "{}", warm.decision.message);
    assert_eq!(warm.class(), Class::Admitted);
}

fn not_required_and_no_matching_rule_make_no_request() {
    let (repo, digest, _) = repo_with_manifest("not-required", Curve::K256);
    let rule = "  - name: base\n    scope: \"registry.test/base/*\"\n    require: { signature: false }\n    action: enforce\n";
    let world = World::new(&policy_for(&[(&repo.identity.did, "")], rule));
    expect(&world.decide("registry.test/base/alpine:3", &digest), Reason::NotRequired);
    let other = world.decide("elsewhere.test/app:1", &digest);
    expect(&other, Reason::NoMatchingRule);
    assert!(world.fetch.requested().is_empty(), "{:?}", world.fetch.requested());
}

fn identity_unresolved_when_the_handle_in_the_path_resolves_nowhere() {
    let rule = "  - name: atcr\n    scope: \"atcr.test/**\"\n    require: { signature: true }\n    action: enforce\n";
    let world = World::new(&policy_for(&[], rule));
    // No _atproto TXT record (in-memory DNS) and no https://nobody.test/.well-known/atproto-did.
    let answer = world.decide("atcr.test/nobody.test/app:1", &digest_of("identity"));
    expect(&answer, Reason::IdentityUnresolved);
    assert!(world.fetch.requested().iter().any(|u| u == "https://nobody.test/.well-known/atproto-did"), "{:?}", world.fetch.requested());
}

fn a_handle_in_the_path_resolves_through_dns_and_is_checked_both_ways() {
    let (repo, digest, rkey) = repo_with_manifest("handle-path", Curve::K256);
    let rule = "  - name: atcr\n    scope: \"atcr.test/**\"\n    require: { signature: true }\n    action: enforce\n";
    let world = World::new(&policy_for(&[(&repo.identity.did, "")], rule));
    world.serve(&repo, &rkey, &Tamper::None);
    world.resolve.serve(&format!("_atproto.{}", repo.identity.handle), vec![format!("did={}", repo.identity.did)]);
    let answer = world.decide(&format!("atcr.test/{}/app:1", repo.identity.handle), &digest);
    assert_eq!(answer.decision.reason, Reason::Verified, "{}\n{:#?}", answer.decision.message, answer.notes);
    // Verified through the path's identity, not only as a trusted DID: no identity failure noted.
    assert!(!answer.notes.iter().any(|n| n.starts_with("identity in the image path")), "{:#?}", answer.notes);

    // The same handle whose DNS fails (and no well-known): a network reason, never "unresolved".
    let world = World::new(&policy_for(&[], rule));
    world.resolve.fail(&format!("_atproto.{}", repo.identity.handle), DnsError::NoServer);
    let answer = world.decide(&format!("atcr.test/{}/app:1", repo.identity.handle), &digest);
    assert_eq!(answer.decision.reason, Reason::NetworkError, "{}", answer.decision.message);
    assert_eq!(answer.class(), Class::Undecided);
}

fn did_unresolved_when_plc_does_not_know_the_did() {
    let (repo, digest, _) = repo_with_manifest("unknown-did", Curve::K256);
    let world = World::trusting(&repo);
    world.fetch.serve(&format!("{PLC}/{}", repo.identity.did), 404, "not found");
    expect(&world.decide("registry.test/team/app:1", &digest), Reason::DidUnresolved);
}

fn did_document_invalid_for_a_document_of_another_did() {
    let (repo, digest, _) = repo_with_manifest("wrong-doc", Curve::K256);
    let other = Identity::new(Curve::K256, "someone-else");
    let world = World::trusting(&repo);
    world.fetch.serve(&format!("{PLC}/{}", repo.identity.did), 200, other.did_document_multikey());
    expect(&world.decide("registry.test/team/app:1", &digest), Reason::DidDocumentInvalid);
}

fn record_not_found_when_the_repository_has_no_record_for_the_digest() {
    let (repo, _, _) = repo_with_manifest("no-record", Curve::K256);
    let world = World::trusting(&repo);
    world.publish(&repo.identity);
    world.fetch.serve(&World::list_url(&repo.identity), 200, r#"{"records":[]}"#);
    let unsigned = digest_of("never-pushed");
    let rkey = unsigned.trim_start_matches("sha256:");
    world.fetch.serve(&World::proof_url(&repo.identity, rkey), 400, r#"{"error":"RecordNotFound"}"#);
    expect(&world.decide("registry.test/team/app:1", &unsigned), Reason::RecordNotFound);
}

fn record_deleted_once_the_record_this_node_verified_is_gone() {
    let (mut repo, digest, rkey) = repo_with_manifest("revoked", Curve::K256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    assert_eq!(world.decide("registry.test/team/app:1", &digest).decision.reason, Reason::Verified);
    // The pusher deletes the record; the PDS now serves the signed absence proof.
    repo.delete(MANIFEST_COLLECTION, &rkey);
    repo.now_micros += 10 * MINUTE;
    world.serve_proof(&repo, &rkey, repo.proof(MANIFEST_COLLECTION, &rkey));
    let later = world.decide_at("registry.test/team/app:1", &digest, None, repo.now_micros + MINUTE, Duration::from_secs(8));
    expect(&later, Reason::RecordDeleted);
}

fn proof_malformed_for_bytes_that_are_not_a_car() {
    let (repo, digest, rkey) = repo_with_manifest("garbage", Curve::K256);
    let world = World::trusting(&repo);
    world.publish(&repo.identity);
    world.serve_proof(&repo, &rkey, b"this is not a CAR file".to_vec());
    expect(&world.decide("registry.test/team/app:1", &digest), Reason::ProofMalformed);
}

fn signature_invalid_did_mismatch_and_rev_in_future_from_tampered_commits() {
    let cases = [
        (Tamper::WrongKey, Reason::SignatureInvalid, "tamper-key"),
        (Tamper::CommitDid("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into()), Reason::DidMismatch, "tamper-did"),
        (Tamper::FutureRev, Reason::RevInFuture, "tamper-rev"),
    ];
    for (tamper, reason, seed) in cases {
        let (repo, digest, rkey) = repo_with_manifest(seed, Curve::P256);
        let world = World::trusting(&repo);
        world.serve(&repo, &rkey, &tamper);
        // The clock is the repo's own: a rev an hour ahead is beyond the 5-minute skew.
        let answer = world.decide_at("registry.test/team/app:1", &digest, None, repo.now_micros, Duration::from_secs(8));
        expect(&answer, reason);
    }
}

fn record_invalid_digest_mismatch_and_repository_mismatch_from_what_the_record_says() {
    // A record under the digest's key that is not a manifest.
    let mut repo = TestRepo::new(Identity::new(Curve::K256, "bad-record"));
    let digest = digest_of("bad-record");
    let rkey = digest.trim_start_matches("sha256:").to_owned();
    let mut junk = Map::default();
    junk.insert("$type", Value::Text(MANIFEST_COLLECTION.into()));
    repo.put(MANIFEST_COLLECTION, &rkey, &Value::Map(junk));
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    expect(&world.decide("registry.test/team/app:1", &digest), Reason::RecordInvalid);

    // A record under the digest's key that names another digest.
    let mut repo = TestRepo::new(Identity::new(Curve::K256, "other-digest"));
    let digest = digest_of("other-digest");
    let rkey = digest.trim_start_matches("sha256:").to_owned();
    repo.put(
        MANIFEST_COLLECTION,
        &rkey,
        &manifest_value(&digest_of("something-else"), "app", "application/vnd.oci.image.manifest.v1+json", "2026-01-01T00:00:00Z"),
    );
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    expect(&world.decide("registry.test/team/app:1", &digest), Reason::DigestMismatch);

    // The record is for another repository than the one pulled.
    let (repo, digest, rkey) = repo_with_manifest("other-repository", Curve::K256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    expect(&world.decide("registry.test/team/not-app:1", &digest), Reason::RepositoryMismatch);
}

fn signer_expired_and_too_few_signatures_from_the_policy() {
    let (repo, digest, rkey) = repo_with_manifest("expired", Curve::K256);
    let world = World::new(&policy_for(&[(&repo.identity.did, ", expiresAt: \"2025-06-01T00:00:00Z\"")], ENFORCE));
    world.serve(&repo, &rkey, &Tamper::None);
    expect(&world.decide("registry.test/team/app:1", &digest), Reason::SignerExpired);
    let looked_up: Vec<String> = world.fetch.requested().into_iter().filter(|u| !u.starts_with("https://registry.test/")).collect();
    assert!(looked_up.is_empty(), "an expired signer is never looked up: {looked_up:?}");

    let two = "  - name: prod\n    scope: \"registry.test/**\"\n    require: { signature: true, minSignatures: 2 }\n    action: enforce\n";
    let world = World::new(&policy_for(&[(&repo.identity.did, ""), ("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", "")], two));
    world.serve(&repo, &rkey, &Tamper::None);
    expect(&world.decide("registry.test/team/app:1", &digest), Reason::TooFewSignatures);
}

fn network_error_and_deadline_are_never_signature_verdicts() {
    let (repo, digest, rkey) = repo_with_manifest("network", Curve::K256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    world.fetch.fail(&format!("{PLC}/{}", repo.identity.did), NetError::Connect("https://plc.test: connection refused".into()));
    let answer = world.decide("registry.test/team/app:1", &digest);
    expect(&answer, Reason::NetworkError);
    assert_eq!(answer.class(), Class::Undecided);

    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    let late = world.decide_at("registry.test/team/app:1", &digest, None, T0_MICROS + MINUTE, Duration::ZERO);
    expect(&late, Reason::DeadlineExceeded);
    assert_eq!(late.class(), Class::Undecided);
}

fn config_invalid_and_invalid_request_are_refused_before_any_lookup() {
    let world = World::new("version: 1.0\npolicies: [ {name: x} ]\n");
    let answer = world.decide("registry.test/team/app:1", &digest_of("x"));
    expect(&answer, Reason::ConfigInvalid);
    assert!(answer.refused.is_some());

    let world = World::new(&policy_for(&[], ENFORCE));
    let answer = world.decide("registry.test/team/app:1", "sha256:not-a-digest");
    expect(&answer, Reason::InvalidRequest);
    assert!(world.fetch.requested().is_empty());
}

fn a_descriptor_naming_another_digest_is_refused() {
    let world = World::new(&policy_for(&[], ENFORCE));
    let descriptor = format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1}}"#, digest_of("stdin"));
    let answer = world.decide_at("registry.test/team/app:1", &digest_of("argv"), Some(descriptor.as_bytes()), T0_MICROS, Duration::from_secs(8));
    assert_eq!(answer.decision.reason, Reason::DigestMismatch);
    insta::assert_snapshot!("digest-mismatch-descriptor", answer.decision.message);
    assert_eq!(answer.class(), Class::Rejected);
}

fn proof_too_old_offline_measured_by_the_signed_rev() {
    let (repo, digest, rkey) = repo_with_manifest("too-old", Curve::K256);
    let mut world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    assert_eq!(world.decide("registry.test/team/app:1", &digest).decision.reason, Reason::Verified);
    // Ten days later the node is offline; its proof was committed ten days ago (> 7 days).
    world.config.offline = true;
    let answer = world.decide_at("registry.test/team/app:1", &digest, None, repo.now_micros + 10 * DAY, Duration::from_secs(8));
    expect(&answer, Reason::ProofTooOld);
}

fn proof_rolled_back_when_the_pds_serves_an_older_commit() {
    let (mut repo, digest, rkey) = repo_with_manifest("rollback", Curve::K256);
    let old = repo.proof(MANIFEST_COLLECTION, &rkey);
    repo.now_micros += 60 * MINUTE;
    repo.put_filler(13);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    let now = repo.now_micros + MINUTE;
    assert_eq!(world.decide_at("registry.test/team/app:1", &digest, None, now, Duration::from_secs(8)).decision.reason, Reason::Verified);
    // Past proof_ttl, the PDS (or someone in between) answers with the older commit.
    world.serve_proof(&repo, &rkey, old);
    let answer = world.decide_at("registry.test/team/app:1", &digest, None, now + 10 * MINUTE, Duration::from_secs(8));
    expect(&answer, Reason::ProofRolledBack);
}

/// Each scenario is a test of its own, and [`every_reason_code_is_covered`] runs them all.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod scenario {
            $( #[test] fn $name() { super::$name(); } )*
        }
        const SCENARIOS: &[fn()] = &[$($name),*];
    };
}

scenarios!(
    verified_and_the_cached_proof_is_used_without_a_request,
    not_required_and_no_matching_rule_make_no_request,
    identity_unresolved_when_the_handle_in_the_path_resolves_nowhere,
    a_handle_in_the_path_resolves_through_dns_and_is_checked_both_ways,
    did_unresolved_when_plc_does_not_know_the_did,
    did_document_invalid_for_a_document_of_another_did,
    record_not_found_when_the_repository_has_no_record_for_the_digest,
    record_deleted_once_the_record_this_node_verified_is_gone,
    proof_malformed_for_bytes_that_are_not_a_car,
    signature_invalid_did_mismatch_and_rev_in_future_from_tampered_commits,
    record_invalid_digest_mismatch_and_repository_mismatch_from_what_the_record_says,
    signer_expired_and_too_few_signatures_from_the_policy,
    network_error_and_deadline_are_never_signature_verdicts,
    config_invalid_and_invalid_request_are_refused_before_any_lookup,
    a_descriptor_naming_another_digest_is_refused,
    proof_too_old_offline_measured_by_the_signed_rev,
    proof_rolled_back_when_the_pds_serves_an_older_commit,
    a_host_that_asks_us_to_wait_is_rate_limited_and_not_asked_again,
);

/// A PDS answering 429 with `Retry-After` (through the `Polite` fetch every real `Remote` has):
/// undecided as `rate-limited`, with the wait; the host is not asked again before then; a
/// cached proof within `max_stale` stands in meanwhile.
fn a_host_that_asks_us_to_wait_is_rate_limited_and_not_asked_again() {
    use containerd_verifier::remote::polite::Polite;
    let (repo, digest, rkey) = repo_with_manifest("rate-limited", Curve::P256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    let proof = World::proof_url(&repo.identity, &rkey);
    world.fetch.serve_with_headers(&proof, 429, vec![("retry-after".into(), "120".into())], "RateLimitExceeded");
    let remote = Remote::new(Arc::new(Polite::new(world.fetch.clone(), None)), world.resolve.clone());
    let answer = world.decide_over(&remote, "registry.test/team/app:1", &digest, None, T0_MICROS + MINUTE, Duration::from_secs(8));
    expect(&answer, Reason::RateLimited);
    assert_eq!(answer.class(), Class::Undecided);
    assert!(answer.decision.message.contains("wait 120s"), "{}", answer.decision.message);
    let asked = world.fetch.requested().iter().filter(|u| **u == proof).count();
    let again = world.decide_over(&remote, "registry.test/team/app:1", &digest, None, T0_MICROS + MINUTE, Duration::from_secs(8));
    // (the wait it names counts down: the reason alone is compared)
    assert_eq!(again.decision.reason, Reason::RateLimited, "{}", again.decision.message);
    assert_eq!(world.fetch.requested().iter().filter(|u| **u == proof).count(), asked, "not asked before the time it named");

    // With a proof cached earlier (past its TTL, within max_stale), it stands in meanwhile.
    let warm = World::trusting(&repo);
    warm.serve(&repo, &rkey, &Tamper::None);
    assert_eq!(warm.decide("registry.test/team/app:1", &digest).decision.reason, Reason::Verified);
    warm.fetch.serve_with_headers(&proof, 429, vec![("retry-after".into(), "120".into())], "RateLimitExceeded");
    let remote = Remote::new(Arc::new(Polite::new(warm.fetch.clone(), None)), warm.resolve.clone());
    let later = T0_MICROS + MINUTE + 3_600_000_000;
    let stale = warm.decide_over(&remote, "registry.test/team/app:1", &digest, None, later, Duration::from_secs(8));
    assert_eq!(stale.decision.reason, Reason::Verified, "{}", stale.decision.message);
}

/// Every reason code a decision can carry is produced by the scenarios, except
/// `untrusted-signer`: the engine never fetches a signer the rule does not trust (an
/// invariant), so only a library caller handing the core's `Policy::decide` verdicts of its own
/// can get it (core `tests/policy.rs` covers that).
#[test]
fn every_reason_code_is_covered() {
    for scenario in SCENARIOS {
        scenario();
    }
    let seen = SEEN.with(|seen| seen.borrow().clone());
    for reason in Reason::ALL {
        assert!(reason == Reason::UntrustedSigner || seen.contains(&reason), "no engine scenario produces {}", reason.code());
    }
    assert!(!seen.contains(&Reason::UntrustedSigner));
}

/// Many decisions in one process, as a server makes them: 50 at once over one shared `Remote`,
/// against slow answers (the PLC directory answers after 3 s, far past every budget), one of
/// them with the DID document's cache lock held by a stuck refresher. Each decision keeps its
/// own deadline (no watchdog, no `process::exit`): every one answers within its budget plus a
/// small margin, as undecided, never as a verdict about signatures.
#[test]
fn fifty_concurrent_decisions_each_answer_within_their_budget() {
    let (repo, digest, rkey) = repo_with_manifest("concurrent", Curve::P256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    world.fetch.delay(&format!("{PLC}/{}", repo.identity.did), Duration::from_secs(3));
    // A refresher holding the DID document's lock (as another process would), never releasing it.
    let held = hold_did_lock(&world, &repo.identity.did);
    let budgets: Vec<Duration> = (0..50).map(|i| Duration::from_millis(300 + 20 * (i % 10))).collect();
    let answers: Vec<(Duration, Duration, Answer)> = std::thread::scope(|scope| {
        let threads: Vec<_> = budgets
            .iter()
            .map(|&budget| {
                let (world, digest) = (&world, &digest);
                scope.spawn(move || {
                    let started = std::time::Instant::now();
                    let answer = world.decide_at("registry.test/team/app:1", digest, None, T0_MICROS + MINUTE, budget);
                    (budget, started.elapsed(), answer)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("a decision thread panicked")).collect()
    });
    drop(held);
    assert_eq!(answers.len(), 50);
    for (budget, took, answer) in &answers {
        // 150 ms of margin for 50 threads on two cores: the budget holds inside the engine.
        assert!(*took <= *budget + Duration::from_millis(150), "answered in {took:?} with a {budget:?} budget: {}", answer.decision.message);
        assert!(matches!(answer.decision.reason, Reason::DeadlineExceeded | Reason::NetworkError), "{:?}: {}", answer.decision.reason, answer.decision.message);
        assert_eq!(answer.class(), Class::Undecided);
    }
    // The stuck lock was said in the decisions' own notes, not on the process's stderr.
    assert!(answers.iter().any(|(_, _, a)| a.notes.iter().any(|n| n.contains("held by another refresher"))), "{:?}", answers[0].2.notes);
}

/// Takes the cache lock of `did`'s document entry through the cache itself (as a refresher in
/// another process would hold it) and keeps it while the returned file lives.
fn hold_did_lock(world: &World, did: &str) -> std::fs::File {
    use containerd_verifier::material::store::{Cache, Kind};
    let cache = Cache::new(&world.config.cache_dir);
    cache.lock(Kind::Did, &[did], Deadline::after(Duration::from_secs(1))).expect("the lock is free at first")
}

/// A proof refused as `rev-in-future` (signed, but dated an hour ahead) is never stored: once
/// the PDS serves the genuine proof, it admits, and nothing reads as `proof-rolled-back`.
#[test]
fn a_proof_refused_as_rev_in_future_leaves_nothing_behind() {
    let (repo, digest, rkey) = repo_with_manifest("future-kept", Curve::K256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::FutureRev);
    let first = world.decide_at("registry.test/team/app:1", &digest, None, repo.now_micros, Duration::from_secs(8));
    assert_eq!(first.decision.reason, Reason::RevInFuture, "{}", first.decision.message);
    world.serve(&repo, &rkey, &Tamper::None);
    let genuine = world.decide_at("registry.test/team/app:1", &digest, None, repo.now_micros + MINUTE, Duration::from_secs(8));
    assert_eq!(genuine.decision.reason, Reason::Verified, "{}", genuine.decision.message);
}

/// A DID document over the size cap, or naming a plain-http PDS, is the document's fault
/// (`did-document-invalid`), never a network failure or a malformed proof.
#[test]
fn an_oversized_document_or_a_plain_http_pds_is_the_documents_fault() {
    let (repo, digest, rkey) = repo_with_manifest("doc-fault", Curve::K256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    world.fetch.serve(&format!("{PLC}/{}", repo.identity.did), 200, vec![b' '; 300 << 10]);
    let answer = world.decide("registry.test/team/app:1", &digest);
    assert_eq!(answer.decision.reason, Reason::DidDocumentInvalid, "{}", answer.decision.message);

    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    let http_pds = atproto_sig_core::did::render_multikey_document(
        &repo.identity.did,
        &repo.identity.public_key(),
        Some(&repo.identity.handle),
        Some("http://pds.example.com"),
    )
    .to_string();
    world.fetch.serve(&format!("{PLC}/{}", repo.identity.did), 200, http_pds);
    let answer = world.decide("registry.test/team/app:1", &digest);
    assert_eq!(answer.decision.reason, Reason::DidDocumentInvalid, "{}", answer.decision.message);
    assert!(answer.decision.message.contains("not https"), "{}", answer.decision.message);
}

/// After a genuine key rotation the cached document is simply behind: a signature that fails
/// against the cached key is checked once more against a freshly fetched document (online),
/// so the node admits as a fresh node would, within the document's TTL.
#[test]
fn a_key_rotation_is_followed_without_waiting_for_the_cache() {
    let (mut repo, digest, rkey) = repo_with_manifest("rotation", Curve::K256);
    let mut world = World::trusting(&repo);
    world.config.did_ttl = containerd_verifier::config::Span(Duration::from_secs(3600));
    world.serve(&repo, &rkey, &Tamper::None);
    assert_eq!(world.decide("registry.test/team/app:1", &digest).decision.reason, Reason::Verified);
    // The owner rotates the signing key; the directory and the PDS follow at once.
    repo.identity.signing = atproto_sig_core::crypto::PrivateKey::from_seed(Curve::K256, "rotation/new");
    repo.now_micros += 10 * MINUTE;
    repo.put_filler(1);
    world.serve(&repo, &rkey, &Tamper::None);
    // Past proof_ttl but within did_ttl: the proof is fetched, the document would be cached.
    let answer = world.decide_at("registry.test/team/app:1", &digest, None, T0_MICROS + 6 * MINUTE, Duration::from_secs(8));
    assert_eq!(answer.decision.reason, Reason::Verified, "{}\n{:#?}", answer.decision.message, answer.notes);
    assert!(answer.notes.iter().any(|n| n.contains("fetched again")), "{:#?}", answer.notes);
    // A forged signature (a key the directory never names) is still refused, after one refetch.
    world.serve(&repo, &rkey, &Tamper::WrongKey);
    let forged = world.decide_at("registry.test/team/app:1", &digest, None, T0_MICROS + 20 * MINUTE, Duration::from_secs(8));
    assert_eq!(forged.decision.reason, Reason::SignatureInvalid, "{}", forged.decision.message);
}

/// Turning strict_plc on does not block every cached signer until the cache expires: a cached
/// document without its audit log is not valid under the new setting and is fetched again.
#[test]
fn turning_strict_plc_on_refetches_documents_cached_without_an_audit_log() {
    let (repo, digest, rkey) = repo_with_manifest("strict-on", Curve::K256);
    let mut world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    assert_eq!(world.decide("registry.test/team/app:1", &digest).decision.reason, Reason::Verified);
    world.config.strict_plc = true;
    let answer = world.decide("registry.test/team/app:1", &digest);
    assert_eq!(answer.decision.reason, Reason::Verified, "{}", answer.decision.message);
    assert!(world.fetch.requested().iter().any(|u| u.ends_with("/log/audit")), "the audit log was fetched");
}

/// A cached locator is a hint: when the record it names was deleted and the same digest
/// signed again under another key (moved), the node looks again and admits, as a fresh node
/// would; with no record anywhere it is still revoked.
#[test]
fn a_locator_that_no_longer_matches_is_looked_past() {
    let (mut repo, digest, rkey) = repo_with_manifest("moved", Curve::K256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    assert_eq!(world.decide("registry.test/team/app:1", &digest).decision.reason, Reason::Verified);
    // The record moves: deleted under its key, written again under another.
    repo.now_micros += 10 * MINUTE;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    let moved = "3moved0000000";
    repo.put(MANIFEST_COLLECTION, moved, &manifest_value(&digest, "app", "application/vnd.oci.image.manifest.v1+json", "2026-01-01T00:10:00Z"));
    world.serve(&repo, &rkey, &Tamper::None);
    world.fetch.serve(&World::proof_url(&repo.identity, moved), 200, repo.proof(MANIFEST_COLLECTION, moved));
    let listed = serde_json::json!({"records": [{"uri": format!("at://{}/{MANIFEST_COLLECTION}/{moved}", repo.identity.did), "value": {"digest": digest, "repository": "app"}}]});
    world.fetch.serve(&World::list_url(&repo.identity), 200, listed.to_string());
    let answer = world.decide_at("registry.test/team/app:1", &digest, None, T0_MICROS + 20 * MINUTE, Duration::from_secs(8));
    assert_eq!(answer.decision.reason, Reason::Verified, "{}", answer.decision.message);
    // Gone everywhere: revoked.
    repo.now_micros += 10 * MINUTE;
    repo.delete(MANIFEST_COLLECTION, moved);
    world.serve(&repo, moved, &Tamper::None);
    world.fetch.serve(&World::proof_url(&repo.identity, &rkey), 200, repo.proof(MANIFEST_COLLECTION, &rkey));
    let answer = world.decide_at("registry.test/team/app:1", &digest, None, T0_MICROS + 40 * MINUTE, Duration::from_secs(8));
    assert_eq!(answer.decision.reason, Reason::RecordDeleted, "{}", answer.decision.message);
}

/// Attaches `car` to the image `registry.test/team/app@digest` as `attach` does: a signature
/// artifact (config naming the DID and record, a CAR layer), listed by the referrers API.
fn attach(world: &World, digest: &str, did: &str, rkey: &str, car: Vec<u8>) {
    use sha2::{Digest, Sha256};
    let sha = |b: &[u8]| format!("sha256:{}", atproto_sig_core::encoding::hex_encode(&Sha256::digest(b)));
    let base = "https://registry.test/v2/team/app";
    let config = serde_json::json!({"atproto": {"did": did, "recordUri": format!("at://{did}/{MANIFEST_COLLECTION}/{rkey}")}}).to_string().into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.atproto.signature.v1+json",
        "config": {"mediaType": "application/vnd.atproto.signature.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.ipld.car", "digest": sha(&car), "size": car.len()}],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": sha(&manifest), "artifactType": "application/vnd.atproto.signature.v1+json"}]});
    world.fetch.serve(&format!("{base}/referrers/{digest}"), 200, index.to_string());
    world.fetch.serve(&format!("{base}/manifests/{}", sha(&manifest)), 200, manifest.clone());
    world.fetch.serve(&format!("{base}/blobs/{}", sha(&config)), 200, config.clone());
    world.fetch.serve(&format!("{base}/blobs/{}", sha(&car)), 200, car);
}

/// Imports a bundle (JSON) into the world's cache, as `bundle import` does.
fn import(world: &World, bundle: serde_json::Value, now: i64) {
    let bundle = containerd_verifier::testkit::parse_bundle(&serde_json::to_vec(&bundle).unwrap()).unwrap();
    let cache = containerd_verifier::material::store::Cache::new(&world.config.cache_dir);
    let report = containerd_verifier::testkit::import_bundle(&bundle, &cache, "test", &world.config, now);
    assert!(report.refused.is_empty(), "{:?}", report.refused);
}

fn bundle_json(repo: &TestRepo, proofs: Vec<serde_json::Value>, locators: Vec<serde_json::Value>, collections: Vec<serde_json::Value>) -> serde_json::Value {
    let identity = &repo.identity;
    serde_json::json!({
        "format": "atproto-verifier-bundle", "version": 2, "createdAt": "2026-01-01T00:00:00Z",
        "dids": [{"did": identity.did, "fetchedAt": repo.now_micros, "source": "test", "document": identity.did_document_multikey(), "auditLog": identity.audit_log()}],
        "locators": locators, "proofs": proofs, "collections": collections,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// Offline, a proof attached to the image (attached artifacts stay when a record is deleted)
/// cannot bring back an image the newest signed collection state this node holds revokes.
#[test]
fn an_attached_old_proof_cannot_bring_back_a_revoked_image() {
    let (mut repo, digest, rkey) = repo_with_manifest("attached-revoked", Curve::K256);
    let old = repo.proof(MANIFEST_COLLECTION, &rkey);
    repo.now_micros += 60 * MINUTE;
    repo.delete(MANIFEST_COLLECTION, &rkey);
    let (state, _) = atproto_sig_core::collection::extract(&repo.export(), MANIFEST_COLLECTION, &atproto_sig_core::Limits::repository()).unwrap();
    let mut world = World::trusting(&repo);
    world.config.offline = true;
    let now = repo.now_micros + MINUTE;
    let collection =
        serde_json::json!({"did": repo.identity.did, "collection": MANIFEST_COLLECTION, "fetchedAt": repo.now_micros, "source": "test", "car": b64(&state)});
    import(&world, bundle_json(&repo, vec![], vec![], vec![collection]), now);
    attach(&world, &digest, &repo.identity.did, &rkey, old);
    let answer = world.decide_at("registry.test/team/app:1", &digest, None, now, Duration::from_secs(8));
    assert_eq!(answer.decision.reason, Reason::RecordDeleted, "{}\n{:#?}", answer.decision.message, answer.notes);
}

/// Offline, a forged newer rev pushed as an artifact (its signature cannot verify) never
/// outranks the genuine proof this node imported: the image stays admitted.
#[test]
fn an_attached_forged_rev_never_outranks_a_verified_proof() {
    let (repo, digest, rkey) = repo_with_manifest("attached-forged", Curve::K256);
    let mut world = World::trusting(&repo);
    world.config.offline = true;
    let now = repo.now_micros + MINUTE;
    let proof = serde_json::json!({"did": repo.identity.did, "collection": MANIFEST_COLLECTION, "rkey": rkey, "fetchedAt": repo.now_micros, "source": "test", "car": b64(&repo.proof(MANIFEST_COLLECTION, &rkey))});
    let locator = serde_json::json!({"did": repo.identity.did, "digest": digest, "rkey": rkey, "fetchedAt": repo.now_micros});
    import(&world, bundle_json(&repo, vec![proof], vec![locator], vec![]), now);
    attach(&world, &digest, &repo.identity.did, &rkey, repo.proof_with(MANIFEST_COLLECTION, &rkey, &Tamper::ForgedRev));
    let answer = world.decide_at("registry.test/team/app:1", &digest, None, now, Duration::from_secs(8));
    assert_eq!(answer.decision.reason, Reason::Verified, "{}\n{:#?}", answer.decision.message, answer.notes);
    assert!(answer.notes.iter().any(|n| n.contains("does not verify under the DID's key")), "{:#?}", answer.notes);
}

/// Records when each exchange started and ended, around the in-memory web.
struct Timeline {
    inner: Arc<MemoryFetch>,
    spans: std::sync::Mutex<Vec<(String, std::time::Instant, std::time::Instant)>>,
}

impl containerd_verifier::remote::Fetch for Timeline {
    fn exchange(&self, exchange: &containerd_verifier::remote::Exchange<'_>) -> Result<containerd_verifier::remote::Fetched, NetError> {
        let started = std::time::Instant::now();
        let answer = self.inner.exchange(exchange);
        self.spans.lock().unwrap().push((exchange.url.to_owned(), started, std::time::Instant::now()));
        answer
    }
}

#[test]
fn the_first_candidates_did_document_is_fetched_while_the_registry_is_asked_for_hints() {
    let (repo, digest, rkey) = repo_with_manifest("overlap", Curve::K256);
    let world = World::trusting(&repo);
    world.serve(&repo, &rkey, &Tamper::None);
    // Every answer takes a while: if the two lookups overlap, their spans intersect.
    world.fetch.delay("*", Duration::from_millis(200));
    let timeline = Arc::new(Timeline { inner: world.fetch.clone(), spans: std::sync::Mutex::new(Vec::new()) });
    let remote = Remote::new(timeline.clone(), world.resolve.clone());
    let reference = format!("registry.test/team/app@{digest}");
    let request = Request {
        reference: &reference,
        digest: None,
        descriptor: None,
        policy: world.policy.as_ref(),
        config: &world.config,
        now_micros: T0_MICROS + MINUTE,
        deadline: Deadline::after(Duration::from_secs(8)),
        in_flight: &InFlight::default(),
    };
    let answer = engine::decide(&request, &remote);
    assert_eq!(answer.decision.reason, Reason::Verified, "{}", answer.decision.message);
    let spans = timeline.spans.lock().unwrap().clone();
    let span = |part: &str| spans.iter().find(|(url, _, _)| url.contains(part)).cloned().unwrap_or_else(|| panic!("no request to {part}: {spans:?}"));
    let (_, hints_start, hints_end) = span("/referrers/");
    let (_, doc_start, doc_end) = span(&format!("{PLC}/{}", repo.identity.did));
    assert!(doc_start < hints_end && hints_start < doc_end, "the DID document and the referrers were asked one after the other: {spans:?}");
    // The prefetch's request is counted as the decision's own; the document is fetched once.
    assert_eq!(spans.iter().filter(|(url, _, _)| url.ends_with(&repo.identity.did)).count(), 1);
    assert!(answer.requests.identity >= 2, "{:?}", answer.requests);
}

/// plc.directory removes operations that fail today's checks: a node that cached a log holding
/// one (here an operation with a bad signature) asks the directory again before it denies
/// anything on it, and the directory's current log replaces it.
#[test]
fn a_held_audit_log_that_fails_todays_checks_is_fetched_again_before_any_denial() {
    use containerd_verifier::material::store::{Cache, DidEntry, Kind};
    let (repo, digest, rkey) = repo_with_manifest("stale-log", Curve::K256);
    let mut world = World::trusting(&repo);
    world.config.strict_plc = true;
    world.serve(&repo, &rkey, &Tamper::None);
    let identity = &repo.identity;
    let mut log: Vec<serde_json::Value> = serde_json::from_str(&identity.audit_log()).unwrap();
    let mut invalid = log[0].clone();
    invalid["operation"]["prev"] = log[0]["cid"].clone();
    invalid["operation"]["sig"] = serde_json::json!("AAAA");
    invalid["cid"] = serde_json::json!("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm");
    log.push(invalid);
    let held = DidEntry {
        did: identity.did.clone(),
        fetched_at: T0_MICROS,
        source: "cached before the directory's clean-up".into(),
        document: identity.did_document_multikey(),
        audit_log: Some(serde_json::Value::Array(log).to_string()),
    };
    Cache::new(&world.config.cache_dir).write(Kind::Did, &[&identity.did], &held);
    let answer = world.decide("registry.test/team/app:1", &digest);
    assert_eq!(answer.decision.reason, Reason::Verified, "{}", answer.decision.message);
    assert!(world.fetch.requested().iter().any(|u| u.ends_with("/log/audit")), "the directory was asked again");
    let stored: DidEntry = Cache::new(&world.config.cache_dir).read(Kind::Did, &[&identity.did]).unwrap();
    assert_eq!(stored.audit_log.as_deref(), Some(identity.audit_log().as_str()), "the directory's log replaced the failing one");
}
