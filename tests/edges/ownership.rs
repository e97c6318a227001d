//! Class: who writes what this node trusts. Only this node's user (or root) may write its
//! cache, `bundle_dir` and audit log; entries and locks are never followed through symlinks.
//! Attacks: a cache directory another user can write, pre-created with planted entries (a DID
//! document and a proof signed by the planter); a symlinked entry. Tested as root and as an
//! unprivileged user (uid 65534, through `setpriv`).

use std::os::unix::fs::{PermissionsExt, symlink};
use std::process::Command;

use atproto_sig_core::crypto::Curve;
use atproto_sig_core::testkit::{Identity, TestRepo, digest_of};

use crate::node::{DAY, Node, Run, now_micros, record_bundle};

fn signed(seed: &str) -> (TestRepo, String, String) {
    let mut repo = TestRepo::new(Identity::new(Curve::K256, seed));
    repo.now_micros = now_micros() - DAY;
    let digest = digest_of(seed);
    let rkey = repo.put_manifest(&digest, "app");
    (repo, digest, rkey)
}

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_tree(path: &std::path::Path, uid: u32) {
    let status = Command::new("chown").args(["-R", &format!("{uid}:{uid}"), path.to_str().unwrap()]).status().expect("chown (coreutils) is needed");
    assert!(status.success());
}

/// A node whose cache holds a verified image (imported as this user).
fn node_with_image(seed: &str) -> (Node, String) {
    let (repo, digest, rkey) = signed(seed);
    let node = Node::offline(&repo.identity.did, "");
    assert_eq!(node.import(&record_bundle(&repo, &rkey, Some(&digest), now_micros() - DAY)).code, Some(0));
    assert_eq!(node.pull("app", &digest).code, Some(0), "admitted while the cache is private");
    (node, digest)
}

#[test]
fn a_cache_others_can_write_is_not_trusted_and_doctor_says_so() {
    assert!(rustix::process::geteuid().is_root(), "these tests run as root (they chown and setpriv): run scripts/test as root");
    for (name, spoil) in [("world-writable", 0o777), ("group-writable", 0o770)] {
        let (node, digest) = node_with_image(&format!("writable-{name}"));
        let cache = node.dir.path().join("cache");
        chmod(&cache, spoil);
        let pull = node.pull("app", &digest);
        assert_ne!(pull.code, Some(0), "{name}: planted entries are never trusted: {pull}");
        assert!(pull.stderr.contains("cache: not used") && pull.stderr.contains("writable by"), "{name}: {pull}");
        let doctor = node.run(&["doctor"]);
        assert!(doctor.stdout.lines().any(|l| l.contains("FAIL") && l.contains("cache")), "{name}: {doctor}");
    }
    // Owned by another user: the same.
    let (node, digest) = node_with_image("other-owner");
    chown_tree(&node.dir.path().join("cache"), 4242);
    let pull = node.pull("app", &digest);
    assert_ne!(pull.code, Some(0), "{pull}");
    assert!(pull.stderr.contains("owned by uid 4242"), "{pull}");
}

#[test]
fn cache_entries_are_never_followed_through_symlinks() {
    let (node, digest) = node_with_image("symlinked");
    // Every entry of the cache replaced by a symlink to a copy of itself elsewhere: a planter
    // who can make links (but not write the files) gains nothing, and nothing is followed.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut replaced = 0;
    for dir in std::fs::read_dir(node.dir.path().join("cache/v1")).unwrap().flatten() {
        for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let path = entry.path();
            let copy = elsewhere.path().join(format!("{replaced}.json"));
            std::fs::copy(&path, &copy).unwrap();
            std::fs::remove_file(&path).unwrap();
            symlink(&copy, &path).unwrap();
            replaced += 1;
        }
    }
    assert!(replaced >= 3, "{replaced}");
    let pull = node.pull("app", &digest);
    assert_ne!(pull.code, Some(0), "a symlinked entry is not read: {pull}");
    // (Locks planted as symlinks: `material::store` unit test `a_planted_lock_symlink_is_never_followed`.)
}

/// The verifier run as uid 65534 (as containerd would run it under another user), on `node`.
fn pull_as_nobody(node: &Node, digest: &str) -> Run {
    assert!(Command::new("setpriv").arg("--version").output().is_ok(), "setpriv (util-linux) is needed: apt-get install util-linux");
    node.pull_through(&["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"], "app", digest)
}

#[test]
fn an_unprivileged_verifier_trusts_only_its_own_cache() {
    let (node, digest) = node_with_image("unprivileged");
    // The node's files readable by everyone, its cache handed to uid 65534.
    chmod(node.dir.path(), 0o755);
    for file in ["config.toml", "trust-policy.yaml"] {
        chmod(&node.dir.path().join(file), 0o644);
    }
    let cache = node.dir.path().join("cache");
    chown_tree(&cache, 65534);
    let own = pull_as_nobody(&node, &digest);
    assert_eq!((own.code, own.reason()), (Some(0), "verified"), "its own private cache is trusted: {own}");
    // Another unprivileged user's cache is not.
    chown_tree(&cache, 4243);
    let other = pull_as_nobody(&node, &digest);
    assert_ne!(other.code, Some(0), "{other}");
    assert!(other.stderr.contains("owned by uid 4243"), "{other}");
}

#[test]
fn a_cache_directory_the_operator_moved_behind_a_symlink_is_still_used() {
    let (node, digest) = node_with_image("moved-cache");
    let cache = node.dir.path().join("cache");
    let moved = node.dir.path().join("data-disk-cache");
    std::fs::rename(&cache, &moved).unwrap();
    symlink(&moved, &cache).unwrap();
    let pull = node.pull("app", &digest);
    assert_eq!((pull.code, pull.reason()), (Some(0), "verified"), "{pull}");
    // But not when what it points to is writable by others.
    chmod(&moved, 0o777);
    assert_ne!(node.pull("app", &digest).code, Some(0));
}
