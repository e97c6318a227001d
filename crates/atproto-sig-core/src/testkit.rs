//! Test kit (feature `testkit`): genuine did:plc identities (signed genesis operation, audit
//! log, DID documents in both forms), signed repositories with K-256 or P-256 keys,
//! `getRecord`-style proofs, and the tampered variants each verdict code names.

use std::collections::BTreeMap;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::car::write_car;
use crate::cbor::{self, Map, Value};
use crate::cid::Cid;
use crate::commit::Commit;
use crate::crypto::{Curve, PrivateKey, PublicKey};
use crate::mst;
use crate::record::{MANIFEST_COLLECTION, manifest_value};
use crate::syntax::{format_datetime_micros, tid_from_parts};

/// 2026-01-01T00:00:00Z, the default clock of test repositories.
pub const T0_MICROS: i64 = 1_767_225_600_000_000;

/// An account: a did:plc created by a real genesis operation, with its keys.
#[derive(Clone)]
pub struct Identity {
    /// The DID (hash of the genesis operation).
    pub did: String,
    /// Repo signing key (`#atproto`).
    pub signing: PrivateKey,
    /// PLC rotation key.
    pub rotation: PrivateKey,
    /// Handle in `alsoKnownAs`.
    pub handle: String,
    /// PDS endpoint.
    pub pds: String,
    /// The signed genesis operation, as JSON.
    pub genesis: serde_json::Value,
}

impl Identity {
    /// A deterministic identity from `seed`, with a signing key on `curve`.
    pub fn new(curve: Curve, seed: &str) -> Identity {
        let signing = PrivateKey::from_seed(curve, &format!("{seed}/signing"));
        let rotation = PrivateKey::from_seed(Curve::K256, &format!("{seed}/rotation"));
        let handle = format!("{}.test", seed.to_ascii_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
        let pds = "https://pds.example.com".to_owned();
        let genesis = signed_plc_op(
            &rotation,
            serde_json::json!({
                "type": "plc_operation",
                "rotationKeys": [rotation.public_key().to_did_key()],
                "verificationMethods": {"atproto": signing.public_key().to_did_key()},
                "alsoKnownAs": [format!("at://{handle}")],
                "services": {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": pds}},
                "prev": null,
            }),
        );
        let bytes = cbor::encode(&cbor::from_json(&genesis, 16).unwrap_or(Value::Null));
        let did = format!("did:plc:{}", multibase::Base::Base32Lower.encode(Sha256::digest(&bytes)).get(..24).unwrap_or_default());
        Identity { did, signing, rotation, handle, pds, genesis }
    }

    /// An identity whose genesis names two rotation keys: the returned recovery key first
    /// (highest priority), then `rotation` (which signs the genesis, as an account's PDS would).
    pub fn with_recovery_key(curve: Curve, seed: &str) -> (Identity, PrivateKey) {
        let recovery = PrivateKey::from_seed(Curve::K256, &format!("{seed}/recovery"));
        let mut identity = Identity::new(curve, seed);
        let mut genesis = identity.genesis.clone();
        if let Some(map) = genesis.as_object_mut() {
            map.remove("sig");
            map.insert("rotationKeys".into(), serde_json::json!([recovery.public_key().to_did_key(), identity.rotation.public_key().to_did_key()]));
        }
        identity.genesis = signed_plc_op(&identity.rotation, genesis);
        let bytes = cbor::encode(&cbor::from_json(&identity.genesis, 16).unwrap_or(Value::Null));
        identity.did = format!("did:plc:{}", multibase::Base::Base32Lower.encode(Sha256::digest(&bytes)).get(..24).unwrap_or_default());
        (identity, recovery)
    }

    /// The public signing key.
    pub fn public_key(&self) -> PublicKey {
        self.signing.public_key()
    }

    /// DID document in the Multikey form (plc.directory today).
    pub fn did_document_multikey(&self) -> String {
        crate::did::render_multikey_document(&self.did, &self.public_key(), Some(&self.handle), Some(&self.pds)).to_string()
    }

    /// DID document in the legacy form (`#atproto`, `EcdsaSecp256k1VerificationKey2019` or
    /// `…r1…`, uncompressed point without multicodec), as `@did-plc/server` 0.0.1 renders it.
    pub fn did_document_legacy(&self) -> String {
        let key = self.public_key();
        let (kind, uncompressed) = match &key {
            PublicKey::K256(k) => ("EcdsaSecp256k1VerificationKey2019", k.to_sec1_point(false).as_bytes().to_vec()),
            PublicKey::P256(k) => ("EcdsaSecp256r1VerificationKey2019", k.to_sec1_point(false).as_bytes().to_vec()),
        };
        serde_json::json!({
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": self.did,
            "alsoKnownAs": [format!("at://{}", self.handle)],
            "verificationMethod": [{
                "id": "#atproto",
                "type": kind,
                "controller": self.did,
                "publicKeyMultibase": multibase::encode(multibase::Base::Base58Btc, uncompressed),
            }],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": self.pds}],
        })
        .to_string()
    }

    /// The audit log of this identity (genesis only), as the PLC directory serves it.
    pub fn audit_log(&self) -> String {
        let cid = Cid::for_dag_cbor(&cbor::encode(&cbor::from_json(&self.genesis, 16).unwrap_or(Value::Null)));
        serde_json::json!([{
            "did": self.did,
            "operation": self.genesis,
            "cid": cid.to_string(),
            "nullified": false,
            "createdAt": format_datetime_micros(T0_MICROS - 86_400_000_000),
        }])
        .to_string()
    }
}

/// One audit-log entry for `op` of `did`, created at `created_at` (µs), as the directory lists it.
pub fn plc_log_entry(did: &str, op: &serde_json::Value, created_at: i64, nullified: bool) -> serde_json::Value {
    let cid = Cid::for_dag_cbor(&cbor::encode(&cbor::from_json(op, 16).unwrap_or(Value::Null)));
    serde_json::json!({"did": did, "operation": op, "cid": cid.to_string(), "nullified": nullified, "createdAt": format_datetime_micros(created_at)})
}

/// Signs a PLC operation (JSON without `sig`) and returns it with `sig`.
pub fn signed_plc_op(key: &PrivateKey, mut op: serde_json::Value) -> serde_json::Value {
    let unsigned = cbor::encode(&cbor::from_json(&op, 16).unwrap_or(Value::Null));
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.sign(&unsigned));
    if let Some(object) = op.as_object_mut() {
        object.insert("sig".into(), serde_json::Value::String(sig));
    }
    op
}

/// A repository: records by path, signed by an identity.
#[derive(Clone)]
pub struct TestRepo {
    /// Owner.
    pub identity: Identity,
    /// Record blocks by MST key.
    pub records: BTreeMap<String, Vec<u8>>,
    /// Clock used for revs.
    pub now_micros: i64,
}

/// A signed commit (CID, block), its MST root, and every MST block.
type SignedTree = (Cid, Vec<u8>, Cid, Vec<(Cid, Vec<u8>)>);

/// A way to spoil a proof; each should produce one specific verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// No change.
    None,
    /// Commit signed by another key of the same curve.
    WrongKey,
    /// Commit signature replaced by its high-S twin.
    HighS,
    /// Signature in DER instead of r‖s (length ≠ 64).
    DerSignature,
    /// Commit `did` field names another DID.
    CommitDid(String),
    /// Commit rev an hour after the repo clock.
    FutureRev,
    /// Commit signed, then its rev moved an hour ahead (the signature no longer covers it).
    ForgedRev,
    /// Commit `version` 2.
    Version2,
    /// The record block is left out.
    DropRecord,
    /// An MST node below the root is left out.
    DropMstNode,
    /// One byte of the record block is flipped (its CID no longer matches).
    FlipRecordByte,
    /// The CAR is cut in the middle.
    Truncate,
    /// The commit block is left out.
    DropCommit,
}

