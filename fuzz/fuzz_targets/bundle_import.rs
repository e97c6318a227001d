#![no_main]
//! A bundle file from anywhere: parsed, then every entry verified and imported into a scratch
//! cache, as `bundle import` and the refresh timer do. Must never panic or run unbounded.
use std::sync::OnceLock;

use containerd_verifier::testkit::{import_bundle, parse_bundle};
use containerd_verifier::{config::Config, material::store::Cache};
use libfuzzer_sys::fuzz_target;

fn cache() -> &'static (tempfile::TempDir, Cache) {
    static CACHE: OnceLock<(tempfile::TempDir, Cache)> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|_| std::process::abort());
        let cache = Cache::new(dir.path());
        (dir, cache)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = parse_bundle(data) {
        let (_, cache) = cache();
        let _ = import_bundle(&parsed, cache, "fuzz", &Config::default(), 1_767_225_600_000_000);
    }
});
