//! The receiver side: the public [`Receiver`] trait and what a receiver stores blocks with.
//!
//! The life of a block (see ARCHITECTURE.md, "acknowledgement only after the handler
//! resolves"):
//! 1. wait for room: at most `blocks_retained_max` blocks of the stream not yet cleaned up,
//!    and at most `receiver_queue_blocks_max` not yet through their block stages; and for
//!    the rate limiter;
//! 2. store it through the stream's handler, and wait until that resolves;
//! 3. record it in the metadata log, if the context has one, and wait until that record is
//!    durable (a block acknowledged but not logged would be forgotten by a restart);
//! 4. report it to the scheduler (it becomes allocatable) and start its block stages on the
//!    worker pool; its queue slot frees once both the driver has assigned it to its batch
//!    and the stages have run;
//! 5. only then return to the receiver, which may acknowledge its source.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::block::{Block, BlockCodec, BlockId, StoredBlock, StreamId};
use crate::config::Config;
use crate::driver::DriverEvent;
use crate::dstream::node::{Data, lock};
use crate::dstream::pipe::BlockTask;
use crate::error::{Error, Result};
use crate::handler::ReceivedBlockHandler;
use crate::metrics::{ReceiverInfo, ReceiverState};
use crate::rate::RateLimiter;

use super::ReceiverLauncher;

/// A custom source (Spark's `Receiver`): runs for the life of the context, storing what it
/// receives through its [`ReceiverContext`], and returns when the context stops it (see
/// [`ReceiverContext::stopped`]) or when its source is exhausted. An error stops the
/// context (after processing what was received) and is returned by
/// [`crate::StreamingContext::await_termination`].
pub trait Receiver: Send + 'static {
    /// The records it produces.
    type Record: Data;

    /// How its records are encoded in blocks (e.g. [`crate::PostcardCodec`]).
    fn codec(&self) -> Arc<dyn BlockCodec<Self::Record>>;

    /// Receives until stopped.
    fn run(self, ctx: ReceiverContext<Self::Record>) -> impl Future<Output = Result<()>> + Send;
}

/// The engine-side state shared by a receiver's tasks.
pub(crate) struct ReceiverShared {
    pub stream: StreamId,
    pub name: String,
    pub config: Arc<Config>,
    pub handler: Arc<dyn ReceivedBlockHandler>,
    pub next_seq: AtomicU64,
    /// Blocks not yet through their block stages.
    pub queue: Arc<Semaphore>,
    /// Blocks not yet cleaned up (permits are returned by the driver on cleanup).
    pub retained: Arc<Semaphore>,
    pub tasks: Vec<Arc<dyn BlockTask>>,
    pub pool: Arc<rayon::ThreadPool>,
    pub events: mpsc::UnboundedSender<DriverEvent>,
    /// `Some(graceful)` once the context asked the receiver to stop.
    pub stop: watch::Receiver<Option<bool>>,
    pub limiter: Arc<RateLimiter>,
    pub info: Mutex<ReceiverInfo>,
    pub listeners: Arc<crate::context::Listeners>,
    /// Where stored blocks are recorded before the store resolves (durable contexts).
    pub metadata_log: Option<Arc<dyn crate::context::MetadataLog>>,
    /// Where the source resumes after a restart (see [`crate::Restore::resume_offsets`]).
    pub resume_offset: Option<u64>,
}