impl TestRepo {
    /// An empty repository.
    pub fn new(identity: Identity) -> TestRepo {
        TestRepo { identity, records: BTreeMap::new(), now_micros: T0_MICROS }
    }

    /// Adds or replaces a record.
    pub fn put(&mut self, collection: &str, rkey: &str, value: &Value) {
        self.records.insert(format!("{collection}/{rkey}"), cbor::encode(value));
    }

    /// Adds an `io.atcr.manifest` record keyed by the digest's hex; returns the rkey.
    pub fn put_manifest(&mut self, digest: &str, repository: &str) -> String {
        let rkey = digest.strip_prefix("sha256:").unwrap_or(digest).to_owned();
        let created = format_datetime_micros(self.now_micros);
        self.put(MANIFEST_COLLECTION, &rkey, &manifest_value(digest, repository, "application/vnd.oci.image.manifest.v1+json", &created));
        rkey
    }

    /// Adds `n` filler records so the tree has several layers.
    pub fn put_filler(&mut self, n: usize) {
        for i in 0..n {
            let mut map = Map::default();
            map.insert("$type", Value::Text("app.example.filler".into()));
            map.insert("n", Value::Integer(i as i64));
            self.put("app.example.filler", &tid_from_parts(self.now_micros as u64 - i as u64, 0), &Value::Map(map));
        }
    }

    /// Removes a record.
    pub fn delete(&mut self, collection: &str, rkey: &str) {
        self.records.remove(&format!("{collection}/{rkey}"));
    }

