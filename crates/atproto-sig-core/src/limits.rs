//! Resource limits for every parser, as one public type (in the style of tough's `Limits`).
//! Defaults fit a `com.atproto.sync.getRecord` proof with a wide margin; [`Limits::repository`]
//! fits whole repository exports for inspection.

/// Caps applied while reading untrusted bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest CAR file accepted, in bytes.
    pub max_car_bytes: usize,
    /// Largest CAR header, in bytes.
    pub max_car_header_bytes: usize,
    /// Largest single block, in bytes.
    pub max_block_bytes: usize,
    /// Most blocks in one CAR.
    pub max_blocks: usize,
    /// Deepest CBOR nesting.
    pub max_cbor_depth: usize,
    /// Most MST levels walked from the root.
    pub max_mst_depth: usize,
    /// Most entries in one MST node.
    pub max_mst_node_entries: usize,
    /// Largest DID document or audit log, in bytes.
    pub max_json_bytes: usize,
    /// Most entries in a did:plc audit log.
    pub max_audit_log_entries: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // A real getRecord proof is 1–10 KB (reference/real-components.md); records are capped
            // at 1 MiB by PDSes. 4 MiB leaves room without inviting abuse.
            max_car_bytes: 4 << 20,
            max_car_header_bytes: 64 << 10,
            max_block_bytes: 2 << 20,
            max_blocks: 1024,
            max_cbor_depth: crate::cbor::DEFAULT_MAX_DEPTH,
            // MST height is ~log4(records); 64 levels would need 4^64 records.
            max_mst_depth: 64,
            max_mst_node_entries: 4096,
            max_json_bytes: 256 << 10,
            max_audit_log_entries: 1000,
        }
    }
}

impl Limits {
    /// Limits for reading a whole repository export (`proof inspect` on a repo CAR).
    pub fn repository() -> Limits {
        Limits { max_car_bytes: 1 << 30, max_blocks: 4_000_000, ..Limits::default() }
    }

    /// Limits for the signed state of one collection carried in a bundle (commit, the MST
    /// nodes covering the collection, and its records): room for a collection of a million
    /// records (about 380 MiB and 1.4 million blocks of ordinary `io.atcr.manifest` records).
    pub fn collection() -> Limits {
        Limits { max_car_bytes: 768 << 20, max_blocks: 3_000_000, ..Limits::default() }
    }
}
