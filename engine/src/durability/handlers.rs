//! The durable [`ReceivedBlockHandler`]s: write-ahead log and hot replication.
//!
//! Both keep the engine's contract (see [`crate::handler`]): `store` resolves only once the
//! block holds under the policy; `read` finds the block again after a restart; `cleanup`
//! never deletes data a durable checkpoint may still need. Under a checkpointed context
//! ([`crate::StreamingContext::get_or_create`]) durable data is deleted only by the
//! checkpointer, after a publish, below what every retained checkpoint references.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use wal::{Lsn, SyncPolicy, Wal};

use crate::block::{Block, BlockId, StoredBlock, StreamId};
use crate::clock::BoxFuture;
use crate::dstream::node::lock;
use crate::error::{Error, Result};
use crate::handler::ReceivedBlockHandler;

/// Bytes before the block's data in a data WAL record: stream (u32 LE), block sequence
/// number (u64 LE), record count (u64 LE). Reads check them against the block asked for,
/// so a locator pointing at the wrong log or record is an error, never wrong data.
pub const WAL_RECORD_HEADER_LEN: usize = 20;

/// The *write-ahead log* durability mode for one input stream.
///
/// `store` appends the block (header + bytes) to the stream's data WAL and resolves once
/// a sync covering it returned (group commit: concurrent stores share one `fdatasync`).
/// The bytes also stay in memory until the block's stages have run (`consumed`), so a
/// running pipeline never reads its own log; a batch recomputed later (after a restart)
/// reads the record by its Lsn (the block's locator, 8 bytes little-endian). There is no
/// in-memory replication: the log is the second copy (SPARK-4671).
pub struct WalBlockHandler {
    stream: StreamId,
    wal: Arc<Wal>,
    location: String,
    /// Bytes of blocks not yet consumed, with their Lsn.
    memory: Arc<Mutex<HashMap<BlockId, (Lsn, Bytes)>>>,
}

impl std::fmt::Debug for WalBlockHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalBlockHandler")
            .field("stream", &self.stream)
            .field("location", &self.location)
            .finish()
    }
}

impl WalBlockHandler {
    /// Opens (recovering) the data WAL of `stream` in `dir` (created if missing).
    pub fn open(dir: &Path, stream: StreamId, sync: SyncPolicy) -> Result<Self> {
        let wal = super::open_local_wal(dir, sync, "open the data WAL")?;
        Ok(Self::with_wal(stream, Arc::new(wal)))
    }

    /// Opens (recovering) the data WAL of `stream` on object storage at `url`, after one
    /// listing request that checks the bucket and the credentials (settings from the
    /// `AWS_*` environment, then `options`; see `wal::objstore`).
    pub fn open_url(
        url: &wal::objstore::StorageUrl,
        options: &wal::objstore::ObjectOptions,
        stream: StreamId,
        sync: SyncPolicy,
    ) -> Result<Self> {
        let wal = Wal::open_url(
            url,
            options,
            wal::Config {
                sync_policy: sync,
                ..wal::Config::default()
            },
        )
        .map_err(|source| Error::Wal {
            what: "open the data WAL",
            location: url.to_string(),
            source,
        })?;
        Ok(Self::with_wal(stream, Arc::new(wal)))
    }

    /// A handler over an open log (any `SegmentStore`: local, simulated, object store).
    pub fn with_wal(stream: StreamId, wal: Arc<Wal>) -> Self {
        WalBlockHandler {
            stream,
            location: wal.location().to_owned(),
            wal,
            memory: Arc::default(),
        }
    }

    /// The stream's data log.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// The lowest Lsn a block not yet recorded anywhere else may have: the lowest Lsn of a
    /// block still in memory (stored, its stages not run, so possibly not yet in the
    /// metadata log), or the next Lsn. The checkpointer never truncates at or above it.
    /// Read before the metadata log's cut: a block stored later gets a higher Lsn.
    pub(crate) fn truncation_floor(&self) -> Lsn {
        let next = self.wal.next_lsn();
        lock(&self.memory)
            .values()
            .map(|(lsn, _)| *lsn)
            .min()
            .map_or(next, |m| m.min(next))
    }

    /// The Lsn a locator written by [`WalBlockHandler::store`] holds.
    pub fn locator_lsn(stored: &StoredBlock) -> Option<Lsn> {
        let bytes: [u8; 8] = stored.locator.as_slice().try_into().ok()?;
        Some(Lsn::new(u64::from_le_bytes(bytes)))
    }

    fn error(&self, block: BlockId, message: String) -> Error {
        Error::BlockStore {
            stream: format!("{} (data WAL {})", self.stream, self.location),
            block,
            message,
        }
    }
}

