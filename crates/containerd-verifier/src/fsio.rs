//! Reading operator-supplied and cached files with a size cap (a larger file is an error,
//! never a truncation), without following symlinks where the file is this node's own, and
//! the ownership rule for what this node trusts: only this node's user (or root) may write it.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file that could not be read (distinct from one that was read and found invalid).
#[derive(Debug)]
pub struct InputError {
    pub path: PathBuf,
    pub problem: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {}: {}", self.path.display(), self.problem)
    }
}

/// Reads at most `max` bytes of `path`; a larger file is an error, not a truncation.
pub fn read_capped(path: &Path, max: usize) -> Result<Vec<u8>, InputError> {
    read_from(std::fs::File::open(path), path, max)
}

/// The same, refusing a symlink as the last component (`O_NOFOLLOW`): for files this node
/// keeps itself (cache entries), where a link could only have been planted.
pub fn read_capped_nofollow(path: &Path, max: usize) -> Result<Vec<u8>, InputError> {
    read_from(std::fs::OpenOptions::new().read(true).custom_flags(nofollow()).open(path), path, max)
}

fn read_from(file: std::io::Result<std::fs::File>, path: &Path, max: usize) -> Result<Vec<u8>, InputError> {
    let error = |problem: String| InputError { path: path.to_owned(), problem };
    let file = file.map_err(|e| error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).map_err(|e| error(e.to_string()))?;
    if bytes.len() > max {
        return Err(error(format!("larger than the {max}-byte limit")));
    }
    Ok(bytes)
}

/// `O_NOFOLLOW`, for `OpenOptionsExt::custom_flags`.
pub fn nofollow() -> i32 {
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// Why a path this node trusts may have been written by someone else.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    #[error("{path} is a symlink (only a real directory or file of this node's is trusted)")]
    Symlink { path: String },
    #[error("{path} is owned by uid {owner}, not by this verifier's user (uid {me}) or root")]
    Owner { path: String, owner: u32, me: u32 },
    #[error("{path} is writable by {who} (mode {mode:o}): anyone who can write it can plant what this node trusts")]
    Writable { path: String, who: &'static str, mode: u32 },
}

/// Checks that `path`, if it exists, is no symlink, is owned by this process's user or root,
/// and is writable by nobody else (no group or other write bit). `Ok(false)` when it does not
/// exist.
pub fn check_private(path: &Path) -> Result<bool, Unsafe> {
    check_private_at(path, false)
}

/// The same for a configured path the operator may have made a symlink (the cache directory
/// moved to another disk): the link is followed, and what it points to must be private.
pub fn check_private_target(path: &Path) -> Result<bool, Unsafe> {
    check_private_at(path, true)
}

fn check_private_at(path: &Path, follow: bool) -> Result<bool, Unsafe> {
    let shown = || path.display().to_string();
    let meta = match if follow { std::fs::metadata(path) } else { std::fs::symlink_metadata(path) } {
        Ok(meta) => meta,
        Err(_) => return Ok(false),
    };
    if meta.file_type().is_symlink() {
        return Err(Unsafe::Symlink { path: shown() });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Unsafe::Owner { path: shown(), owner: meta.uid(), me });
    }
    let mode = meta.mode() & 0o7777;
    // The sticky bit on a shared directory (/tmp) still lets others create entries: refused too.
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 { "everyone" } else { "its group" };
        return Err(Unsafe::Writable { path: shown(), who, mode });
    }
    Ok(true)
}
