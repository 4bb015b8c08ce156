//! Storage backends of the local [`crate::BlockManager`]: [`MemoryStorage`] and
//! [`DiskStorage`], behind one [`BlockStorage`] trait.
//!
//! A backend only stores and returns blocks; limits, the choice of tier, waiting for
//! space and accounting are the manager's. Both backends pass the same conformance suite
//! (`blockstore/tests/storage_conformance.rs`). The trait is synchronous: memory calls are
//! cheap, and the manager runs disk calls on tokio's blocking pool.

mod disk;
mod memory;

pub use disk::{DiskStorage, RecoveredBlock, SPILL_HEADER_LEN, SPILL_MAGIC};
pub use memory::MemoryStorage;

use crate::block::{Block, BlockId};
use crate::error::Result;

/// What every storage backend provides.
///
/// Contract (checked by the conformance suite):
/// - `put` then `get` returns an equal block (same id, data, record count, checksum);
/// - `put` of an id already present replaces it (the manager decides whether that is
///   allowed; backends do not check content);
/// - `get` verifies the data against the checksum and fails with
///   [`crate::Error::BlockCorrupt`] (or, for headers of spill files,
///   [`crate::Error::CorruptSpillFile`]) rather than return bad bytes;
/// - `get` and `remove` of an absent id return `None` / `false`, not an error;
/// - `list` returns the ids present, ascending.
pub trait BlockStorage: Send + Sync + 'static {
    /// "memory" or "disk", for logs and errors.
    fn name(&self) -> &'static str;
    /// Stores a block (replacing one with the same id).
    fn put(&self, block: &Block) -> Result<()>;
    /// Returns the block, checksum verified, or `None` if absent.
    fn get(&self, id: &BlockId) -> Result<Option<Block>>;
    /// Removes the block; `true` if it was present.
    fn remove(&self, id: &BlockId) -> Result<bool>;
    /// The ids present, ascending.
    fn list(&self) -> Result<Vec<BlockId>>;
}
