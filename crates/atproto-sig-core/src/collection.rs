//! The signed state of one whole collection: a CAR holding a commit, every MST node covering
//! the collection's keys ([`mst::covering`]) and its records. It proves, at that commit, every
//! record the collection holds and the absence of every other key in it, so a node that
//! imports it can revoke the proofs of records that are gone without knowing their names in
//! advance. Per-record proofs are cut from it ([`record_proof`]) and checked by
//! [`crate::verify`] like any `getRecord` proof: nothing here decides trust.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::Limits;
use crate::car::{Car, write_car};
use crate::cid::Cid;
use crate::commit::Commit;
use crate::crypto::PublicKey;
use crate::mst::{self, Lookup};

/// Why a collection CAR cannot be made or cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionError(pub String);

impl fmt::Display for CollectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CollectionError {}

fn err(e: impl fmt::Display) -> CollectionError {
    CollectionError(e.to_string())
}

/// The commit of a CAR (header root), decoded.
fn commit_of<'a>(car: &Car<'a>, limits: &Limits) -> Result<(&'a [u8], Commit), CollectionError> {
    let commit = Commit::of_car(car, limits).map_err(err)?;
    Ok((car.block(&car.root).unwrap_or_default(), commit))
}

/// Cuts the state of `collection` out of a whole-repository CAR (`getRepo`): the commit, the
/// covering nodes and the collection's records. Returns the CAR and the rkeys it holds.
pub fn extract(repo: &[u8], collection: &str, limits: &Limits) -> Result<(Vec<u8>, Vec<String>), CollectionError> {
    let car = Car::parse(repo, limits).map_err(err)?;
    let (commit_block, commit) = commit_of(&car, limits)?;
    let prefix = format!("{collection}/");
    let (nodes, entries) = mst::covering(|c| car.block(c), commit.data, prefix.as_bytes(), limits).map_err(err)?;
    let mut blocks: Vec<(Cid, &[u8])> = vec![(car.root, commit_block)];
    let mut seen: HashSet<Cid> = HashSet::new();
    for cid in nodes.iter().chain(entries.iter().map(|(_, v)| v)) {
        if seen.insert(*cid) {
            let bytes = car.block(cid).ok_or_else(|| err(format!("block {cid} is missing from the repository")))?;
            blocks.push((*cid, bytes));
        }
    }
    let rkeys = entries.iter().filter_map(|(k, _)| k.strip_prefix(prefix.as_bytes()).and_then(|r| String::from_utf8(r.to_vec()).ok())).collect();
    Ok((write_car(&car.root, blocks), rkeys))
}

/// How many records of `collection` a collection CAR holds: its covering walk, the signature
/// not checked (for saying how large a state is, never for deciding).
pub fn record_count(collection_car: &[u8], collection: &str, limits: &Limits) -> Result<usize, CollectionError> {
    let car = Car::parse(collection_car, limits).map_err(err)?;
    let (_, commit) = commit_of(&car, limits)?;
    let prefix = format!("{collection}/");
    let (_, entries) = mst::covering(|c| car.block(c), commit.data, prefix.as_bytes(), limits).map_err(err)?;
    Ok(entries.len())
}

/// A `getRecord`-style proof for `collection/rkey` cut from a collection CAR: the commit, the
/// nodes on the way to the key, and the record when present (an absence proof otherwise).
pub fn record_proof(collection_car: &[u8], collection: &str, rkey: &str, limits: &Limits) -> Result<Vec<u8>, CollectionError> {
    let mut one = record_proofs(collection_car, collection, &[rkey.to_owned()], limits)?;
    one.pop().map(|(_, car)| car).ok_or_else(|| err("no proof was cut"))
}

/// What a collection CAR proves once its commit is checked: at `commit` (rev `rev`, signed by
/// the DID's key), the collection holds exactly `records` (rkey → record CID); every other key
/// of the collection is proven absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedState {
    /// The repository.
    pub did: String,
    /// The commit's CID (the CAR's root).
    pub commit: Cid,
    /// The commit's rev (signed).
    pub rev: String,
    /// The rev's time, microseconds since the epoch (signed).
    pub rev_micros: i64,
    /// Every record of the collection at that commit: rkey → record CID.
    pub records: BTreeMap<String, Cid>,
}

/// Checks a collection CAR and returns what it proves. The signature is checked first (one
/// check for the whole collection), then the covering walk, linear in the CAR: a forged state
/// costs one parse and one signature check, never work per record. Refused: another DID's
/// commit, a version other than 3, a bad signature, a rev that is not a TID or is later than
/// `now_micros + max_skew_micros`, a covering walk that does not validate.
pub fn signed_state(
    collection_car: &[u8],
    did: &str,
    key: &PublicKey,
    collection: &str,
    now_micros: i64,
    max_skew_micros: i64,
    limits: &Limits,
) -> Result<SignedState, CollectionError> {
    let car = Car::parse(collection_car, limits).map_err(err)?;
    let (_, commit) = commit_of(&car, limits)?;
    if commit.version != 3 {
        return Err(err(format!("commit version {} is not supported (only 3)", commit.version)));
    }
    if commit.did != did {
        return Err(err(format!("the commit is signed for {}, not {did}", commit.did.chars().take(80).collect::<String>())));
    }
    commit.verify_signature(key).map_err(|e| err(format!("commit {} does not verify under the DID's key: {e}", car.root)))?;
    let rev = commit.rev.clone().ok_or_else(|| err("the commit has no rev"))?;
    let rev_micros = commit.rev_micros().ok_or_else(|| err(format!("commit rev {rev:?} is not a TID")))?;
    if rev_micros > now_micros.saturating_add(max_skew_micros) {
        return Err(err(format!("commit rev {rev} is dated in the future beyond the allowed clock skew")));
    }
    let prefix = format!("{collection}/");
    let (_, entries) = mst::covering(|c| car.block(c), commit.data, prefix.as_bytes(), limits).map_err(err)?;
    let records = entries
        .into_iter()
        .filter_map(|(k, cid)| k.strip_prefix(prefix.as_bytes()).and_then(|r| String::from_utf8(r.to_vec()).ok()).map(|r| (r, cid)))
        .collect();
    Ok(SignedState { did: did.to_owned(), commit: car.root, rev, rev_micros, records })
}

/// Per-record proofs for `rkeys`, all cut from one parse of the collection CAR (linear in the
/// CAR plus the paths, not records × CAR).
pub fn record_proofs(collection_car: &[u8], collection: &str, rkeys: &[String], limits: &Limits) -> Result<Vec<(String, Vec<u8>)>, CollectionError> {
    let car = Car::parse(collection_car, limits).map_err(err)?;
    let (commit_block, commit) = commit_of(&car, limits)?;
    let mut out = Vec::with_capacity(rkeys.len());
    for rkey in rkeys {
        let key = format!("{collection}/{rkey}");
        let walk = mst::walk(|c| car.block(c), commit.data, key.as_bytes(), limits).map_err(err)?;
        let mut blocks: Vec<(Cid, &[u8])> = vec![(car.root, commit_block)];
        for (cid, _) in &walk.path {
            blocks.push((*cid, car.block(cid).ok_or_else(|| err(format!("MST node {cid} is missing")))?));
        }
        if let Lookup::Present(cid) = walk.lookup {
            blocks.push((cid, car.block(&cid).ok_or_else(|| err(format!("record {cid} is missing")))?));
        }
        out.push((rkey.clone(), write_car(&car.root, blocks)));
    }
    Ok(out)
}