impl ReceivedBlockHandler for WalBlockHandler {
    fn mode(&self) -> &'static str {
        "wal"
    }

    fn store(&self, block: Block) -> BoxFuture<Result<StoredBlock>> {
        let mut record = BytesMut::with_capacity(WAL_RECORD_HEADER_LEN + block.bytes.len());
        record.put_u32_le(block.id.stream.0);
        record.put_u64_le(block.id.seq);
        record.put_u64_le(block.records);
        record.put_slice(&block.bytes);
        let record = record.freeze();
        let (wal, memory) = (Arc::clone(&self.wal), Arc::clone(&self.memory));
        let (stream, location) = (self.stream, self.location.clone());
        Box::pin(async move {
            let lsn = wal.append(record).await.map_err(|e| Error::BlockStore {
                stream: format!("{stream} (data WAL {location})"),
                block: block.id,
                message: format!("append failed: {e}"),
            })?;
            lock(&memory).insert(block.id, (lsn, block.bytes.clone()));
            Ok(StoredBlock {
                id: block.id,
                records: block.records,
                len_bytes: block.bytes.len() as u64,
                locator: lsn.get().to_le_bytes().to_vec(),
                source_offsets: block.source_offsets,
            })
        })
    }

    fn consumed(&self, id: BlockId) {
        lock(&self.memory).remove(&id);
    }

    fn read(&self, stored: &StoredBlock) -> BoxFuture<Result<Option<Bytes>>> {
        if let Some((_, bytes)) = lock(&self.memory).get(&stored.id) {
            let bytes = bytes.clone();
            return Box::pin(async move { Ok(Some(bytes)) });
        }
        let result = (|| {
            let lsn = Self::locator_lsn(stored).ok_or_else(|| {
                self.error(
                    stored.id,
                    format!("locator of {} bytes is not a WAL Lsn", stored.locator.len()),
                )
            })?;
            let record = self
                .wal
                .read(lsn)
                .map_err(|e| self.error(stored.id, format!("read of Lsn {lsn} failed: {e}")))?;
            if record.len() < WAL_RECORD_HEADER_LEN {
                return Err(self.error(
                    stored.id,
                    format!(
                        "record at Lsn {lsn} is {} bytes, shorter than its header",
                        record.len()
                    ),
                ));
            }
            let field = |at: usize, len: usize| {
                let mut b = [0u8; 8];
                b[..len].copy_from_slice(&record[at..at + len]);
                u64::from_le_bytes(b)
            };
            let (stream, seq, records) = (field(0, 4), field(4, 8), field(12, 8));
            let data = record.slice(WAL_RECORD_HEADER_LEN..);
            if stream != u64::from(stored.id.stream.0)
                || seq != stored.id.seq
                || records != stored.records
                || data.len() as u64 != stored.len_bytes
            {
                return Err(self.error(
                    stored.id,
                    format!(
                        "record at Lsn {lsn} holds block input-{stream}-{seq} ({records} records, {} bytes), \
                         not the {} records and {} bytes expected",
                        data.len(),
                        stored.records,
                        stored.len_bytes
                    ),
                ));
            }
            Ok(Some(data))
        })();
        Box::pin(async move { result })
    }

    fn cleanup(&self, blocks: &[StoredBlock]) -> BoxFuture<Result<()>> {
        // Only the memory copies: records go with whole segments, by Lsn, once no retained
        // checkpoint needs them (the checkpointer's retention).
        let mut memory = lock(&self.memory);
        for b in blocks {
            memory.remove(&b.id);
        }
        Box::pin(async { Ok(()) })
    }
}

/// What a replicated block's locator holds (postcard): the blockstore incarnation the
/// block was put under and the peers that acknowledged it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLocator {
    /// The incarnation part of the blockstore id (one per context run, so a restarted
    /// driver never reuses an id a peer may still hold).
    pub incarnation: u64,
    /// `host:port` of every peer holding a replica when the put resolved.
    pub peers: Vec<String>,
}

/// The *hot replication* durability mode for one input stream, over a
/// [`blockstore::ReplicatedStore`] (local memory plus `peer_replicas` executors).
///
/// `store` resolves when the block is in the local store and on enough peers; with too
/// few live peers it fails with an error naming every peer and why, so the receiver does
/// not acknowledge. `consumed` drops the local copy (replicas stay); `read` asks the local
/// store, then the replicas, then every peer (a restarted driver); a block no peer holds
/// is lost (counted). `cleanup` removes replicas at once, or, under a checkpointed
/// context, once no retained checkpoint needs the block ([`ReplicatedBlockHandler::purge`]).
pub struct ReplicatedBlockHandler {
    store: Arc<blockstore::ReplicatedStore>,
    incarnation: u64,
    runtime: tokio::runtime::Handle,
    defer_cleanup: AtomicBool,
    cleanable: Mutex<Vec<StoredBlock>>,
}

