//! Remote material, typed: ATProto identities and repositories ([`atproto`]), OCI registries
//! ([`registry`]). Each lookup returns bytes or a typed failure; nothing here decides trust.

pub mod atproto;
pub mod registry;
