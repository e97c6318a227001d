//! What this node did about containerd's store, kept beside the cache (`node/state.json`):
//! the image records it removed (so a container created from one is still known to run a
//! revoked image once the record is gone) and the containers already reported (each is
//! warned about once, not at every survey). Bounded: the oldest entries go first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StoredContainer, StoredImage};

/// Most removed images and reported containers remembered.
pub const MAX_ENTRIES: usize = 10_000;
/// The largest state file read.
const MAX_BYTES: usize = 8 << 20;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub namespace: String,
    pub name: String,
    pub digest: String,
    /// Microseconds since the epoch, this node's clock.
    pub removed_at: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeState {
    /// Oldest first.
    pub removed: Vec<Removed>,
    /// (namespace, container id) already reported.
    pub warned: BTreeSet<(String, String)>,
}

fn path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("node").join("state.json")
}

impl NodeState {
    /// The state kept in `cache_dir`, or an empty one (a damaged file is started over: at
    /// worst a container is reported again).
    pub fn load(cache_dir: &Path) -> NodeState {
        crate::fsio::read_capped_nofollow(&path(cache_dir), MAX_BYTES).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    /// Writes it atomically (a temporary file beside it, then a rename).
    pub fn save(&self, cache_dir: &Path) -> std::io::Result<()> {
        let path = path(cache_dir);
        let dir = path.parent().unwrap_or(cache_dir);
        std::fs::create_dir_all(dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut temp, &serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        temp.as_file().sync_all()?;
        temp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Remembers that `image` was removed at `now`.
    pub fn removed(&mut self, image: &StoredImage, now: i64) {
        self.removed.retain(|r| !(r.namespace == image.namespace && r.name == image.name));
        self.removed.push(Removed { namespace: image.namespace.clone(), name: image.name.clone(), digest: image.digest.clone(), removed_at: now });
        if self.removed.len() > MAX_ENTRIES {
            let excess = self.removed.len() - MAX_ENTRIES;
            self.removed.drain(..excess);
        }
    }

    /// (namespace, image name) → the target it had when this node removed it.
    pub fn removed_targets(&self) -> BTreeMap<(String, String), String> {
        self.removed.iter().map(|r| ((r.namespace.clone(), r.name.clone()), r.digest.clone())).collect()
    }

    /// True the first time a container is reported.
    pub fn warn_once(&mut self, namespace: &str, id: &str) -> bool {
        if self.warned.len() >= MAX_ENTRIES {
            return false;
        }
        self.warned.insert((namespace.to_owned(), id.to_owned()))
    }

    /// Forgets reported containers that no longer exist (a new container of the same id is
    /// reported again).
    pub fn forget_containers_except(&mut self, containers: &[StoredContainer]) {
        let present: BTreeSet<(String, String)> = containers.iter().map(|c| (c.namespace.clone(), c.id.clone())).collect();
        self.warned.retain(|w| present.contains(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, digest: &str) -> StoredImage {
        StoredImage { namespace: "k8s.io".into(), name: name.into(), digest: digest.into(), media_type: String::new(), size: 0 }
    }

    #[test]
    fn state_survives_a_restart_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = NodeState::load(dir.path());
        assert_eq!(state, NodeState::default());
        state.removed(&image("r/a:1", "sha256:1"), 5);
        assert!(state.warn_once("k8s.io", "c1"));
        assert!(!state.warn_once("k8s.io", "c1"), "once");
        state.save(dir.path()).unwrap();
        let mut again = NodeState::load(dir.path());
        assert_eq!(again, state);
        assert_eq!(again.removed_targets().get(&("k8s.io".into(), "r/a:1".into())).map(String::as_str), Some("sha256:1"));
        again.forget_containers_except(&[]);
        assert!(again.warn_once("k8s.io", "c1"), "a container gone and back is reported again");
        for i in 0..MAX_ENTRIES + 5 {
            again.removed(&image(&format!("r/{i}"), "sha256:2"), i as i64);
        }
        assert_eq!(again.removed.len(), MAX_ENTRIES);
        assert_eq!(again.removed.first().map(|r| r.name.as_str()), Some("r/5"), "the oldest go first");
        // A damaged file starts over.
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        assert_eq!(NodeState::load(dir.path()), NodeState::default());
    }
}
