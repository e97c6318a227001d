//! The `atproto-verifier` binary's modules, as a library: the containerd entry ([`bindir`]),
//! the operator and CI command line ([`cli`]), and what they share (decisions in [`pipeline`],
//! resolution, registry, cache, bundles). A library so fuzz targets and, later, long-running
//! adapters can drive the same code; every check itself is done by `atproto-sig-core`.
#![forbid(unsafe_code)]

pub mod bindir;
pub mod bundle;
pub mod cache;
pub mod cached;
pub mod cli;
pub mod config;
pub mod containerd_config;
pub mod credentials;
pub mod dns;
pub mod engine;
pub mod exit;
pub mod hosts;
pub mod input;
pub mod knowledge;
pub mod log;
pub mod metrics;
pub mod net;
pub mod output;
pub mod registry;
pub mod remote;
pub mod resolve;
pub mod ureq_fetch;
