//! A firehose `#commit` that proves itself (sync 1.1): the commit block in the frame's CAR is
//! the frame's commit, of the frame's repository, signed by the key the caller holds for it;
//! every op's record state is proven under the new MST root by the frame's own blocks; and the
//! ops inverted (with their `prev` CIDs) turn that root back into `prevData`, using only those
//! blocks. Only then may a consumer act on the ops without asking the PDS (a deletion is proven
//! absent under a signed root). Anything else is a hint: ask the PDS.
//!
//! Freshness (the rev against what the consumer already holds) is the consumer's call: this
//! returns the signed rev.

use std::fmt;

use crate::Limits;
use crate::car::{Car, CarError};
use crate::cid::Cid;
use crate::commit::{Commit, CommitError};
use crate::crypto::PublicKey;
use crate::firehose::{Action, CommitEvent};
use crate::mst::{self, Edit, Lookup, MstError};

/// What a proven commit says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenCommit {
    /// The repository.
    pub did: String,
    /// The signed rev (the commit block's, not the event's word).
    pub rev: String,
    /// The new MST root.
    pub data: Cid,
    /// The previous MST root (`prevData`), which the inverted ops reproduce.
    pub prev_data: Cid,
    /// Each op's path and the record CID now under the signed root (`None`: proven absent).
    pub records: Vec<(String, Option<Cid>)>,
}

/// Why a `#commit` does not prove itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitProofError {
    /// `tooBig`: the blocks were not sent.
    TooBig,
    /// No `prevData` (a sync 1.0 frame, or a repository's first commit).
    NoPrevData,
    /// The blocks are not a valid CAR.
    Car(CarError),
    /// The CAR's root is not the frame's `commit`.
    WrongRoot,
    /// The commit block does not decode.
    Commit(CommitError),
    /// The commit is of another repository than the frame says.
    DidMismatch,
    /// The signature does not verify under the key held for the DID.
    Signature,
    /// The event's rev is not the signed one.
    RevMismatch,
    /// An op's fields do not fit its action (create without `cid`, delete without `prev`, ...).
    OpShape(String),
    /// An op's record state is not what the new root proves.
    OpNotProven(String),
    /// The MST could not be walked or edited with the blocks sent.
    Mst(MstError),
    /// The inverted ops do not reproduce `prevData`.
    Inversion {
        /// The frame's `prevData`.
        expected: Cid,
        /// What the inverted ops gave.
        found: Cid,
    },
}

impl fmt::Display for CommitProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitProofError::TooBig => write!(f, "the frame is tooBig: its blocks were not sent"),
            CommitProofError::NoPrevData => write!(f, "the frame has no prevData (sync 1.0): it cannot be checked by inversion"),
            CommitProofError::Car(e) => write!(f, "the frame's blocks: {e}"),
            CommitProofError::WrongRoot => write!(f, "the frame's CAR root is not its commit"),
            CommitProofError::Commit(e) => write!(f, "{e}"),
            CommitProofError::DidMismatch => write!(f, "the commit is of another repository than the frame names"),
            CommitProofError::Signature => write!(f, "the commit's signature does not verify under the held key"),
            CommitProofError::RevMismatch => write!(f, "the frame's rev is not the commit's signed rev"),
            CommitProofError::OpShape(why) => write!(f, "op {why}"),
            CommitProofError::OpNotProven(why) => write!(f, "op {why}"),
            CommitProofError::Mst(e) => write!(f, "{e}"),
            CommitProofError::Inversion { expected, found } => write!(f, "the inverted ops give {found}, not prevData {expected}"),
        }
    }
}

impl std::error::Error for CommitProofError {}