impl std::fmt::Debug for ReplicatedBlockHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedBlockHandler")
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl ReplicatedBlockHandler {
    /// A handler over `store`; block ids get `incarnation` (choose one per run, e.g. the
    /// start time in ms). `runtime` runs the asynchronous releases of local copies.
    pub fn new(
        store: Arc<blockstore::ReplicatedStore>,
        incarnation: u64,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        ReplicatedBlockHandler {
            store,
            incarnation,
            runtime,
            defer_cleanup: AtomicBool::new(false),
            cleanable: Mutex::default(),
        }
    }

    /// The store.
    pub fn store_handle(&self) -> &Arc<blockstore::ReplicatedStore> {
        &self.store
    }

    /// Keep cleaned-up blocks until [`ReplicatedBlockHandler::purge`] (set by a
    /// checkpointed context).
    pub(crate) fn defer_cleanup(&self) {
        self.defer_cleanup.store(true, Ordering::SeqCst);
    }

    /// Removes every cleaned-up block for which `needed` is false (the checkpointer calls
    /// it after a publish, with what the retained checkpoints still need).
    pub(crate) async fn purge(&self, needed: impl Fn(&StoredBlock) -> bool) -> Result<()> {
        let victims: Vec<StoredBlock> = {
            let mut c = lock(&self.cleanable);
            let (keep, go): (Vec<_>, Vec<_>) = c.drain(..).partition(|b| needed(b));
            *c = keep;
            go
        };
        Self::remove(Arc::clone(&self.store), &victims).await
    }

    /// The locator of a block stored by this mode.
    pub fn decode_locator(stored: &StoredBlock) -> Option<ReplicaLocator> {
        postcard::from_bytes(&stored.locator).ok()
    }

    fn blockstore_id(stored: &StoredBlock) -> Result<blockstore::BlockId> {
        let loc = Self::decode_locator(stored).ok_or_else(|| Error::BlockStore {
            stream: stored.id.stream.to_string(),
            block: stored.id,
            message: "corrupt replica locator".to_owned(),
        })?;
        Ok(blockstore::BlockId::new(
            stored.id.stream.0,
            loc.incarnation,
            stored.id.seq,
        ))
    }

    async fn remove(store: Arc<blockstore::ReplicatedStore>, blocks: &[StoredBlock]) -> Result<()> {
        let ids: Vec<_> = blocks
            .iter()
            .filter_map(|b| Self::blockstore_id(b).ok())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let report = store.remove(&ids).await;
        if !report.failures.0.is_empty() {
            // Peers that were down get the removal later (the store retries).
            tracing::warn!(failures = %report.failures, "removing replicas: some peers not reached");
        }
        Ok(())
    }
}

impl ReceivedBlockHandler for ReplicatedBlockHandler {
    fn mode(&self) -> &'static str {
        "replicated"
    }

    fn store(&self, block: Block) -> BoxFuture<Result<StoredBlock>> {
        let id = blockstore::BlockId::new(block.id.stream.0, self.incarnation, block.id.seq);
        let bs = blockstore::Block::new(id, block.bytes.clone(), block.records);
        let (store, incarnation) = (Arc::clone(&self.store), self.incarnation);
        Box::pin(async move {
            let receipt = store.put(bs).await.map_err(|e| Error::BlockStore {
                stream: block.id.stream.to_string(),
                block: block.id,
                message: format!(
                    "not acknowledging: the block is not replicated as configured: {e}"
                ),
            })?;
            let locator = ReplicaLocator {
                incarnation,
                peers: receipt.replicas.into_iter().map(|r| r.peer).collect(),
            };
            Ok(StoredBlock {
                id: block.id,
                records: block.records,
                len_bytes: block.bytes.len() as u64,
                locator: postcard::to_stdvec(&locator).map_err(|e| Error::BlockStore {
                    stream: block.id.stream.to_string(),
                    block: block.id,
                    message: format!("cannot encode the replica locator: {e}"),
                })?,
                source_offsets: block.source_offsets,
            })
        })
    }

    fn consumed(&self, id: BlockId) {
        let store = Arc::clone(&self.store);
        let bs = blockstore::BlockId::new(id.stream.0, self.incarnation, id.seq);
        self.runtime.spawn(async move {
            if let Err(e) = store.release_local(&[bs]).await {
                tracing::warn!(block = %id, error = %e, "releasing the local copy failed");
            }
        });
    }

    fn read(&self, stored: &StoredBlock) -> BoxFuture<Result<Option<Bytes>>> {
        let stored = stored.clone();
        let store = Arc::clone(&self.store);
        Box::pin(async move {
            let id = Self::blockstore_id(&stored)?;
            match store.get(&id).await {
                Ok(block) => Ok(Some(block.data().clone())),
                Err(blockstore::Error::BlockUnavailable { .. }) => {
                    tracing::warn!(block = %stored.id, "no replica of the block is reachable");
                    Ok(None)
                }
                Err(e) => Err(Error::BlockStore {
                    stream: stored.id.stream.to_string(),
                    block: stored.id,
                    message: format!("reading a replica failed: {e}"),
                }),
            }
        })
    }

    fn cleanup(&self, blocks: &[StoredBlock]) -> BoxFuture<Result<()>> {
        if self.defer_cleanup.load(Ordering::SeqCst) {
            lock(&self.cleanable).extend(blocks.iter().cloned());
            return Box::pin(async { Ok(()) });
        }
        let blocks = blocks.to_vec();
        let store = Arc::clone(&self.store);
        Box::pin(async move { Self::remove(store, &blocks).await })
    }
}
