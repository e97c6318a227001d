//! Every file in tests/interop (the vendored AT Protocol interop vectors) drives a test here. The folder must exist: a missing
//! folder fails loudly (set ATPROTO_INTEROP_DIR to point elsewhere).

use std::collections::BTreeMap;
use std::path::PathBuf;

use atproto_sig_core::Limits;
use atproto_sig_core::car::Car;
use atproto_sig_core::cbor;
use atproto_sig_core::cid::Cid;
use atproto_sig_core::crypto::{Curve, PrivateKey, PublicKey, SignatureError};
use atproto_sig_core::mst;
use atproto_sig_core::plc::verify_audit_log;
use atproto_sig_core::syntax;
use base64::Engine;
use serde_json::Value as Json;

fn interop_dir() -> PathBuf {
    let dir =
        std::env::var_os("ATPROTO_INTEROP_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop"));
    assert!(
        dir.join("README.md").is_file(),
        "interop vectors not found at {} — they are vendored in tests/interop (or set ATPROTO_INTEROP_DIR)",
        dir.display()
    );
    dir
}

fn read_json(relative: &str) -> Json {
    let path = interop_dir().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Lines of a syntax fixture: `#` comments and empty lines skipped, whitespace kept.
fn lines(name: &str) -> Vec<String> {
    let path = interop_dir().join("syntax").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let out: Vec<String> = text.split('\n').filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    assert!(!out.is_empty(), "{name} has no cases");
    out
}

fn check_syntax(kind: &str, valid: fn(&str) -> bool) {
    for case in lines(&format!("{kind}_syntax_valid.txt")) {
        assert!(valid(&case), "{kind}: {case:?} should be valid");
    }
    for case in lines(&format!("{kind}_syntax_invalid.txt")) {
        assert!(!valid(&case), "{kind}: {case:?} should be invalid");
    }
}

#[test]
fn syntax_did() {
    check_syntax("did", syntax::is_valid_did);
}
#[test]
fn syntax_handle() {
    check_syntax("handle", syntax::is_valid_handle);
}
#[test]
fn syntax_nsid() {
    check_syntax("nsid", syntax::is_valid_nsid);
}
#[test]
fn syntax_record_key() {
    check_syntax("recordkey", syntax::is_valid_record_key);
}
#[test]
fn syntax_tid() {
    check_syntax("tid", syntax::is_valid_tid);
}
#[test]
fn syntax_at_identifier() {
    check_syntax("atidentifier", syntax::is_valid_at_identifier);
}
#[test]
fn syntax_at_uri() {
    check_syntax("aturi", |s| syntax::AtUri::parse(s).is_some());
}
#[test]
fn syntax_datetime() {
    check_syntax("datetime", syntax::is_valid_datetime);
    for case in lines("datetime_parse_invalid.txt") {
        assert!(!syntax::is_valid_datetime(&case), "datetime {case:?} should not parse");
    }
}
#[test]
fn syntax_cid_string() {
    check_syntax("cid", syntax::is_valid_cid_string);
}
#[test]
fn syntax_uri() {
    check_syntax("uri", syntax::is_valid_uri);
}
#[test]
fn syntax_language() {
    check_syntax("language", syntax::is_valid_language);
    for case in lines("language_parse_invalid.txt") {
        assert!(!syntax::is_valid_language(&case), "language {case:?} should not parse");
    }
}

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.trim_end_matches('=')).unwrap()
}

