//! Input streams: receivers (socket, custom) and direct inputs (directory, queue).
//!
//! A *receiver* runs for the life of the context, turns its source into blocks and stores
//! them through its stream's [`crate::ReceivedBlockHandler`] (acknowledging its source, if
//! it can, only after the store resolved). A *direct input* has no receiver: when a batch is
//! generated, the driver asks it what the batch reads (the next queued records, the new files
//! of a directory) and records that as the batch's blocks; the bytes are read when the batch
//! runs. Either way a batch is a list of blocks per stream, and is recomputed from them.

pub mod ack;
pub(crate) mod file;
pub mod kafka;
pub(crate) mod queue;
pub(crate) mod receiver;
pub(crate) mod socket;
pub(crate) mod text;

use std::sync::Arc;

pub use receiver::{Receiver, ReceiverContext};
pub use socket::SocketOptions;

use crate::block::{StoredBlock, StreamId};
use crate::clock::BoxFuture;
use crate::error::Result;
use crate::handler::ReceivedBlockHandler;
use crate::time::BatchTime;

/// An input stream of the graph.
pub(crate) struct InputDef {
    pub id: StreamId,
    pub name: String,
    pub kind: InputKind,
    /// The input's operator id (the root of its streams' lineage).
    pub lineage: crate::dstream::OperatorId,
    /// What it is ("socket_text_stream", ...).
    pub kind_name: &'static str,
}

/// Starts a receiver task given its context.
pub(crate) type ReceiverLauncher =
    Box<dyn FnOnce(Arc<receiver::ReceiverShared>) -> BoxFuture<Result<()>> + Send>;

pub(crate) enum InputKind {
    /// Runs a receiver (started by the context).
    Receiver(Option<ReceiverLauncher>),
    /// Planned per batch by the driver.
    Direct(Arc<dyn DirectInput>),
}

/// An input without a receiver: the driver plans each batch's blocks.
pub(crate) trait DirectInput: Send + Sync + 'static {
    /// Where the planned blocks' bytes are read from.
    fn handler(&self) -> Arc<dyn ReceivedBlockHandler>;

    /// The blocks of the batch at `time`; called once per batch, in time order, when the
    /// batch is generated.
    fn plan(&self, stream: StreamId, time: BatchTime) -> Result<Vec<StoredBlock>>;

    /// Called once before the first batch of a restarted context with `zero`, the
    /// original grid's origin, and every block of this stream in the recovered
    /// allocations (re-run or remembered), oldest batch first: where the input stopped
    /// planning, so the next plan continues from there instead of starting over.
    fn recovered(&self, _zero: BatchTime, _blocks: &[StoredBlock]) {}

    /// Whether the driver may read this input's planned blocks ahead of their batch (see
    /// `Config::direct_prefetch_blocks_max`). An input that says yes must make a read of a
    /// block that is being prefetched wait for that read and share its bytes (instead of
    /// reading the source twice), from [`DirectInput::prefetch_planned`] until
    /// [`DirectInput::prefetch_done`] or the handler's `cleanup` for the block.
    fn prefetches(&self) -> bool {
        false
    }

    /// These planned blocks (already recorded in the metadata log) will be read ahead of
    /// their batch, in this order: from now on a read of one of them waits for the
    /// prefetch's read if it is under way, or shares its bytes if done, or (if the prefetch
    /// has not started yet or failed) reads the block itself and lets the prefetch share
    /// its bytes. Only called when [`DirectInput::prefetches`] is true.
    fn prefetch_planned(&self, _blocks: &[StoredBlock]) {}

    /// Reads a block registered by [`DirectInput::prefetch_planned`] (on a prefetch
    /// thread); `None` if it is not registered any more (its batch completed and was
    /// cleaned up: nothing to read ahead).
    fn prefetch(&self, _block: &StoredBlock) -> Option<Result<bytes::Bytes>> {
        None
    }

    /// The prefetch of this block is over (its stages ran, or its read failed): its bytes
    /// are not kept for the batch any more.
    fn prefetch_done(&self, _id: crate::block::BlockId) {}

    /// Invalid records seen so far (for metrics).
    fn invalid_records(&self) -> u64 {
        0
    }
}
