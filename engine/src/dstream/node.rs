//! Graph nodes: materialised streams, cached per batch time, and what a batch computes with.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::batch_data::BatchData;
use super::pipe::BlockTask;
use super::state::StatefulOp;
use crate::block::{StoredBlock, StreamId};
use crate::error::{Error, Result};
use crate::handler::ReceivedBlockHandler;
use crate::hash::stable_hash;
use crate::scheduler::Allocation;
use crate::text::Str;
use crate::time::BatchTime;

/// What a stream's records must be: cloneable (a batch may be read by several operators and
/// windows), sendable between worker threads, and owned.
pub trait Data: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> Data for T {}

/// A copy of `key` to keep in long-lived state: a [`Str`] key is
/// [detached](Str::detached) from the received block it was cut from, so that the state does
/// not keep the block alive; other key types are cloned (a key type that holds a `Str`
/// inside, such as a tuple, is not detached).
pub(crate) fn detached_key<K: Data>(key: &K) -> K {
    let mut copy = key.clone();
    if let Some(s) = (&mut copy as &mut dyn Any).downcast_mut::<Str>() {
        *s = s.detached();
    }
    copy
}

/// What a key of a key-value stream must be: [`Data`] that hashes (with the engine's stable
/// hasher, so partitioning is deterministic) and compares.
pub trait Key: Data + Hash + Eq {}
impl<T: Data + Hash + Eq> Key for T {}

/// The stable identity of an operator, derived from its position in the graph: its kind,
/// its parameters and its parents' identities, all the way up to the input streams (in the
/// order they were created). The same code builds the same ids, so a checkpoint can tell
/// whether the graph it was taken from matches the graph being restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OperatorId(pub u64);

impl OperatorId {
    pub(crate) fn derive(kind: &str, params: &str, parents: &[OperatorId]) -> Self {
        OperatorId(stable_hash(&(kind, params, parents)))
    }
}

impl fmt::Display for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What every node knows about itself.
#[derive(Clone, Debug)]
pub(crate) struct NodeInfo {
    pub id: OperatorId,
    /// The operator's kind ("reduce_by_key", "window", ...).
    pub kind: &'static str,
    /// Its stream's slide: it has data at `zero + k * slide_ms`.
    pub slide_ms: u64,
}

impl NodeInfo {
    pub fn label(&self) -> String {
        format!("{}#{}", self.kind, self.id)
    }
}

/// How a batch reads its inputs and where its per-batch accounting goes.
pub(crate) struct BatchCx {
    pub time: BatchTime,
    pub zero: BatchTime,
    /// The allocations of every batch not yet cleaned up (windows look back).
    pub allocations: Arc<BTreeMap<BatchTime, Allocation>>,
    pub streams: Arc<StreamTable>,
    pub pool: Arc<rayon::ThreadPool>,
    pub runtime: tokio::runtime::Handle,
    lost: Mutex<Lost>,
}

#[derive(Default)]
struct Lost {
    blocks: BTreeSet<crate::block::BlockId>,
    records: u64,
}

impl BatchCx {
    pub fn new(
        time: BatchTime,
        zero: BatchTime,
        allocations: Arc<BTreeMap<BatchTime, Allocation>>,
        streams: Arc<StreamTable>,
        pool: Arc<rayon::ThreadPool>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        BatchCx {
            time,
            zero,
            allocations,
            streams,
            pool,
            runtime,
            lost: Mutex::default(),
        }
    }

    /// The blocks of `stream` allocated to the batch at `time` (empty if none or cleaned up).
    pub fn blocks(&self, stream: StreamId, time: BatchTime) -> &[StoredBlock] {
        self.allocations
            .get(&time)
            .and_then(|a| a.blocks.get(&stream))
            .map_or(&[], |v| v.as_slice())
    }

    /// Reads a block's bytes back from its stream's handler; `None` (and counted) if lost.
    pub fn read_block(&self, stream: StreamId, block: &StoredBlock) -> Result<Option<Bytes>> {
        let handler = self.streams.handler(stream);
        let bytes = self.runtime.block_on(handler.read(block))?;
        if bytes.is_none() {
            let mut lost = lock(&self.lost);
            if lost.blocks.insert(block.id) {
                lost.records += block.records;
                tracing::warn!(
                    stream = %self.streams.name(stream), block = %block.id, records = block.records,
                    batch = %self.time, "block lost: the batch is computed without it"
                );
            }
        }
        Ok(bytes)
    }

    /// Blocks and records found lost while computing this batch.
    pub fn lost(&self) -> (u64, u64) {
        let lost = lock(&self.lost);
        (lost.blocks.len() as u64, lost.records)
    }

    /// Whether `time` is a time at which a stream with this slide has data.
    pub fn is_valid(&self, time: BatchTime, slide_ms: u64) -> bool {
        time > self.zero && time.is_on_grid(self.zero, slide_ms)
    }
}

/// The input streams of a graph: names and block handlers, by id.
#[derive(Default)]
pub(crate) struct StreamTable {
    pub entries: Vec<StreamEntry>,
}

pub(crate) struct StreamEntry {
    pub name: String,
    pub handler: Arc<dyn ReceivedBlockHandler>,
}

impl StreamTable {
    pub fn handler(&self, stream: StreamId) -> &Arc<dyn ReceivedBlockHandler> {
        &self.entries[stream.0 as usize].handler
    }

    pub fn name(&self, stream: StreamId) -> &str {
        &self.entries[stream.0 as usize].name
    }
}

