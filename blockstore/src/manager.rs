//! [`BlockManager`]: the local block store of one process, memory first, spilling to a
//! directory, both within limits.
//!
//! Rules the code keeps:
//! 1. Every block is charged before it is stored and the charge is released only once the
//!    block is gone, so `memory_used <= memory_max_bytes` and `disk_used <= disk_max_bytes`
//!    hold at every moment (except right after startup, when the spill directory may hold
//!    more than a lowered limit; new blocks then wait).
//! 2. A put that finds no room waits for a removal, at most `put_wait_max_ms`, then fails
//!    with [`Error::StoreFull`]. Nothing is ever stored beyond the limits.
//! 3. When memory is full the *incoming* block goes to disk; blocks already in memory stay.
//!    Receivers' blocks are read oldest first (the next batch takes them), so keeping the
//!    older ones in memory serves the common read, and no block is moved while a reader
//!    might be looking at it.
//! 4. Disk writes, reads and deletions run on tokio's blocking pool, and their bookkeeping
//!    happens on that pool too, so a caller that stops waiting (a dropped future) cannot
//!    leave an entry half-updated. While a block's file is being written or deleted, its
//!    entry says so and other operations on the same id wait for it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::block::{Block, BlockId};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::Tier;
use crate::storage::{BlockStorage, DiskStorage, MemoryStorage};

/// Memory charged per block on top of its data: the index entry, the map slot and the
/// `Bytes` header. An estimate that keeps many tiny blocks from escaping the limit.
pub const BLOCK_MEMORY_OVERHEAD_BYTES: u64 = 128;

/// Usage figures of a [`BlockManager`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Memory charged for blocks in memory.
    pub memory_used_bytes: u64,
    /// The memory limit.
    pub memory_max_bytes: u64,
    /// Disk charged for spill files (including ones being written).
    pub disk_used_bytes: u64,
    /// The disk limit.
    pub disk_max_bytes: u64,
    /// Blocks in memory.
    pub memory_blocks: u64,
    /// Blocks in spill files.
    pub disk_blocks: u64,
}

/// The local block store. Cheap to clone (clones share the store).
#[derive(Clone, Debug)]
pub struct BlockManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    memory_max_bytes: u64,
    disk_max_bytes: u64,
    put_wait_max: Duration,
    memory: MemoryStorage,
    disk: Option<Arc<DiskStorage>>,
    state: Mutex<State>,
    /// Signalled whenever space is released or an entry leaves a transient slot.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    index: BTreeMap<BlockId, Entry>,
    memory_used: u64,
    disk_used: u64,
    memory_blocks: u64,
    disk_blocks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: Slot,
    len: u64,
    crc32: u32,
    /// What was added to `memory_used` or `disk_used` for this block.
    charge: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Memory,
    Disk,
    /// The spill file is being written; the block is not readable yet.
    Writing,
    /// The spill file is being deleted; the block is already gone for readers.
    Removing,
}

enum PutStep {
    Done(Tier, bool),
    Wait,
    WriteToDisk(Arc<DiskStorage>),
}

impl BlockManager {
    /// Opens the store: validates `config`, and when `disk_max_bytes > 0` opens the spill
    /// directory, whose blocks (from a previous run) become available again.
    pub fn open(config: &Config) -> Result<Self> {
        config.validate()?;
        let mut state = State::default();
        let disk = match (&config.data_dir, config.disk_max_bytes) {
            (Some(dir), max) if max > 0 => {
                let (disk, recovered) = DiskStorage::open(dir)?;
                for found in recovered {
                    state.disk_used += found.file_len;
                    state.disk_blocks += 1;
                    state.index.insert(
                        found.id,
                        Entry {
                            slot: Slot::Disk,
                            len: found.len,
                            crc32: found.crc32,
                            charge: found.file_len,
                        },
                    );
                }
                if state.disk_blocks > 0 {
                    tracing::info!(
                        dir = %disk.dir().display(),
                        blocks = state.disk_blocks,
                        bytes = state.disk_used,
                        "recovered spilled blocks"
                    );
                }
                if state.disk_used > max {
                    tracing::warn!(
                        used = state.disk_used,
                        disk_max_bytes = max,
                        "recovered spill files exceed `disk_max_bytes`; new blocks wait for removals"
                    );
                }
                Some(Arc::new(disk))
            }
            _ => None,
        };
        Ok(BlockManager {
            inner: Arc::new(Inner {
                memory_max_bytes: config.memory_max_bytes,
                disk_max_bytes: if disk.is_some() {
                    config.disk_max_bytes
                } else {
                    0
                },
                put_wait_max: Config::duration(config.put_wait_max_ms),
                memory: MemoryStorage::new(),
                disk,
                state: Mutex::new(state),
                changed: Notify::new(),
            }),
        })
    }

