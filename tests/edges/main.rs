//! Trust at every edge: each module guards one class of attack found by trying the verifier as
//! an attacker would. Adversarial inputs are files under `tests/edges/data/`.

mod bounds;
mod identity;
mod knowledge;
mod names;
mod node;
mod ownership;
mod reasons;
mod size;
mod time;
mod transport;

/// Loopback fake servers, shared with the integration tests.
#[allow(dead_code, unused_imports)]
#[path = "../integration/harness.rs"]
mod harness;

/// A file of `tests/edges/data`.
pub fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/edges/data").join(name)
}
