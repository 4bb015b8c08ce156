//! The received-data seam: where a block goes before its source is acknowledged.
//!
//! Every input stream stores its blocks through a [`ReceivedBlockHandler`]. A receiver
//! acknowledges its source only after [`ReceivedBlockHandler::store`] has resolved: that is
//! the moment the stream's durability policy holds for the block. The engine ships the
//! in-memory handler ([`MemoryBlockHandler`], the *ignore* durability mode: a block lost
//! before its batch ran is counted and reported, never silent); the durability modes
//! (write-ahead log, hot replication) implement the same trait, and a pipeline picks one per
//! stream with [`crate::StreamingContext::set_block_handler`].
//!
//! The life of a block, as the handler sees it:
//! 1. `store(block)`: make the block hold under the policy; return its [`StoredBlock`]
//!    (the locator says where to find it again).
//! 2. `consumed(id)`: every block stage has run on the block and its derived results are
//!    cached by the engine; an in-memory copy kept only for the engine may go.
//! 3. `read(stored)`: a batch needs the bytes again (recomputation, e.g. after a restart).
//!    `Ok(None)` means the block is lost: the batch is computed without it and the loss is
//!    counted in [`crate::BatchInfo::lost_blocks`] and `lost_records`.
//! 4. `cleanup(blocks)`: no batch will need the blocks again.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::block::{Block, BlockId, StoredBlock};
use crate::clock::BoxFuture;
use crate::error::Result;

/// Stores received blocks under one durability policy (see the module docs).
pub trait ReceivedBlockHandler: Send + Sync + 'static {
    /// The durability mode's name, for logs and metrics ("ignore", "wal", "replicated").
    fn mode(&self) -> &'static str;

    /// Stores `block`; resolves when the block holds under the policy.
    fn store(&self, block: Block) -> BoxFuture<Result<StoredBlock>>;

    /// Called once every block stage has run on the block (its results are cached).
    fn consumed(&self, id: BlockId);

    /// Reads a stored block back; `Ok(None)` if it is lost.
    fn read(&self, stored: &StoredBlock) -> BoxFuture<Result<Option<Bytes>>>;

    /// Forgets blocks that no batch will need again.
    fn cleanup(&self, blocks: &[StoredBlock]) -> BoxFuture<Result<()>>;
}

/// The in-memory handler: the *ignore* durability mode.
///
/// `store` resolves at once. The bytes are kept only until the block's stages have run
/// (`consumed`): a running pipeline never needs them after that, because the derived results
/// are cached until the batch is cleaned up, and keeping raw text for a whole batch would
/// make memory grow with the input rate. A block read after that, or after a restart, is
/// reported lost.
#[derive(Debug, Default)]
pub struct MemoryBlockHandler {
    // Sharded by the block's sequence number, so two receivers (or a receiver and a batch
    // reading back) rarely contend.
    shards: [Mutex<HashMap<BlockId, Bytes>>; SHARDS],
}

const SHARDS: usize = 8;

impl MemoryBlockHandler {
    /// An empty handler.
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, id: BlockId) -> &Mutex<HashMap<BlockId, Bytes>> {
        &self.shards[(id.seq as usize).wrapping_add(id.stream.0 as usize) % SHARDS]
    }

    /// Stores a block synchronously (the in-memory store never waits).
    pub fn insert(&self, block: Block) -> StoredBlock {
        let stored = StoredBlock {
            id: block.id,
            records: block.records,
            len_bytes: block.bytes.len() as u64,
            locator: Vec::new(),
            source_offsets: block.source_offsets.clone(),
        };
        self.shard(block.id)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(block.id, block.bytes);
        stored
    }

    /// The number of blocks whose bytes are held (for tests and metrics).
    pub fn blocks_held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

impl ReceivedBlockHandler for MemoryBlockHandler {
    fn mode(&self) -> &'static str {
        "ignore"
    }

    fn store(&self, block: Block) -> BoxFuture<Result<StoredBlock>> {
        let stored = self.insert(block);
        Box::pin(async move { Ok(stored) })
    }

    fn consumed(&self, id: BlockId) {
        self.shard(id)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn read(&self, stored: &StoredBlock) -> BoxFuture<Result<Option<Bytes>>> {
        let bytes = self
            .shard(stored.id)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&stored.id)
            .cloned();
        Box::pin(async move { Ok(bytes) })
    }

    fn cleanup(&self, blocks: &[StoredBlock]) -> BoxFuture<Result<()>> {
        for b in blocks {
            self.shard(b.id)
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&b.id);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::StreamId;

    #[tokio::test]
    async fn memory_handler_keeps_bytes_until_consumed() {
        let h = MemoryBlockHandler::new();
        let id = BlockId {
            stream: StreamId(0),
            seq: 1,
        };
        let stored = h
            .store(Block {
                id,
                records: 2,
                bytes: Bytes::from_static(b"a\nb\n"),
                source_offsets: None,
            })
            .await
            .unwrap();
        assert_eq!((stored.records, stored.len_bytes), (2, 4));
        assert_eq!(
            h.read(&stored).await.unwrap().as_deref(),
            Some(&b"a\nb\n"[..])
        );
        h.consumed(id);
        assert_eq!(
            h.read(&stored).await.unwrap(),
            None,
            "a consumed block reads as lost"
        );
        assert_eq!(h.blocks_held(), 0);
    }
}
