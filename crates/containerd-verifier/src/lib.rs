//! The `atproto-verifier` binary's modules, as a library, in layers; imports point down only:
//!
//! 1. ground: [`config`], [`limits`], [`log`], [`clock`], [`fsio`], [`exit`];
//! 2. [`remote`]: the world, passed in (`Fetch`, `Resolve`, `Subscribe`; the real ones named
//!    only in `remote::system`);
//! 3. `lookup`: remote material, typed (ATProto identities and repositories, OCI registries);
//!    nothing there decides trust;
//! 4. [`material`]: what this node knows (the on-disk cache, the one read sequence, the
//!    knowledge rules: signed time only, never backwards, one way in);
//! 5. [`engine`]: one decision (`engine::decide`), or a batch of lookups (`engine::Session`);
//! 6. adapters: `bundle` (create, import), [`bindir`] (containerd), [`cli`] (operators and CI);
//!    [`serve`] (Kubernetes admission over HTTPS), [`ratify`] (Ratify v1's plugin entry),
//!    [`watch`] (revocations from the repositories' event streams); batch decisions:
//!    `policy_cases` (`policy test`, offline) and `coverage` (a namespace, identity or cluster).
//!
//! The API boundary is [`engine`], [`remote`], [`material`] and [`config`] (plus the ground
//! floor); the rest is `pub(crate)`. In-memory doubles of the world (`remote::memory`) and the
//! entry points tests and fuzz targets drive (`testkit`) exist only with the `testkit` feature.
#![forbid(unsafe_code)]

pub mod bindir;
pub(crate) mod bundle;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod coverage;
pub mod engine;
pub mod exit;
pub(crate) mod fleet;
pub mod fsio;
pub mod limits;
pub mod log;
pub(crate) mod lookup;
pub mod material;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod policy_cases;
pub mod ratify;
pub mod remote;
pub mod serve;
pub mod watch;

#[cfg(feature = "testkit")]
pub mod testkit;