    /// The signed commit block and its CID, plus every MST block.
    fn commit(&self, tamper: &Tamper) -> SignedTree {
        let entries: BTreeMap<Vec<u8>, Cid> = self.records.iter().map(|(k, v)| (k.clone().into_bytes(), Cid::for_dag_cbor(v))).collect();
        let (root, blocks) = mst::build(&entries);
        let rev_micros = match tamper {
            Tamper::FutureRev => self.now_micros + 3_600_000_000,
            _ => self.now_micros,
        };
        let mut commit = Commit {
            did: match tamper {
                Tamper::CommitDid(did) => did.clone(),
                _ => self.identity.did.clone(),
            },
            version: if *tamper == Tamper::Version2 { 2 } else { 3 },
            data: root,
            rev: Some(tid_from_parts(rev_micros as u64, 0)),
            prev: None,
            sig: Vec::new(),
        };
        let signer = match tamper {
            Tamper::WrongKey => PrivateKey::from_seed(self.identity.signing.public_key().curve(), "someone else"),
            _ => self.identity.signing.clone(),
        };
        commit.sig = signer.sign(&commit.unsigned_bytes());
        match tamper {
            Tamper::HighS => commit.sig = signer.to_high_s(&commit.sig),
            Tamper::DerSignature => {
                let (r, s) = commit.sig.split_at(32);
                let mut der = vec![0x30, 0x46, 0x02, 0x21, 0x00];
                der.extend_from_slice(r);
                der.extend_from_slice(&[0x02, 0x21, 0x00]);
                der.extend_from_slice(s);
                commit.sig = der;
            }
            Tamper::ForgedRev => commit.rev = Some(tid_from_parts((self.now_micros + 3_600_000_000) as u64, 0)),
            _ => {}
        }
        let block = commit.signed_bytes();
        (Cid::for_dag_cbor(&block), block, root, blocks)
    }

    /// A `com.atproto.sync.getRecord`-style proof CAR for `collection/rkey`.
    pub fn proof(&self, collection: &str, rkey: &str) -> Vec<u8> {
        self.proof_with(collection, rkey, &Tamper::None)
    }

    /// A proof with one defect.
    pub fn proof_with(&self, collection: &str, rkey: &str, tamper: &Tamper) -> Vec<u8> {
        let (commit_cid, commit_block, root, blocks) = self.commit(tamper);
        let all: std::collections::HashMap<Cid, Vec<u8>> = blocks.into_iter().collect();
        let path = format!("{collection}/{rkey}");
        let walk = mst::walk(|c| all.get(c).map(Vec::as_slice), root, path.as_bytes(), &crate::Limits::default());
        let mut out: Vec<(Cid, Vec<u8>)> = Vec::new();
        if *tamper != Tamper::DropCommit {
            out.push((commit_cid, commit_block));
        }
        if let Ok(walk) = walk {
            for (index, (cid, _)) in walk.path.iter().enumerate() {
                if *tamper == Tamper::DropMstNode && index > 0 {
                    continue;
                }
                if let Some(bytes) = all.get(cid) {
                    out.push((*cid, bytes.clone()));
                }
            }
            if let (mst::Lookup::Present(cid), Some(record)) = (walk.lookup, self.records.get(&path))
                && *tamper != Tamper::DropRecord
            {
                let mut record = record.clone();
                if *tamper == Tamper::FlipRecordByte
                    && let Some(last) = record.last_mut()
                {
                    *last ^= 1;
                }
                out.push((cid, record));
            }
        }
        let mut car = write_car(&commit_cid, out.iter().map(|(c, b)| (*c, b.as_slice())));
        if *tamper == Tamper::Truncate {
            car.truncate(car.len() / 2);
        }
        car
    }

    /// The commit CID, signed rev and MST root of the repository as it is now.
    pub fn head(&self) -> (Cid, String, Cid) {
        let (commit_cid, _, root, _) = self.commit(&Tamper::None);
        (commit_cid, tid_from_parts(self.now_micros as u64, 0), root)
    }

    /// A whole-repository CAR (commit, every node, every record), as `getRepo` returns.
    pub fn export(&self) -> Vec<u8> {
        let (commit_cid, commit_block, _, blocks) = self.commit(&Tamper::None);
        let mut out = vec![(commit_cid, commit_block)];
        out.extend(blocks);
        out.extend(self.records.values().map(|r| (Cid::for_dag_cbor(r), r.clone())));
        write_car(&commit_cid, out.iter().map(|(c, b)| (*c, b.as_slice())))
    }
}

/// A digest for tests: `sha256:` + hex of SHA-256(`label`).
pub fn digest_of(label: &str) -> String {
    format!("sha256:{}", crate::encoding::hex_encode(&Sha256::digest(label.as_bytes())))
}

/// A did:plc audit log of about `bytes` bytes whose first operation lists thousands of rotation
/// keys (garbage signatures): a verifier must refuse it by the did:plc limits before any
/// signature work. For the bounded-work test and benchmark.
pub fn hostile_plc_log(did: &str, bytes: usize) -> String {
    let key = PrivateKey::from_seed(Curve::K256, "hostile").public_key().to_did_key();
    let count = bytes / (key.len() + 3);
    let op = serde_json::json!({
        "type": "plc_operation",
        "rotationKeys": vec![key.clone(); count],
        "verificationMethods": {"atproto": key},
        "alsoKnownAs": [],
        "services": {},
        "prev": null,
        "sig": "A".repeat(86),
    });
    serde_json::json!([{"did": did, "operation": op, "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm", "nullified": false, "createdAt": "2026-01-01T00:00:00.000Z"}]).to_string()
}
