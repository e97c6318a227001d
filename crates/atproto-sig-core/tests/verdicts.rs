//! Each reason code the core can produce, produced by a generated proof (K-256 and P-256).

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::did::DidDocument;
use atproto_sig_core::record::MANIFEST_COLLECTION;
use atproto_sig_core::testkit::{Identity, T0_MICROS, Tamper, TestRepo, digest_of};
use atproto_sig_core::verify::DEFAULT_CLOCK_SKEW_MICROS;
use atproto_sig_core::{Expectation, KeySource, KnownBlocks, Limits, ProofInput, Reason, Verdict, verify};

struct Case {
    repo: TestRepo,
    digest: String,
    rkey: String,
}

fn case(curve: Curve, filler: usize) -> Case {
    let mut repo = TestRepo::new(Identity::new(curve, &format!("alice-{curve:?}")));
    repo.put_filler(filler);
    let digest = digest_of("image-1");
    let rkey = repo.put_manifest(&digest, "myapp");
    Case { repo, digest, rkey }
}

/// Checks a proof as a one-shot process does (no memo), then twice with a node memo this test
/// process shares (warm with every proof checked before it, then with this one's own nodes):
/// the memo may never change a verdict.
fn check(case: &Case, car: &[u8], doc: &str, digest: &str, repository: &str) -> Verdict {
    static KNOWN: KnownBlocks = KnownBlocks::new(KnownBlocks::DEFAULT_SLOTS);
    let limits = Limits::default();
    let document = DidDocument::parse(doc.as_bytes(), &case.repo.identity.did, &limits).unwrap();
    let verify_with = |known_blocks| {
        verify(&ProofInput {
            car,
            key: KeySource::Document(&document),
            expect: Expectation { did: &case.repo.identity.did, rkey: None, digest: Some(digest), repository: Some(repository) },
            now_micros: T0_MICROS,
            max_clock_skew_micros: DEFAULT_CLOCK_SKEW_MICROS,
            limits: &limits,
            known_blocks,
        })
    };
    let verdict = verify_with(None);
    for round in ["cold", "warm"] {
        assert_eq!(verify_with(Some(&KNOWN)), verdict, "the verdict with a {round} node memo differs");
    }
    verdict
}

fn tampered(curve: Curve, tamper: Tamper) -> Verdict {
    let c = case(curve, 200);
    let car = c.repo.proof_with(MANIFEST_COLLECTION, &c.rkey, &tamper);
    check(&c, &car, &c.repo.identity.did_document_multikey(), &c.digest, "myapp")
}

const CURVES: [Curve; 2] = [Curve::K256, Curve::P256];

#[test]
fn verified_with_both_document_forms_and_both_curves() {
    for curve in CURVES {
        for filler in [0, 1, 300] {
            let c = case(curve, filler);
            let car = c.repo.proof(MANIFEST_COLLECTION, &c.rkey);
            for doc in [c.repo.identity.did_document_multikey(), c.repo.identity.did_document_legacy()] {
                let verdict = check(&c, &car, &doc, &c.digest, "myapp");
                assert_eq!(verdict.reason, Reason::Verified, "{curve:?}/{filler}: {}", verdict.message);
                assert_eq!(verdict.facts.handle.as_deref(), Some(c.repo.identity.handle.as_str()));
                assert_eq!(verdict.facts.record.as_ref().unwrap().repository, "myapp");
            }
        }
    }
}

#[test]
fn signature_invalid() {
    for curve in CURVES {
        for tamper in [Tamper::WrongKey, Tamper::HighS, Tamper::DerSignature] {
            let verdict = tampered(curve, tamper.clone());
            assert_eq!(verdict.reason, Reason::SignatureInvalid, "{curve:?} {tamper:?}: {}", verdict.message);
        }
    }
}

