//! The `atproto-verifier` binary's modules, as a library: the decision [`engine`] (one entry,
//! `engine::decide`, with its I/O passed in through [`remote`]), the adapters around it (the
//! containerd entry [`bindir`], the operator and CI command line [`cli`]), and what the engine
//! uses (resolution, registry, cache, bundles). A library so engine tests, fuzz targets and,
//! later, long-running adapters drive the same code; every check of signed data is done by
//! `atproto-sig-core`.
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