#[test]
fn crypto_signature_fixtures() {
    let fixtures = read_json("crypto/signature-fixtures.json");
    let fixtures = fixtures.as_array().unwrap();
    assert_eq!(fixtures.len(), 6);
    for f in fixtures {
        let message = b64(f["messageBase64"].as_str().unwrap());
        let signature = b64(f["signatureBase64"].as_str().unwrap());
        let from_did = PublicKey::from_did_key(f["publicKeyDid"].as_str().unwrap()).unwrap();
        let from_legacy = PublicKey::from_legacy(f["didDocSuite"].as_str().unwrap(), f["publicKeyMultibase"].as_str().unwrap()).unwrap();
        assert_eq!(from_did, from_legacy, "{}", f["comment"]);
        let expected_alg = f["algorithm"].as_str().unwrap();
        assert_eq!(from_did.curve().jwt_alg(), expected_alg);
        let result = from_did.verify(&message, &signature);
        assert_eq!(result.is_ok(), f["validSignature"].as_bool().unwrap(), "{}: {result:?}", f["comment"]);
        let tags: Vec<&str> = f["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        if tags.contains(&"high-s") {
            assert_eq!(result, Err(SignatureError::HighS), "{}", f["comment"]);
        }
        if tags.contains(&"der-encoded") {
            assert!(matches!(result, Err(SignatureError::Length(_))), "{}", f["comment"]);
        }
    }
}

#[test]
fn crypto_w3c_did_keys() {
    for f in read_json("crypto/w3c_didkey_K256.json").as_array().unwrap() {
        let bytes = hex(f["privateKeyBytesHex"].as_str().unwrap());
        let key = PrivateKey::from_bytes(Curve::K256, &bytes).unwrap();
        assert_eq!(key.public_key().to_did_key(), f["publicDidKey"].as_str().unwrap());
    }
    let p256 = read_json("crypto/w3c_didkey_P256.json");
    let cases = p256.as_array().unwrap();
    assert!(!cases.is_empty());
    for f in cases {
        let bytes = bs58::decode(f["privateKeyBytesBase58"].as_str().unwrap()).into_vec().unwrap();
        let key = PrivateKey::from_bytes(Curve::P256, &bytes).unwrap();
        assert_eq!(key.public_key().to_did_key(), f["publicDidKey"].as_str().unwrap());
    }
}

fn hex(text: &str) -> Vec<u8> {
    atproto_sig_core::encoding::hex_decode_lower(&text.to_ascii_lowercase()).unwrap()
}

#[test]
fn data_model_fixtures_round_trip() {
    for f in read_json("data-model/data-model-fixtures.json").as_array().unwrap() {
        let value = cbor::from_json(&f["json"], 64).unwrap();
        let bytes = cbor::encode(&value);
        assert_eq!(bytes, b64(f["cbor_base64"].as_str().unwrap()), "encoding of {}", f["json"]);
        assert_eq!(Cid::for_dag_cbor(&bytes).to_string(), f["cid"].as_str().unwrap());
        assert_eq!(cbor::decode(&bytes, 64).unwrap(), value);
    }
}

#[test]
fn data_model_valid_and_invalid() {
    for f in read_json("data-model/data-model-valid.json").as_array().unwrap() {
        let value = cbor::from_json(&f["json"], 64).unwrap_or_else(|e| panic!("{}: {e}", f["note"]));
        let bytes = cbor::encode(&value);
        assert_eq!(cbor::decode(&bytes, 64).unwrap(), value);
    }
    for f in read_json("data-model/data-model-invalid.json").as_array().unwrap() {
        // A record (or test object) must be a JSON object at the top.
        let accepted = f["json"].is_object() && cbor::from_json(&f["json"], 64).is_ok();
        assert!(!accepted, "{} should be rejected: {}", f["note"], f["json"]);
    }
}

#[test]
fn mst_key_heights() {
    let cases = read_json("mst/key_heights.json");
    assert_eq!(cases.as_array().unwrap().len(), 9);
    for case in cases.as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        assert_eq!(u64::from(mst::key_height(key.as_bytes())), case["height"].as_u64().unwrap(), "{key}");
    }
}

#[test]
fn mst_common_prefix() {
    for case in read_json("mst/common_prefix.json").as_array().unwrap() {
        let (left, right) = (case["left"].as_str().unwrap(), case["right"].as_str().unwrap());
        assert_eq!(mst::common_prefix_len(left.as_bytes(), right.as_bytes()) as u64, case["len"].as_u64().unwrap());
    }
}

