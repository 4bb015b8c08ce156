//! Versioned, checksummed metadata checkpoints (data only, never closures) and
//! state snapshots, published atomically.
//!
//! Not built yet: this crate is the subject of the durability issue. See ARCHITECTURE.md.