    /// Stores a block after verifying its checksum. Memory first; disk if memory is full;
    /// if both are full, waits up to `put_wait_max_ms` for removals, then fails with
    /// [`Error::StoreFull`]. Storing the same block again (same id, length and checksum) is
    /// a success that changes nothing; a different block under a present id is
    /// [`Error::BlockConflict`].
    pub async fn put(&self, block: Block) -> Result<Tier> {
        block.verify_at("the block handed to put")?;
        self.put_verified(block).await
    }

    /// [`BlockManager::put`] for a block whose checksum the caller has just verified (the
    /// frame decoder does, for blocks received from the network).
    pub(crate) async fn put_verified(&self, block: Block) -> Result<Tier> {
        self.put_verified_new(block).await.map(|(tier, _)| tier)
    }

    /// [`BlockManager::put_verified`], also saying whether this call stored the block
    /// (`false` when it was already there).
    pub(crate) async fn put_verified_new(&self, block: Block) -> Result<(Tier, bool)> {
        let wait = self.inner.put_wait_max;
        self.put_verified_within(block, wait, "put_wait_max_ms")
            .await
    }

    /// [`BlockManager::put_verified_new`] with its own bound on waiting for space (the
    /// server's, `server_put_wait_max_ms`), named by `wait_setting` in the error.
    pub(crate) async fn put_verified_within(
        &self,
        block: Block,
        wait: Duration,
        wait_setting: &'static str,
    ) -> Result<(Tier, bool)> {
        let inner = &self.inner;
        let len = block.len() as u64;
        let memory_charge = len + BLOCK_MEMORY_OVERHEAD_BYTES;
        let disk_charge = DiskStorage::file_len(len);
        if memory_charge > inner.memory_max_bytes && disk_charge > inner.disk_max_bytes {
            return Err(Error::BlockTooLarge {
                block: block.id(),
                len_bytes: len,
                max_bytes: inner
                    .memory_max_bytes
                    .saturating_sub(BLOCK_MEMORY_OVERHEAD_BYTES)
                    .max(
                        inner
                            .disk_max_bytes
                            .saturating_sub(DiskStorage::file_len(0)),
                    ),
                setting: "memory_max_bytes and disk_max_bytes",
            });
        }
        let started = Instant::now();
        let deadline = started + wait;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is checked, so a release between the check and
            // the wait is not missed.
            notified.as_mut().enable();
            let step = {
                let mut state = inner.lock();
                match state.index.get(&block.id()).copied() {
                    Some(entry) if !block.same_content(entry.len, entry.crc32) => {
                        return Err(Error::BlockConflict {
                            block: block.id(),
                            location: "the local store".to_owned(),
                            existing_len: entry.len,
                            existing_crc: entry.crc32,
                            new_len: len,
                            new_crc: block.crc32(),
                        });
                    }
                    Some(Entry {
                        slot: Slot::Memory, ..
                    }) => PutStep::Done(Tier::Memory, false),
                    Some(Entry {
                        slot: Slot::Disk, ..
                    }) => PutStep::Done(Tier::Disk, false),
                    Some(Entry {
                        slot: Slot::Writing | Slot::Removing,
                        ..
                    }) => PutStep::Wait,
                    None if state.memory_used + memory_charge <= inner.memory_max_bytes => {
                        inner.memory.put(&block)?;
                        state.memory_used += memory_charge;
                        state.memory_blocks += 1;
                        state.index.insert(
                            block.id(),
                            Entry {
                                slot: Slot::Memory,
                                len,
                                crc32: block.crc32(),
                                charge: memory_charge,
                            },
                        );
                        PutStep::Done(Tier::Memory, true)
                    }
                    None => match &inner.disk {
                        Some(disk) if state.disk_used + disk_charge <= inner.disk_max_bytes => {
                            state.disk_used += disk_charge;
                            state.index.insert(
                                block.id(),
                                Entry {
                                    slot: Slot::Writing,
                                    len,
                                    crc32: block.crc32(),
                                    charge: disk_charge,
                                },
                            );
                            PutStep::WriteToDisk(Arc::clone(disk))
                        }
                        _ => PutStep::Wait,
                    },
                }
            };
            match step {
                PutStep::Done(tier, new) => return Ok((tier, new)),
                PutStep::WriteToDisk(disk) => {
                    return self
                        .write_to_disk(disk, block)
                        .await
                        .map(|tier| (tier, true));
                }
                PutStep::Wait => {
                    let now = Instant::now();
                    if now >= deadline {
                        let state = inner.lock();
                        return Err(Error::StoreFull {
                            block: block.id(),
                            len_bytes: len,
                            memory_used_bytes: state.memory_used,
                            memory_max_bytes: inner.memory_max_bytes,
                            disk_used_bytes: state.disk_used,
                            disk_max_bytes: inner.disk_max_bytes,
                            waited_ms: now.duration_since(started).as_millis() as u64,
                            wait_setting,
                        });
                    }
                    let _ = tokio::time::timeout_at(deadline.into(), notified).await;
                }
            }
        }
    }

    async fn write_to_disk(&self, disk: Arc<DiskStorage>, block: Block) -> Result<Tier> {
        let inner = Arc::clone(&self.inner);
        let id = block.id();
        let path = disk.path_of(&id);
        // The bookkeeping runs inside the blocking task, so it completes even if this
        // future is dropped (rule 4).
        let task = tokio::task::spawn_blocking(move || {
            let result = disk.put(&block);
            let mut state = inner.lock();
            match state.index.get_mut(&id) {
                Some(entry) if entry.slot == Slot::Writing => match &result {
                    Ok(()) => {
                        entry.slot = Slot::Disk;
                        state.disk_blocks += 1;
                    }
                    Err(_) => {
                        let charge = entry.charge;
                        state.index.remove(&id);
                        state.disk_used -= charge;
                    }
                },
                // Nothing else moves an entry out of `Writing`; if that ever changes, say so.
                other => {
                    tracing::error!(block = %id, entry = ?other, "spill entry changed during write")
                }
            }
            drop(state);
            inner.changed.notify_waiters();
            result
        });
        match task.await {
            Ok(result) => result.map(|()| Tier::Disk),
            Err(join) => Err(Error::Io {
                op: "write spill file",
                path,
                cause: std::io::Error::other(join.to_string()),
            }),
        }
    }

    /// Returns a block, its checksum verified, or `None` if this store does not hold it.
    pub async fn get(&self, id: &BlockId) -> Result<Option<Block>> {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let slot = self.inner.lock().index.get(id).map(|e| e.slot);
            match slot {
                None | Some(Slot::Removing) => return Ok(None),
                Some(Slot::Memory) => return self.inner.memory.get(id),
                Some(Slot::Writing) => notified.await,
                Some(Slot::Disk) => {
                    let Some(disk) = self.inner.disk.clone() else {
                        return Ok(None);
                    };
                    let id = *id;
                    let path = disk.path_of(&id);
                    return match tokio::task::spawn_blocking(move || disk.get(&id)).await {
                        Ok(result) => result,
                        Err(join) => Err(Error::Io {
                            op: "read spill file",
                            path,
                            cause: std::io::Error::other(join.to_string()),
                        }),
                    };
                }
            }
        }
    }

    /// Whether the store holds the block (complete and readable).
    pub fn contains(&self, id: &BlockId) -> bool {
        matches!(
            self.inner.lock().index.get(id).map(|e| e.slot),
            Some(Slot::Memory | Slot::Disk)
        )
    }

    /// Removes a block; `true` if it was present. Frees its memory or disk charge, which
    /// wakes puts waiting for space.
    pub async fn remove(&self, id: &BlockId) -> Result<bool> {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let disk = {
                let mut state = self.inner.lock();
                let Some(entry) = state.index.get(id).copied() else {
                    return Ok(false);
                };
                match entry.slot {
                    Slot::Memory => {
                        self.inner.memory.remove(id)?;
                        state.index.remove(id);
                        state.memory_used -= entry.charge;
                        state.memory_blocks -= 1;
                        drop(state);
                        self.inner.changed.notify_waiters();
                        return Ok(true);
                    }
                    Slot::Writing | Slot::Removing => None,
                    Slot::Disk => {
                        if let Some(e) = state.index.get_mut(id) {
                            e.slot = Slot::Removing;
                        }
                        state.disk_blocks -= 1;
                        self.inner.disk.clone()
                    }
                }
            };
            let Some(disk) = disk else {
                notified.await;
                continue;
            };
            let inner = Arc::clone(&self.inner);
            let id = *id;
            let path = disk.path_of(&id);
            let task = tokio::task::spawn_blocking(move || {
                let result = disk.remove(&id);
                let mut state = inner.lock();
                if let Some(entry) = state.index.remove(&id) {
                    state.disk_used -= entry.charge;
                }
                if let Err(err) = &result {
                    // The entry is gone either way: a file that cannot be deleted must not
                    // be served as if the block were still wanted. Its bytes stay charged
                    // to nothing, which the log makes visible.
                    tracing::warn!(error = %err, "spill file could not be deleted");
                }
                drop(state);
                inner.changed.notify_waiters();
                result
            });
            return match task.await {
                Ok(result) => result.map(|_| true),
                Err(join) => Err(Error::Io {
                    op: "remove spill file",
                    path,
                    cause: std::io::Error::other(join.to_string()),
                }),
            };
        }
    }

    /// Every block held, ascending.
    pub fn list(&self) -> Vec<BlockId> {
        self.list_after(None, usize::MAX).0
    }

    /// Up to `limit` ids after `after` (exclusive), ascending, and whether more follow.
    pub fn list_after(&self, after: Option<BlockId>, limit: usize) -> (Vec<BlockId>, bool) {
        let state = self.inner.lock();
        let lower = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut ids = Vec::new();
        let mut more = false;
        for (id, entry) in state.index.range((lower, Bound::Unbounded)) {
            if !matches!(entry.slot, Slot::Memory | Slot::Disk) {
                continue;
            }
            if ids.len() == limit {
                more = true;
                break;
            }
            ids.push(*id);
        }
        (ids, more)
    }

    /// Memory and disk usage.
    pub fn usage(&self) -> Usage {
        let state = self.inner.lock();
        Usage {
            memory_used_bytes: state.memory_used,
            memory_max_bytes: self.inner.memory_max_bytes,
            disk_used_bytes: state.disk_used,
            disk_max_bytes: self.inner.disk_max_bytes,
            memory_blocks: state.memory_blocks,
            disk_blocks: state.disk_blocks,
        }
    }

    /// The tier a block is in, if it is held.
    pub fn tier_of(&self, id: &BlockId) -> Option<Tier> {
        match self.inner.lock().index.get(id)?.slot {
            Slot::Memory => Some(Tier::Memory),
            Slot::Disk => Some(Tier::Disk),
            Slot::Writing | Slot::Removing => None,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent before anything that can panic,
        // so a poisoned lock's data is still valid.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