#[test]
fn mst_example_keys_build_and_walk() {
    let text = std::fs::read_to_string(interop_dir().join("mst/example_keys.txt")).unwrap();
    let keys: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(keys.len() > 100);
    let leaf = Cid::for_dag_cbor(b"example");
    // Example keys are `A0/374913`: the digit is the intended height.
    for key in &keys {
        let intended = key.chars().nth(1).and_then(|c| c.to_digit(10)).unwrap();
        assert_eq!(mst::key_height(key.as_bytes()), intended, "{key}");
    }
    let entries: BTreeMap<Vec<u8>, Cid> = keys.iter().map(|k| (k.as_bytes().to_vec(), leaf)).collect();
    let (root, blocks) = mst::build(&entries);
    let blocks: std::collections::HashMap<Cid, Vec<u8>> = blocks.into_iter().collect();
    for key in &keys {
        let walk = mst::walk(|c| blocks.get(c).map(Vec::as_slice), root, key.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(walk.lookup, mst::Lookup::Present(leaf), "{key}");
    }
}

#[test]
fn commit_proof_roots_via_builder() {
    let cases = read_json("firehose/commit-proof-fixtures.json");
    assert_eq!(cases.as_array().unwrap().len(), 6);
    for case in cases.as_array().unwrap() {
        let leaf: Cid = case["leafValue"].as_str().unwrap().parse().unwrap();
        let strings = |name: &str| -> Vec<String> { case[name].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect() };
        let mut entries: BTreeMap<Vec<u8>, Cid> = strings("keys").into_iter().map(|k| (k.into_bytes(), leaf)).collect();
        let (before, _) = mst::build(&entries);
        assert_eq!(before.to_string(), case["rootBeforeCommit"].as_str().unwrap(), "{}", case["comment"]);
        for add in strings("adds") {
            entries.insert(add.into_bytes(), leaf);
        }
        for del in strings("dels") {
            entries.remove(del.as_bytes());
        }
        let (after, _) = mst::build(&entries);
        assert_eq!(after.to_string(), case["rootAfterCommit"].as_str().unwrap(), "{}", case["comment"]);
    }
}

#[test]
fn car_file_fixtures() {
    let cases = read_json("car/car-file-fixtures.json");
    assert!(!cases.as_array().unwrap().is_empty());
    for case in cases.as_array().unwrap() {
        let bytes = b64(case["car"].as_str().unwrap());
        let car = Car::parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(car.root.to_string(), case["root"].as_str().unwrap());
        let blocks = case["blocks"].as_array().unwrap();
        assert_eq!(car.len(), blocks.len());
        for block in blocks {
            let cid: Cid = block["cid"].as_str().unwrap().parse().unwrap();
            assert_eq!(car.block(&cid).unwrap(), b64(block["bytes"].as_str().unwrap()).as_slice());
        }
        // Any single flipped byte in a block's data must be caught.
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        assert!(Car::parse(&tampered, &Limits::default()).is_err());
    }
}

fn audit_logs(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = interop_dir().join("plc-audit-log").join(kind);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty());
    out
}

fn log_did(bytes: &[u8]) -> String {
    let json: Json = serde_json::from_slice(bytes).unwrap();
    json[0]["did"].as_str().unwrap().to_owned()
}