/// Checks `event` against `key` (the signing key held for `event.repo`).
pub fn prove_commit(event: &CommitEvent, key: &PublicKey, limits: &Limits) -> Result<ProvenCommit, CommitProofError> {
    if event.too_big {
        return Err(CommitProofError::TooBig);
    }
    let prev_data = event.prev_data.ok_or(CommitProofError::NoPrevData)?;
    let car = Car::parse(&event.blocks, limits).map_err(CommitProofError::Car)?;
    if car.root != event.commit {
        return Err(CommitProofError::WrongRoot);
    }
    let commit = Commit::of_car(&car, limits).map_err(CommitProofError::Commit)?;
    if commit.did != event.repo {
        return Err(CommitProofError::DidMismatch);
    }
    commit.verify_signature(key).map_err(|_| CommitProofError::Signature)?;
    let rev = commit.rev.clone().ok_or(CommitProofError::Commit(CommitError::Field("rev")))?;
    if rev != event.rev {
        return Err(CommitProofError::RevMismatch);
    }
    let block = |cid: &Cid| car.block(cid);
    let mut records = Vec::with_capacity(event.ops.len());
    let mut inverse = Vec::with_capacity(event.ops.len());
    for op in &event.ops {
        let shape = |what: &str| CommitProofError::OpShape(format!("{} {:?}: {what}", op.path, op.action));
        let (now, edit) = match (op.action, op.cid, op.prev) {
            (Action::Create, Some(cid), None) => (Some(cid), Edit::Remove(op.path.clone().into_bytes())),
            (Action::Update, Some(cid), Some(prev)) => (Some(cid), Edit::Put(op.path.clone().into_bytes(), prev)),
            (Action::Delete, None, Some(prev)) => (None, Edit::Put(op.path.clone().into_bytes(), prev)),
            (Action::Create, _, _) => return Err(shape("a create needs cid and no prev")),
            (Action::Update, _, _) => return Err(shape("an update needs cid and prev")),
            (Action::Delete, _, _) => return Err(shape("a delete needs prev and no cid")),
        };
        let walk = mst::walk(block, commit.data, op.path.as_bytes(), limits).map_err(CommitProofError::Mst)?;
        let proven = match walk.lookup {
            Lookup::Present(cid) => Some(cid),
            Lookup::Absent => None,
        };
        if proven != now {
            return Err(CommitProofError::OpNotProven(format!("{}: the new root holds {proven:?}, the op says {now:?}", op.path)));
        }
        records.push((op.path.clone(), now));
        inverse.push(edit);
    }
    // Undone last op first: the ops of one commit touch distinct paths, but order is kept anyway.
    inverse.reverse();
    let found = mst::apply(block, commit.data, &inverse, limits).map_err(CommitProofError::Mst)?;
    if found != prev_data {
        return Err(CommitProofError::Inversion { expected: prev_data, found });
    }
    Ok(ProvenCommit { did: commit.did, rev, data: commit.data, prev_data, records })
}