/// A node's computation, typed by its records.
pub(crate) trait Compute<T>: Send + Sync + 'static {
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<T>>;

    /// Parent nodes, each with how much further back than this node's own remember window
    /// this node reads it (a window of length `L` reads `L - slide` further back).
    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)>;

    /// Input streams this node reads blocks of directly, with the tasks to run on each
    /// block as it arrives.
    fn block_tasks(&self) -> Vec<(StreamId, Arc<dyn BlockTask>)> {
        Vec::new()
    }

    fn stateful(&self) -> Option<Arc<dyn StatefulOp>> {
        None
    }

    /// `Some(n)` if every batch's records are key-value pairs with each key at most once,
    /// in partition `partition_of_key(key, n)` of `n` (the output of a key operator):
    /// Spark's "known partitioner", which lets a consumer with the same partitioning skip
    /// grouping the records again.
    fn unique_keys_in_partitions(&self) -> Option<usize> {
        None
    }

    /// Batch `done` completed: drop side data kept for it.
    fn forget(&self, _done: BatchTime) {}
}

/// The type-erased view of a node that the graph walks.
pub(crate) trait AnyNode: Send + Sync + 'static {
    fn info(&self) -> &NodeInfo;
    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)>;
    fn block_tasks(&self) -> Vec<(StreamId, Arc<dyn BlockTask>)>;
    fn stateful(&self) -> Option<Arc<dyn StatefulOp>>;
    fn remember_ms(&self) -> u64;
    /// Raises the remember window to at least `ms`; whether it changed.
    fn raise_remember(&self, ms: u64) -> bool;
    /// Drops cached data the node will not be asked for again after batch `done` completed.
    fn forget(&self, done: BatchTime);
    /// Makes sure the node has computed `time` (stateful nodes must advance every batch).
    fn ensure_computed(&self, cx: &BatchCx, time: BatchTime) -> Result<()>;
    /// The node's partitions at `time`, erased (for pipes reading this node).
    fn units(
        &self,
        cx: &BatchCx,
        time: BatchTime,
    ) -> Result<Option<Vec<Arc<dyn Any + Send + Sync>>>>;
}

/// A node: a computation plus the per-batch-time cache of its results.
pub(crate) struct NodeCell<T> {
    info: NodeInfo,
    compute: Box<dyn Compute<T>>,
    cache: Mutex<BTreeMap<BatchTime, BatchData<T>>>,
    remember_ms: AtomicU64,
}

impl<T: Data> NodeCell<T> {
    pub fn new(info: NodeInfo, compute: impl Compute<T>) -> Arc<Self> {
        Arc::new(NodeCell {
            info,
            compute: Box::new(compute),
            cache: Mutex::default(),
            remember_ms: AtomicU64::new(0),
        })
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// See [`Compute::unique_keys_in_partitions`].
    pub fn unique_keys_in_partitions(&self) -> Option<usize> {
        self.compute.unique_keys_in_partitions()
    }

    /// The node's data at `time`, or `None` if `time` is not on its slide grid.
    pub fn get(&self, cx: &BatchCx, time: BatchTime) -> Result<Option<BatchData<T>>> {
        if !cx.is_valid(time, self.info.slide_ms) {
            return Ok(None);
        }
        if let Some(hit) = lock(&self.cache).get(&time) {
            return Ok(Some(hit.clone()));
        }
        let data = self.compute.compute(cx, time)?;
        lock(&self.cache).insert(time, data.clone());
        Ok(Some(data))
    }
}

impl<T: Data> AnyNode for NodeCell<T> {
    fn info(&self) -> &NodeInfo {
        &self.info
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        self.compute.parents()
    }

    fn block_tasks(&self) -> Vec<(StreamId, Arc<dyn BlockTask>)> {
        self.compute.block_tasks()
    }

    fn stateful(&self) -> Option<Arc<dyn StatefulOp>> {
        self.compute.stateful()
    }

    fn remember_ms(&self) -> u64 {
        self.remember_ms.load(Ordering::Relaxed)
    }

    fn raise_remember(&self, ms: u64) -> bool {
        self.remember_ms.fetch_max(ms, Ordering::Relaxed) < ms
    }

    fn forget(&self, done: BatchTime) {
        self.compute.forget(done);
        let remember = self.remember_ms();
        if let Some(up_to) = done.checked_minus_millis(remember) {
            let mut cache = lock(&self.cache);
            let kept = cache.split_off(&up_to.plus_millis(1));
            *cache = kept;
        }
    }

    fn ensure_computed(&self, cx: &BatchCx, time: BatchTime) -> Result<()> {
        self.get(cx, time).map(drop)
    }

    fn units(
        &self,
        cx: &BatchCx,
        time: BatchTime,
    ) -> Result<Option<Vec<Arc<dyn Any + Send + Sync>>>> {
        Ok(self.get(cx, time)?.map(|data| {
            data.shared_partitions()
                .iter()
                .map(|p| Arc::clone(p) as Arc<dyn Any + Send + Sync>)
                .collect()
        }))
    }
}

/// Locks a mutex, ignoring poisoning: a panic in user code is caught and reported as a
/// job failure, and the data behind these locks (caches) stays consistent across it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, turning a panic into an error message (user closures may panic).
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        if let Some(s) = payload.downcast_ref::<&str>() {
            format!("panicked: {s}")
        } else if let Some(s) = payload.downcast_ref::<String>() {
            format!("panicked: {s}")
        } else {
            "panicked".to_owned()
        }
    })
}

/// A job error for `operator` at `time`.
pub(crate) fn job_error(time: BatchTime, operator: &NodeInfo, message: impl Into<String>) -> Error {
    Error::Job {
        batch_time: time,
        operator: operator.label(),
        message: message.into(),
    }
}
