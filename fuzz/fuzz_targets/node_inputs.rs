#![no_main]
//! What a node reads besides proofs: containerd's stdin descriptor and argv, config.toml,
//! hosts.toml (with its certs.d-style values), docker config.json, image references, and
//! `policy test` case files, `coverage cluster`'s Pod lists, and from containerd's store the
//! indexes `node::survey` reads and the node state file.
//! Never a panic.
use std::path::Path;

use containerd_verifier::testkit::{NodeState, docker_config_source, index_manifests, parse_hosts_file, parse_policy_cases, pod_images};
use containerd_verifier::{bindir, config::Config, engine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = engine::request::descriptor_digest(data);
    let _ = pod_images(data);
    let _ = index_manifests(data);
    let _ = serde_json::from_slice::<NodeState>(data);
    let _ = docker_config_source(data, "registry.example.com");
    let _ = docker_config_source(data, "docker.io");
    if let Ok(text) = std::str::from_utf8(data) {
        let args: Vec<String> = text.split_whitespace().take(64).map(str::to_owned).collect();
        let _ = bindir::parse_args(&args);
        let _ = Config::parse(text);
        let _ = parse_hosts_file(Path::new("/etc/containerd/certs.d/x"), text);
        let _ = atproto_sig_core::reference::ImageRef::parse(text);
        let _ = atproto_sig_core::reference::canonical_scope(text);
        let _ = parse_policy_cases(text, "cases.yaml", Path::new("/cases"));
    }
});
