//! What this node knows: the on-disk cache ([`store`]), the one sequence every remote material
//! is read by ([`read`]), and the rules it obeys ([`knowledge`]): freshness rests on signed time
//! or this node's clock, nothing moves backwards, and accepting a proof or a DID document goes
//! one way for every writer (the engine, bundle import, the watcher).

pub mod knowledge;
pub mod read;
pub mod store;
