//! What tests and fuzz targets reach inside the crate's API boundary (feature `testkit`, never
//! in the release binary): the parsers of hostile node inputs, bundle import, the query
//! encoding the in-memory web is keyed by, and the in-memory world ([`crate::remote::memory`]).

pub use crate::bundle::{Bundle, ImportReport, import as import_bundle, parse as parse_bundle};
pub use crate::coverage::pods::images as pod_images;
pub use crate::fleet::publication::{sign as sign_publication, verify as verify_publication};
pub use crate::fleet::pull::index_entries as fleet_index_entries;
pub use crate::lookup::atproto::query;
pub use crate::lookup::registry::credentials::{Source as DockerConfigSource, source_for as docker_config_source};
pub use crate::lookup::registry::hosts::parse_hosts_file;
/// The manifests an index in containerd's content store lists (`node::survey`).
pub use crate::node::index_manifests;
/// The node's record of removed images and reported containers, as read back from disk.
pub use crate::node::state::NodeState;
pub use crate::policy_cases::parse as parse_policy_cases;
pub use crate::remote::memory::{MemoryFetch, MemoryResolve, MemorySubscribe};
pub use crate::watch::jetstream_event_position;
