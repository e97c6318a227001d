//! The signed state of one whole collection: a CAR holding a commit, every MST node covering
//! the collection's keys ([`mst::covering`]) and its records. It proves, at that commit, every
//! record the collection holds and the absence of every other key in it, so a node that
//! imports it can revoke the proofs of records that are gone without knowing their names in
//! advance. Per-record proofs are cut from it ([`record_proof`]) and checked by
//! [`crate::verify`] like any `getRecord` proof: nothing here decides trust.

use std::collections::HashSet;
use std::fmt;

use crate::Limits;
use crate::car::{Car, write_car};
use crate::cid::Cid;
use crate::commit::Commit;
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

/// A `getRecord`-style proof for `collection/rkey` cut from a collection CAR: the commit, the
/// nodes on the way to the key, and the record when present (an absence proof otherwise).
pub fn record_proof(collection_car: &[u8], collection: &str, rkey: &str, limits: &Limits) -> Result<Vec<u8>, CollectionError> {
    let car = Car::parse(collection_car, limits).map_err(err)?;
    let (commit_block, commit) = commit_of(&car, limits)?;
    let key = format!("{collection}/{rkey}");
    let walk = mst::walk(|c| car.block(c), commit.data, key.as_bytes(), limits).map_err(err)?;
    let mut blocks: Vec<(Cid, &[u8])> = vec![(car.root, commit_block)];
    for (cid, _) in &walk.path {
        blocks.push((*cid, car.block(cid).ok_or_else(|| err(format!("MST node {cid} is missing")))?));
    }
    if let Lookup::Present(cid) = walk.lookup {
        blocks.push((cid, car.block(&cid).ok_or_else(|| err(format!("record {cid} is missing")))?));
    }
    Ok(write_car(&car.root, blocks))
}
