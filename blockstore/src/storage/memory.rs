//! Blocks in a hash map, data shared with the caller (`Bytes` clones, no copies).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::block::{Block, BlockId};
use crate::error::Result;
use crate::storage::BlockStorage;

/// The memory backend.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    blocks: Mutex<HashMap<BlockId, Block>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlockId, Block>> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // operation is a single insert/remove/clone), so a poisoned lock is still usable.
        self.blocks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BlockStorage for MemoryStorage {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn put(&self, block: &Block) -> Result<()> {
        self.lock().insert(block.id(), block.clone());
        Ok(())
    }

    fn get(&self, id: &BlockId) -> Result<Option<Block>> {
        let block = self.lock().get(id).cloned();
        match block {
            Some(block) => {
                // Checked on every read: memory can be corrupted too (by a bug writing
                // through a shared buffer, or by hardware), and the caller is about to
                // compute on or forward these bytes.
                block.verify_at("memory")?;
                Ok(Some(block))
            }
            None => Ok(None),
        }
    }

    fn remove(&self, id: &BlockId) -> Result<bool> {
        Ok(self.lock().remove(id).is_some())
    }

    fn list(&self) -> Result<Vec<BlockId>> {
        let mut ids: Vec<BlockId> = self.lock().keys().copied().collect();
        ids.sort_unstable();
        Ok(ids)
    }
}
