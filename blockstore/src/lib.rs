//! Stores received blocks in memory (spilling to disk) and replicates them to peer
//! executors over TCP ("hot replication").
//!
//! Not built yet: this crate is the subject of the durability issue. See ARCHITECTURE.md.