impl ReceiverShared {
    /// Stores one block of already encoded records (steps 1-4 of the module docs).
    pub async fn store_block(
        &self,
        bytes: Bytes,
        records: u64,
        source_offsets: Option<std::ops::Range<u64>>,
    ) -> Result<StoredBlock> {
        let closed = |_| Error::Receiver {
            stream: self.name.clone(),
            message: "the context is shutting down".to_owned(),
        };
        self.limiter.acquire(records).await;
        self.retained.acquire().await.map_err(closed)?.forget();
        let queued = Arc::clone(&self.queue)
            .acquire_owned()
            .await
            .map_err(closed)?;
        let id = BlockId {
            stream: self.stream,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        let len = bytes.len() as u64;
        let stored = self
            .handler
            .store(Block {
                id,
                records,
                bytes: bytes.clone(),
                source_offsets,
            })
            .await
            .inspect_err(|_| {
                // The block was not stored: give its retention slot back.
                self.retained.add_permits(1);
            })?;
        if let Some(log) = &self.metadata_log {
            // The acknowledgement point: the block must be findable after a restart. A
            // failure leaves the block stored but unreferenced; the receiver sees the
            // error and must not acknowledge.
            tokio::task::block_in_place(|| log.block_stored(&stored)).map_err(|e| {
                Error::Receiver {
                    stream: self.name.clone(),
                    message: format!("block {id} stored but not recorded in the metadata log: {e}"),
                }
            })?;
        }
        {
            let mut info = lock(&self.info);
            info.records += records;
            info.blocks += 1;
            info.bytes += len;
        }
        // The queue slot is shared by the driver (until it assigned the block to its batch),
        // each stage task, and a folding stage's cache until the block's result is folded:
        // it frees once the block is assigned, its stages have run and its results are
        // folded into its batch. So the per-block results not yet folded are bounded by the
        // queue's length (otherwise a driver that falls behind under load, or a block
        // finished before an earlier one, leaves them piling up, up to
        // `blocks_retained_max` of them).
        let queued = Arc::new(queued);
        // The driver is gone only when the context is stopping; the block is still stored.
        let _ = self.events.send(DriverEvent::BlockStored {
            block: stored.clone(),
            queue_slot: Some(Arc::clone(&queued)),
        });
        if self.tasks.is_empty() {
            self.handler.consumed(id);
        } else {
            // Each stage task holds a share of the queue permit.
            let remaining = Arc::new(AtomicU64::new(self.tasks.len() as u64));
            for task in &self.tasks {
                let (task, bytes, remaining) =
                    (Arc::clone(task), bytes.clone(), Arc::clone(&remaining));
                let (handler, queued) = (Arc::clone(&self.handler), Arc::clone(&queued));
                self.pool.spawn(move || {
                    task.on_block(id, &bytes, &queued);
                    drop(bytes);
                    if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        handler.consumed(id);
                    }
                    drop(queued);
                });
            }
        }
        Ok(stored)
    }

    /// Reports the receiver's state to the log and the listeners; a state that is an error
    /// (see [`ReceiverInfo::errors`]) is counted.
    pub fn set_state(&self, state: ReceiverState) {
        let info = {
            let mut info = lock(&self.info);
            if info.state == state {
                return;
            }
            if matches!(
                state,
                ReceiverState::Backoff {
                    after_end_of_stream: false,
                    ..
                } | ReceiverState::Failed { .. }
            ) {
                info.errors += 1;
            }
            info.state = state;
            info.rate_limit_records_per_sec = self.limiter.rate();
            info.clone()
        };
        match &info.state {
            ReceiverState::Backoff {
                after_end_of_stream: false,
                ..
            }
            | ReceiverState::Failed { .. } => {
                tracing::warn!(stream = %self.name, state = %info.state, "receiver");
            }
            _ => tracing::info!(stream = %self.name, state = %info.state, "receiver"),
        }
        self.listeners.receiver_state(&info);
    }

    /// Counts a clean end of the source's stream (see [`ReceiverInfo::ends_of_stream`]).
    pub fn count_end_of_stream(&self) {
        lock(&self.info).ends_of_stream += 1;
    }

    pub fn count_invalid(&self, records: u64) {
        if records > 0 {
            lock(&self.info).invalid_records += records;
        }
    }

    pub fn stop_requested(&self) -> Option<bool> {
        *self.stop.borrow()
    }

    pub async fn stopped(&self) {
        let mut rx = self.stop.clone();
        // An error means the context is gone: that is a stop too.
        let _ = rx.wait_for(|s| s.is_some()).await;
    }
}

/// What a [`Receiver`] stores its data with.
pub struct ReceiverContext<T> {
    shared: Arc<ReceiverShared>,
    codec: Arc<dyn BlockCodec<T>>,
    buffer: Arc<tokio::sync::Mutex<RecordBuffer>>,
}

impl<T> Clone for ReceiverContext<T> {
    fn clone(&self) -> Self {
        ReceiverContext {
            shared: Arc::clone(&self.shared),
            codec: Arc::clone(&self.codec),
            buffer: Arc::clone(&self.buffer),
        }
    }
}

#[derive(Default)]
struct RecordBuffer {
    bytes: Vec<u8>,
    records: u64,
    started: Option<Instant>,
}

impl<T: Data> ReceiverContext<T> {
    pub(crate) fn new(shared: Arc<ReceiverShared>, codec: Arc<dyn BlockCodec<T>>) -> Self {
        ReceiverContext {
            shared,
            codec,
            buffer: Arc::default(),
        }
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.shared.name
    }