#[test]
fn plc_valid_audit_logs() {
    for (name, bytes) in audit_logs("valid") {
        let did = log_did(&bytes);
        let state = verify_audit_log(&did, &bytes, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(state.did, did);
        if name.contains("tombstone") && !name.contains("nullified") {
            assert!(state.deactivated, "{name}");
        } else {
            assert!(!state.deactivated, "{name}");
        }
    }
}

#[test]
fn plc_legacy_genesis_resolves_key_pds_handle() {
    let bytes = std::fs::read(interop_dir().join("plc-audit-log/valid/log_legacy_dholms.json")).unwrap();
    let state = verify_audit_log("did:plc:yk4dd2qkboz2yv6tpubpc6co", &bytes, &Limits::default()).unwrap();
    assert!(state.signing_key().is_ok());
    assert!(state.pds().is_some());
    assert!(state.handle().is_some());
}

#[test]
fn plc_invalid_audit_logs() {
    for (name, bytes) in audit_logs("invalid") {
        let did = log_did(&bytes);
        assert!(verify_audit_log(&did, &bytes, &Limits::default()).is_err(), "{name} should be rejected");
    }
}

/// Hostile CAR files kept as data (tests/adversarial/car, made by its generate.py): each must
/// be rejected with the error EXPECTED names.
#[test]
fn adversarial_car_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/adversarial/car");
    let expected = std::fs::read_to_string(dir.join("EXPECTED")).unwrap();
    let mut checked = 0;
    for line in expected.lines().filter(|l| !l.starts_with('#')) {
        let (file, error) = line.split_once('\t').unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let got = format!("{:?}", Car::parse(&bytes, &Limits::default()).expect_err(file));
        assert!(got.starts_with(error), "{file}: expected {error}, got {got}");
        checked += 1;
    }
    let files = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "car")).count();
    assert_eq!(checked, files, "every .car file must be listed in EXPECTED");
}

/// Re-encoding a real v3 commit written by the reference PDS reproduces its bytes exactly.
#[test]
fn real_commit_reencodes_byte_for_byte() {
    let bytes = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pds/manifest-tid-rkey.car")).unwrap();
    let car = Car::parse(&bytes, &Limits::default()).unwrap();
    let block = car.block(&car.root).unwrap();
    let commit = atproto_sig_core::commit::Commit::decode(block, &Limits::default()).unwrap();
    assert_eq!(commit.signed_bytes(), block);
    assert_eq!(commit.unsigned_bytes().len() + 2 + 64 + 4, block.len(), "unsigned = signed minus the sig entry");
}

/// As a firehose consumer must use them (sync 1.1): with only the blocks the proof carries,
/// the ops inverted (adds removed, deletions put back) turn the new root into the old one.
#[test]
fn commit_proofs_invert_with_only_the_blocks_in_the_proof() {
    let cases = read_json("firehose/commit-proof-fixtures.json");
    for case in cases.as_array().unwrap() {
        let comment = case["comment"].as_str().unwrap();
        let leaf: Cid = case["leafValue"].as_str().unwrap().parse().unwrap();
        let strings = |name: &str| -> Vec<String> { case[name].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect() };
        let mut entries: BTreeMap<Vec<u8>, Cid> = strings("keys").into_iter().map(|k| (k.into_bytes(), leaf)).collect();
        for add in strings("adds") {
            entries.insert(add.into_bytes(), leaf);
        }
        for del in strings("dels") {
            entries.remove(del.as_bytes());
        }
        let (after, all_blocks) = mst::build(&entries);
        assert_eq!(after.to_string(), case["rootAfterCommit"].as_str().unwrap(), "{comment}");
        let in_proof: Vec<Cid> = strings("blocksInProof").iter().map(|c| c.parse().unwrap()).collect();
        let proof: std::collections::HashMap<Cid, Vec<u8>> = all_blocks.into_iter().filter(|(cid, _)| in_proof.contains(cid)).collect();
        assert_eq!(proof.len(), in_proof.len(), "{comment}: every block of the proof is a node of the new tree");
        let mut inverse: Vec<mst::Edit> = strings("adds").into_iter().map(|k| mst::Edit::Remove(k.into_bytes())).collect();
        inverse.extend(strings("dels").into_iter().map(|k| mst::Edit::Put(k.into_bytes(), leaf)));
        let limits = Limits::default();
        let before = mst::apply(|c| proof.get(c).map(Vec::as_slice), after, &inverse, &limits).unwrap_or_else(|e| panic!("{comment}: {e}"));
        assert_eq!(before.to_string(), case["rootBeforeCommit"].as_str().unwrap(), "{comment}");
        // Without the new root's own node nothing can be inverted.
        let rootless = |c: &Cid| if *c == after { None } else { proof.get(c).map(Vec::as_slice) };
        assert!(matches!(mst::apply(rootless, after, &inverse, &limits), Err(mst::MstError::MissingBlock(_))), "{comment}");
    }
}