#[test]
fn proof_malformed() {
    for curve in CURVES {
        for tamper in [Tamper::Version2, Tamper::DropRecord, Tamper::DropMstNode, Tamper::FlipRecordByte, Tamper::Truncate, Tamper::DropCommit] {
            let verdict = tampered(curve, tamper.clone());
            assert_eq!(verdict.reason, Reason::ProofMalformed, "{curve:?} {tamper:?}: {}", verdict.message);
        }
    }
}

#[test]
fn did_mismatch() {
    let verdict = tampered(Curve::K256, Tamper::CommitDid("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into()));
    assert_eq!(verdict.reason, Reason::DidMismatch, "{}", verdict.message);
}

#[test]
fn rev_in_future() {
    let verdict = tampered(Curve::P256, Tamper::FutureRev);
    assert_eq!(verdict.reason, Reason::RevInFuture, "{}", verdict.message);
}

#[test]
fn record_deleted_is_an_absence_proof() {
    for curve in CURVES {
        let mut c = case(curve, 300);
        c.repo.delete(MANIFEST_COLLECTION, &c.rkey);
        let car = c.repo.proof(MANIFEST_COLLECTION, &c.rkey);
        let verdict = check(&c, &car, &c.repo.identity.did_document_multikey(), &c.digest, "myapp");
        assert_eq!(verdict.reason, Reason::RecordDeleted, "{}", verdict.message);
        // The commit itself was checked: a forged absence is a signature failure instead.
        let forged = c.repo.proof_with(MANIFEST_COLLECTION, &c.rkey, &Tamper::WrongKey);
        let verdict = check(&c, &forged, &c.repo.identity.did_document_multikey(), &c.digest, "myapp");
        assert_eq!(verdict.reason, Reason::SignatureInvalid);
    }
}

#[test]
fn digest_and_repository_mismatch() {
    let mut c = case(Curve::K256, 10);
    // A record whose rkey is the pulled digest's hex but whose body names another digest.
    let other = digest_of("other");
    let rkey = c.digest.strip_prefix("sha256:").unwrap().to_owned();
    c.repo.put(
        MANIFEST_COLLECTION,
        &rkey,
        &atproto_sig_core::record::manifest_value(&other, "myapp", "application/vnd.oci.image.manifest.v1+json", "2026-01-01T00:00:00Z"),
    );
    let car = c.repo.proof(MANIFEST_COLLECTION, &rkey);
    let doc = c.repo.identity.did_document_multikey();
    assert_eq!(check(&c, &car, &doc, &c.digest, "myapp").reason, Reason::DigestMismatch);

    let c = case(Curve::K256, 10);
    let car = c.repo.proof(MANIFEST_COLLECTION, &c.rkey);
    let verdict = check(&c, &car, &c.repo.identity.did_document_multikey(), &c.digest, "otherapp");
    assert_eq!(verdict.reason, Reason::RepositoryMismatch, "{}", verdict.message);
}

#[test]
fn record_invalid() {
    let mut c = case(Curve::K256, 0);
    let mut map = atproto_sig_core::cbor::Map::default();
    map.insert("$type", atproto_sig_core::cbor::Value::Text("io.atcr.tag".into()));
    c.repo.put(MANIFEST_COLLECTION, &c.rkey, &atproto_sig_core::cbor::Value::Map(map));
    let car = c.repo.proof(MANIFEST_COLLECTION, &c.rkey);
    let verdict = check(&c, &car, &c.repo.identity.did_document_multikey(), &c.digest, "myapp");
    assert_eq!(verdict.reason, Reason::RecordInvalid, "{}", verdict.message);
}

#[test]
fn did_document_invalid() {
    let c = case(Curve::K256, 0);
    let car = c.repo.proof(MANIFEST_COLLECTION, &c.rkey);
    // Another account's key under this DID's id: the signature must fail.
    let mallory = Identity::new(Curve::K256, "mallory");
    let swapped = mallory.did_document_multikey().replace(&mallory.did, &c.repo.identity.did);
    assert_eq!(check(&c, &car, &swapped, &c.digest, "myapp").reason, Reason::SignatureInvalid);
    // A document without a usable #atproto key.
    let keyless = c.repo.identity.did_document_multikey().replace("#atproto\"", "#other\"");
    let verdict = check(&c, &car, &keyless, &c.digest, "myapp");
    assert_eq!(verdict.reason, Reason::DidDocumentInvalid, "{}", verdict.message);
}

#[test]
fn invalid_request() {
    let c = case(Curve::K256, 0);
    let car = c.repo.proof(MANIFEST_COLLECTION, &c.rkey);
    let verdict = check(&c, &car, &c.repo.identity.did_document_multikey(), "sha256:XYZ", "myapp");
    assert_eq!(verdict.reason, Reason::InvalidRequest);
}

#[test]
fn every_single_byte_flip_is_rejected() {
    let c = case(Curve::P256, 50);
    let car = c.repo.proof(MANIFEST_COLLECTION, &c.rkey);
    let doc = c.repo.identity.did_document_multikey();
    // Checked whole first, so the shared node memo holds every node the flips below alter.
    assert_eq!(check(&c, &car, &doc, &c.digest, "myapp").reason, Reason::Verified);
    for index in 0..car.len() {
        let mut bad = car.clone();
        bad[index] ^= 0x01;
        let verdict = check(&c, &bad, &doc, &c.digest, "myapp");
        assert_ne!(verdict.reason, Reason::Verified, "flip at byte {index} still verified");
    }
}

/// What the signature covers is said as facts: `signature_verified` once the commit verifies,
/// `path_proven` once the MST path (presence or absence) is proven under it; a forged
/// signature proves neither. With no digest expected, a present record is "verified" only as
/// present (accepting a proof into a cache), and a deleted one is still a proven absence.
#[test]
fn facts_say_what_the_signature_covers_and_no_digest_means_presence_only() {
    let c = case(Curve::K256, 20);
    let limits = Limits::default();
    let document = DidDocument::parse(c.repo.identity.did_document_multikey().as_bytes(), &c.repo.identity.did, &limits).unwrap();
    let presence = |car: &[u8], rkey: &str| {
        verify(&ProofInput {
            car,
            key: KeySource::Document(&document),
            expect: Expectation { did: &c.repo.identity.did, rkey: Some(rkey), digest: None, repository: None },
            now_micros: T0_MICROS,
            max_clock_skew_micros: DEFAULT_CLOCK_SKEW_MICROS,
            limits: &limits,
            known_blocks: None,
        })
    };
    let present = presence(&c.repo.proof(MANIFEST_COLLECTION, &c.rkey), &c.rkey);
    assert_eq!(present.reason, Reason::Verified, "{}", present.message);
    assert!(present.message.contains("is present"), "{}", present.message);
    assert!(present.facts.signature_verified && present.facts.path_proven && present.facts.record_cid.is_some());
    let absent = presence(&c.repo.proof(MANIFEST_COLLECTION, "3zzzzzzzzzzzz"), "3zzzzzzzzzzzz");
    assert_eq!(absent.reason, Reason::RecordDeleted);
    assert!(absent.facts.signature_verified && absent.facts.path_proven && absent.facts.record_cid.is_none());
    let forged = presence(&c.repo.proof_with(MANIFEST_COLLECTION, &c.rkey, &Tamper::WrongKey), &c.rkey);
    assert_eq!(forged.reason, Reason::SignatureInvalid);
    assert!(!forged.facts.signature_verified && !forged.facts.path_proven);
    // No digest and no record key: nothing to look for.
    let nothing = verify(&ProofInput {
        car: &c.repo.proof(MANIFEST_COLLECTION, &c.rkey),
        key: KeySource::Document(&document),
        expect: Expectation { did: &c.repo.identity.did, rkey: None, digest: None, repository: None },
        now_micros: T0_MICROS,
        max_clock_skew_micros: DEFAULT_CLOCK_SKEW_MICROS,
        limits: &limits,
        known_blocks: None,
    });
    assert_eq!(nothing.reason, Reason::InvalidRequest);
}