    /// The context's configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Stores one record, buffered into a block that is stored every `block_interval_ms` or
    /// when it reaches `block_size_max_bytes` (Spark's `store(item)`: the caller learns
    /// nothing about when the record is durable; use [`ReceiverContext::store_records`] for
    /// a source that needs to acknowledge).
    pub async fn store(&self, record: T) -> Result<()> {
        let full = {
            let mut buf = self.buffer.lock().await;
            self.codec
                .encode(std::slice::from_ref(&record), &mut buf.bytes)
                .map_err(|message| Error::Receiver {
                    stream: self.shared.name.clone(),
                    message: format!("cannot encode a record as {}: {message}", self.codec.name()),
                })?;
            buf.records += 1;
            buf.started.get_or_insert_with(Instant::now);
            buf.bytes.len() >= self.shared.config.block_size_max_bytes
        };
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    /// Stores `records` as one block and returns once the stream's durability policy holds
    /// for it: then the source may be acknowledged (Spark's reliable `store(multiple)`).
    pub async fn store_records(&self, records: &[T]) -> Result<StoredBlock> {
        let mut bytes = Vec::new();
        self.codec
            .encode(records, &mut bytes)
            .map_err(|message| Error::Receiver {
                stream: self.shared.name.clone(),
                message: format!("cannot encode records as {}: {message}", self.codec.name()),
            })?;
        self.shared
            .store_block(Bytes::from(bytes), records.len() as u64, None)
            .await
    }

    /// Stores bytes already in the stream's block encoding, holding `records` records, as one
    /// block; returns once the policy holds (the zero-copy path of text sources).
    pub async fn store_bytes(&self, bytes: Bytes, records: u64) -> Result<StoredBlock> {
        self.shared.store_block(bytes, records, None).await
    }

    /// [`ReceiverContext::store_bytes`] for a source with positions: the block holds the
    /// source positions `source_offsets` (`[first, end)`, e.g. line numbers). After a
    /// restart, [`ReceiverContext::resume_offset`] is the highest `end` of any recovered
    /// block, so the source can resume right after what was stored.
    pub async fn store_bytes_at(
        &self,
        bytes: Bytes,
        records: u64,
        source_offsets: std::ops::Range<u64>,
    ) -> Result<StoredBlock> {
        self.shared
            .store_block(bytes, records, Some(source_offsets))
            .await
    }

    /// Where a restarted source resumes: the highest `source_offsets.end` over every block
    /// of this stream recovered from the metadata log (allocated or not); `None` on a
    /// first start or if no recovered block had positions.
    pub fn resume_offset(&self) -> Option<u64> {
        self.shared.resume_offset
    }

    /// Stores the records buffered by [`ReceiverContext::store`] now, if any.
    pub async fn flush(&self) -> Result<Option<StoredBlock>> {
        let (bytes, records) = {
            let mut buf = self.buffer.lock().await;
            if buf.records == 0 {
                return Ok(None);
            }
            buf.started = None;
            (
                std::mem::take(&mut buf.bytes),
                std::mem::take(&mut buf.records),
            )
        };
        self.shared
            .store_block(Bytes::from(bytes), records, None)
            .await
            .map(Some)
    }

    async fn flush_if_older_than(&self, age: Duration) -> Result<()> {
        let due = self
            .buffer
            .lock()
            .await
            .started
            .is_some_and(|s| s.elapsed() >= age);
        if due {
            self.flush().await?;
        }
        Ok(())
    }

    /// Whether the context asked the receiver to stop.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop_requested().is_some()
    }

    /// Completes when the context asks the receiver to stop.
    pub async fn stopped(&self) {
        self.shared.stopped().await
    }

    /// Reports what the receiver is doing (shown to listeners and in the log).
    pub fn report_state(&self, state: ReceiverState) {
        self.shared.set_state(state);
    }

    /// Counts records dropped as invalid.
    pub fn count_invalid(&self, records: u64) {
        self.shared.count_invalid(records);
    }
}

/// Wraps a [`Receiver`] into a launcher: runs it, cuts buffered records into blocks every
/// block interval, and stores what is left in the buffer when it returns.
pub(crate) fn launcher<R: Receiver>(receiver: R) -> ReceiverLauncher {
    Box::new(move |shared: Arc<ReceiverShared>| {
        Box::pin(async move {
            let ctx = ReceiverContext::new(shared, receiver.codec());
            let interval = Duration::from_millis(ctx.config().block_interval_ms);
            let flusher = {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(interval).await;
                        if let Err(error) = ctx.flush_if_older_than(interval).await {
                            // The receiver sees the same error on its next store.
                            tracing::error!(stream = %ctx.stream_name(), %error, "storing buffered records failed");
                            return;
                        }
                    }
                })
            };
            let result = receiver.run(ctx.clone()).await;
            flusher.abort();
            let flushed = ctx.flush().await;
            result.and(flushed.map(drop))
        })
    })
}
