//! Reading operator-supplied and cached files with a size cap: a larger file is an error,
//! never a truncation.

use std::fmt;
use std::io::Read;
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
    let error = |problem: String| InputError { path: path.to_owned(), problem };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).map_err(|e| error(e.to_string()))?;
    if bytes.len() > max {
        return Err(error(format!("larger than the {max}-byte limit")));
    }
    Ok(bytes)
}