/// A `com.atproto.sync.getRecord`-style proof CAR for `path`, cut from the frame's own blocks:
/// the commit block, the MST nodes on the path under the new root, and the record block when
/// present. A consumer stores it like any fetched proof (it is verified again there); for a
/// deleted record it is an absence proof under a signed commit.
pub fn record_proof(event: &CommitEvent, path: &str, limits: &Limits) -> Result<Vec<u8>, CommitProofError> {
    let car = Car::parse(&event.blocks, limits).map_err(CommitProofError::Car)?;
    if car.root != event.commit {
        return Err(CommitProofError::WrongRoot);
    }
    let commit = Commit::of_car(&car, limits).map_err(CommitProofError::Commit)?;
    let commit_block = car.block(&car.root).ok_or(CommitProofError::Commit(CommitError::MissingRoot(car.root)))?;
    let walk = mst::walk(|c| car.block(c), commit.data, path.as_bytes(), limits).map_err(CommitProofError::Mst)?;
    let mut blocks: Vec<(Cid, &[u8])> = vec![(car.root, commit_block)];
    for (cid, _) in &walk.path {
        let block = car.block(cid).ok_or(CommitProofError::Mst(MstError::MissingBlock(*cid)))?;
        blocks.push((*cid, block));
    }
    if let Lookup::Present(cid) = walk.lookup {
        let record = car.block(&cid).ok_or(CommitProofError::OpNotProven(format!("{path}: the record block is not in the frame")))?;
        blocks.push((cid, record));
    }
    Ok(crate::car::write_car(&car.root, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Curve;
    use crate::firehose::RepoOp;
    use crate::record::MANIFEST_COLLECTION;
    use crate::testkit::{Identity, TestRepo, digest_of};

    /// A repository of 40 records, then one commit that deletes one image's record and
    /// creates another: the frame a PDS would send (with every block of the new tree).
    fn frame() -> (TestRepo, CommitEvent, String, String) {
        let mut repo = TestRepo::new(Identity::new(Curve::K256, "commit-proof"));
        repo.put_filler(38);
        let gone = repo.put_manifest(&digest_of("gone"), "app");
        let kept = repo.put_manifest(&digest_of("kept"), "app");
        let (_, before_rev, before_root) = repo.head();
        let entries = repo.export();
        let old = Car::parse(&entries, &Limits::repository()).unwrap();
        let old_path = format!("{MANIFEST_COLLECTION}/{gone}");
        let prev = match mst::walk(|c| old.block(c), before_root, old_path.as_bytes(), &Limits::repository()).unwrap().lookup {
            Lookup::Present(cid) => cid,
            Lookup::Absent => panic!("the record is there before"),
        };
        repo.now_micros += 1_000_000;
        repo.delete(MANIFEST_COLLECTION, &gone);
        let added = repo.put_manifest(&digest_of("added"), "app");
        let (commit, rev, root) = repo.head();
        let blocks = repo.export();
        let car = Car::parse(&blocks, &Limits::repository()).unwrap();
        let added_path = format!("{MANIFEST_COLLECTION}/{added}");
        let Lookup::Present(added_cid) = mst::walk(|c| car.block(c), root, added_path.as_bytes(), &Limits::repository()).unwrap().lookup else { panic!() };
        let event = CommitEvent {
            seq: 7,
            repo: repo.identity.did.clone(),
            rev,
            since: Some(before_rev),
            commit,
            blocks,
            ops: vec![
                RepoOp { action: Action::Delete, path: old_path, cid: None, prev: Some(prev) },
                RepoOp { action: Action::Create, path: added_path, cid: Some(added_cid), prev: None },
            ],
            prev_data: Some(before_root),
            too_big: false,
            time: "2026-01-01T00:00:00Z".into(),
        };
        (repo, event, gone, kept)
    }

    #[test]
    fn a_signed_commit_proves_a_deletion_and_inverts_to_prev_data() {
        let (repo, event, gone, _) = frame();
        let proven = prove_commit(&event, &repo.identity.public_key(), &Limits::repository()).unwrap();
        assert_eq!(proven.records[0], (format!("{MANIFEST_COLLECTION}/{gone}"), None));
        assert_eq!(Some(proven.prev_data), event.prev_data);
        assert_eq!(proven.rev, event.rev);
    }

    #[test]
    fn the_frame_cuts_an_absence_proof_the_verifier_accepts_as_a_deletion() {
        let (repo, event, gone, _) = frame();
        let path = format!("{MANIFEST_COLLECTION}/{gone}");
        let car = record_proof(&event, &path, &Limits::repository()).unwrap();
        let key = repo.identity.public_key();
        let verdict = crate::verify::verify(&crate::verify::ProofInput {
            car: &car,
            key: crate::verify::KeySource::Key(&key),
            expect: crate::verify::Expectation { did: &repo.identity.did, rkey: Some(&gone), digest: Some(&digest_of("gone")), repository: None },
            now_micros: repo.now_micros + 1_000_000,
            max_clock_skew_micros: crate::verify::DEFAULT_CLOCK_SKEW_MICROS,
            limits: &Limits::default(),
            known_blocks: None,
        });
        assert_eq!(verdict.reason, crate::Reason::RecordDeleted, "{}", verdict.message);
        assert!(verdict.facts.signature_verified && verdict.facts.path_proven);
    }

    #[test]
    fn every_part_a_forger_could_change_is_caught() {
        let (repo, event, _, kept) = frame();
        let key = repo.identity.public_key();
        let limits = Limits::repository();
        let check = |event: &CommitEvent| prove_commit(event, &key, &limits);
        let other = Identity::new(Curve::K256, "someone else").public_key();
        assert_eq!(prove_commit(&event, &other, &limits), Err(CommitProofError::Signature));
        let wrong_prev = CommitEvent { prev_data: Some(Cid::for_dag_cbor(b"\xa0")), ..event.clone() };
        assert!(matches!(check(&wrong_prev), Err(CommitProofError::Inversion { .. })));
        let sync10 = CommitEvent { prev_data: None, ..event.clone() };
        assert_eq!(check(&sync10), Err(CommitProofError::NoPrevData));
        let big = CommitEvent { too_big: true, ..event.clone() };
        assert_eq!(check(&big), Err(CommitProofError::TooBig));
        let renamed = CommitEvent { repo: "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into(), ..event.clone() };
        assert_eq!(check(&renamed), Err(CommitProofError::DidMismatch));
        let rev = CommitEvent { rev: "3zzzzzzzzzzzz".into(), ..event.clone() };
        assert_eq!(check(&rev), Err(CommitProofError::RevMismatch));
        // A deletion claimed for a record the new root still holds.
        let mut lie = event.clone();
        lie.ops[0].path = format!("{MANIFEST_COLLECTION}/{kept}");
        assert!(matches!(check(&lie), Err(CommitProofError::OpNotProven(_))));
        // An op left out: the inversion no longer reaches prevData.
        let mut short = event.clone();
        short.ops.truncate(1);
        assert!(matches!(check(&short), Err(CommitProofError::Inversion { .. })));
        let mut shape = event.clone();
        shape.ops[0].prev = None;
        assert!(matches!(check(&shape), Err(CommitProofError::OpShape(_))));
        // Only the commit block: the walk needs nodes that are not there.
        let car = Car::parse(&event.blocks, &limits).unwrap();
        let commit_only = crate::car::write_car(&event.commit, std::iter::once((event.commit, car.block(&event.commit).unwrap())));
        let stripped = CommitEvent { blocks: commit_only, ..event.clone() };
        assert!(matches!(check(&stripped), Err(CommitProofError::Mst(MstError::MissingBlock(_)))));
    }
}
