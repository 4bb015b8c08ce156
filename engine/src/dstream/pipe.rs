//! Fused narrow stages, and running them per unit, as blocks arrive or at batch time.
//!
//! A chain of narrow operators (`map`, `flat_map`, `filter`, `map_partitions`, `union`) is
//! not materialised: it is a [`Pipe`], a list of branches, each a source plus a composed
//! [`Stage`] that pushes records through every operator of the chain in one pass, in
//! chunks of a few hundred records: each operator runs a statically dispatched loop over a
//! chunk, and the consumer (a key operator's map-side combine) probes its hash map for a
//! chunk of keys in one tight loop, which lets the processor overlap the probes' cache
//! misses. (Record by record through a dynamic call per operator cost 2.5 times the CPU
//! time on the word count.)
//!
//! What consumes a pipe (an output, a key operator's map-side combine, a window) runs the
//! stage once per *unit*: a block of an input stream, or a partition of a materialised node.
//!
//! For units that are input blocks, the consumer registers a [`BlockTask`] on the stream:
//! the task runs on the worker pool as soon as the block is stored, and its result is cached
//! by block id. At batch time the consumer takes the cached result, or computes it from the
//! block's bytes read back from the stream's handler (the recovery path; the same function
//! of the same bytes, so the same result). Results are always combined in unit order
//! (branch, then block id or partition index), never in arrival order.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use rayon::prelude::*;

use super::node::{AnyNode, BatchCx, Data, catch, lock};
use crate::block::{BlockCodec, BlockId, StoredBlock, StreamId};
use crate::error::{Error, Result};
use crate::time::BatchTime;

/// One unit of input for a stage.
#[derive(Clone, Copy)]
pub(crate) enum Unit<'a> {
    /// The bytes of an input block, in its stream's codec.
    Block(BlockId, &'a Bytes),
    /// A partition of a node (a `Vec` of the node's record type) and its index.
    Part(usize, &'a (dyn Any + Send + Sync)),
}

impl Unit<'_> {
    /// A number that differs between the units of a batch (for spreading records).
    pub fn seed(&self) -> u64 {
        match self {
            Unit::Block(id, _) => id.seq,
            Unit::Part(index, _) => *index as u64,
        }
    }
}

/// Records go through a fused chain in chunks of this many: each operator runs a tight loop
/// over a chunk (statically dispatched), and the chain pays one dynamic call per chunk and
/// operator instead of one per record. Small enough that a chunk stays in L1.
const CHUNK: usize = 256;

/// A fused chain of narrow operators: pushes every record of a unit through the chain.
pub(crate) trait Stage<T>: Send + Sync + 'static {
    /// Calls `out` with the unit's records, in order, in non-empty chunks; `out` takes the
    /// records it wants out of the chunk (what it leaves is dropped).
    fn run_chunks(
        &self,
        unit: Unit<'_>,
        out: &mut dyn FnMut(&mut Vec<T>),
    ) -> std::result::Result<(), String>;

    /// Calls `out` with each of the unit's records, in order.
    fn run(&self, unit: Unit<'_>, out: &mut dyn FnMut(T)) -> std::result::Result<(), String> {
        self.run_chunks(unit, &mut |chunk| chunk.drain(..).for_each(&mut *out))
    }
}

/// Collects records into chunks and hands each full one on.
struct Chunker<'a, T> {
    buf: Vec<T>,
    out: &'a mut dyn FnMut(&mut Vec<T>),
}

impl<'a, T> Chunker<'a, T> {
    fn new(out: &'a mut dyn FnMut(&mut Vec<T>)) -> Self {
        Chunker {
            buf: Vec::with_capacity(CHUNK),
            out,
        }
    }

    #[inline(always)]
    fn push(&mut self, record: T) {
        // The buffer never grows (it is flushed when full), but a `push` that might grow
        // keeps the record in a stack slot across the possible call and copies it from
        // there with wider loads than the stores that built it: a store-forwarding stall
        // per record (60% of the word count's flat_map loop). Under this check the
        // compiler drops the growth path and stores the record straight into the buffer.
        if self.buf.len() < self.buf.capacity() {
            self.buf.push(record);
            if self.buf.len() >= CHUNK {
                self.flush();
            }
        } else {
            self.push_growing(record);
        }
    }

    #[cold]
    #[inline(never)]
    fn push_growing(&mut self, record: T) {
        self.buf.push(record);
        if self.buf.len() >= CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            (self.out)(&mut self.buf);
            self.buf.clear();
        }
    }
}

/// The first stage of an input branch: decodes the block.
pub(crate) struct DecodeStage<T> {
    pub codec: Arc<dyn BlockCodec<T>>,
}

impl<T: Data> Stage<T> for DecodeStage<T> {
    fn run_chunks(
        &self,
        unit: Unit<'_>,
        out: &mut dyn FnMut(&mut Vec<T>),
    ) -> std::result::Result<(), String> {
        match unit {
            Unit::Block(_, bytes) => self.codec.decode_chunks(bytes, CHUNK, out).map(|_| ()),
            Unit::Part(..) => Err("internal: a decode stage was given a partition".to_owned()),
        }
    }
}

/// The first stage of a node branch: reads the node's partition.
pub(crate) struct PartStage<T>(pub PhantomData<fn() -> T>);

impl<T: Data> Stage<T> for PartStage<T> {
    fn run_chunks(
        &self,
        unit: Unit<'_>,
        out: &mut dyn FnMut(&mut Vec<T>),
    ) -> std::result::Result<(), String> {
        match unit {
            Unit::Part(_, part) => {
                let records = part
                    .downcast_ref::<Vec<T>>()
                    .ok_or_else(|| "internal: partition of another type".to_owned())?;
                let mut buf = Vec::with_capacity(CHUNK.min(records.len()));
                for chunk in records.chunks(CHUNK) {
                    buf.extend(chunk.iter().cloned());
                    out(&mut buf);
                    buf.clear();
                }
                Ok(())
            }
            Unit::Block(..) => Err("internal: a partition stage was given a block".to_owned()),
        }
    }
}

pub(crate) struct MapStage<A, F> {
    pub prev: Arc<dyn Stage<A>>,
    pub f: Arc<F>,
}

impl<A: Data, B, F> Stage<B> for MapStage<A, F>
where
    F: Fn(A) -> B + Send + Sync + 'static,
{
    fn run_chunks(
        &self,
        unit: Unit<'_>,
        out: &mut dyn FnMut(&mut Vec<B>),
    ) -> std::result::Result<(), String> {
        let mut buf: Vec<B> = Vec::with_capacity(CHUNK);
        self.prev.run_chunks(unit, &mut |chunk| {
            buf.extend(chunk.drain(..).map(&*self.f));
            out(&mut buf);
            buf.clear();
        })
    }
}

pub(crate) struct FlatMapStage<A, F> {
    pub prev: Arc<dyn Stage<A>>,
    pub f: Arc<F>,
}

impl<A: Data, B, I, F> Stage<B> for FlatMapStage<A, F>
where
    F: Fn(A) -> I + Send + Sync + 'static,
    I: IntoIterator<Item = B>,
{
    fn run_chunks(
        &self,
        unit: Unit<'_>,
        out: &mut dyn FnMut(&mut Vec<B>),
    ) -> std::result::Result<(), String> {
        let mut chunks = Chunker::new(out);
        self.prev.run_chunks(unit, &mut |chunk| {
            for a in chunk.drain(..) {
                for b in (self.f)(a) {
                    chunks.push(b);
                }
            }
        })?;
        chunks.flush();
        Ok(())
    }
}

pub(crate) struct FilterStage<A, F> {
    pub prev: Arc<dyn Stage<A>>,
    pub f: Arc<F>,
}

impl<A: Data, F> Stage<A> for FilterStage<A, F>
where
    F: Fn(&A) -> bool + Send + Sync + 'static,
{
    fn run_chunks(
        &self,
        unit: Unit<'_>,
        out: &mut dyn FnMut(&mut Vec<A>),
    ) -> std::result::Result<(), String> {
        self.prev.run_chunks(unit, &mut |chunk| {
            chunk.retain(|a| (self.f)(a));
            if !chunk.is_empty() {
                out(chunk);
            }
        })
    }
}

pub(crate) struct MapPartitionsStage<A, F> {
    pub prev: Arc<dyn Stage<A>>,
    pub f: Arc<F>,
}

impl<A: Data, B, I, F> Stage<B> for MapPartitionsStage<A, F>
where
    F: Fn(Vec<A>) -> I + Send + Sync + 'static,
    I: IntoIterator<Item = B>,
{
    fn run_chunks(
        &self,
        unit: Unit<'_>,
        out: &mut dyn FnMut(&mut Vec<B>),
    ) -> std::result::Result<(), String> {
        let mut records = Vec::new();
        self.prev
            .run_chunks(unit, &mut |chunk| records.append(chunk))?;
        let mut chunks = Chunker::new(out);
        for b in (self.f)(records) {
            chunks.push(b);
        }
        chunks.flush();
        Ok(())
    }
}

/// Where a branch's units come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// The blocks of an input stream.
    Input(StreamId),
    /// The partitions of a node.
    Node(Arc<dyn AnyNode>),
}

/// A source and the fused stage applied to its units.
pub(crate) struct Branch<T> {
    pub source: Source,
    pub stage: Arc<dyn Stage<T>>,
}

impl<T> Clone for Branch<T> {
    fn clone(&self) -> Self {
        Branch {
            source: self.source.clone(),
            stage: Arc::clone(&self.stage),
        }
    }
}

/// A share of a block's receiver queue slot. The receiver reads no block past
/// `receiver_queue_blocks_max` while the slots are taken; the slot frees when the last share
/// is dropped.
pub(crate) type QueueSlot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// Runs a block stage when a block arrives.
pub(crate) trait BlockTask: Send + Sync + 'static {
    /// Runs on the worker pool once the block is stored; caches the result by block id.
    /// A task whose result waits to be folded keeps a share of `slot` until it is.
    fn on_block(&self, id: BlockId, bytes: &Bytes, slot: &QueueSlot);
    /// The block will be allocated to the batch at `batch` (the driver knows: the next batch
    /// generated takes every block reported before it). Called in block-id order. `slot` is
    /// the block's queue slot if it still has one (not for blocks recovered at a restart).
    fn assign(&self, _id: BlockId, _batch: BatchTime, _slot: Option<&QueueSlot>) {}
    /// Whether this task folds its results into their batch (after [`BlockTask::assign`]);
    /// only such tasks take blocks read ahead ([`BlockTask::on_prefetched_block`]).
    fn folds(&self) -> bool {
        false
    }
    /// A direct input's block read ahead of its batch (after [`BlockTask::assign`]): runs
    /// the stage on it and folds the result, unless the block's batch is already cleaned
    /// up (then nothing is cached: a late prefetch must not leave a result behind).
    fn on_prefetched_block(&self, _id: BlockId, _bytes: &Bytes) {}
    /// Drops the cached results of these blocks and of batches up to `up_to` (cleaned up).
    fn forget(&self, ids: &[BlockId], up_to: BatchTime);
}

type UnitFn<T, R> = dyn Fn(&dyn Stage<T>, Unit<'_>) -> std::result::Result<R, String> + Send + Sync;
type Slot<R> = Arc<OnceLock<std::result::Result<Arc<R>, String>>>;

/// How a consumer folds per-unit results into one, in unit order (for key operators: the
/// per-unit maps merged into per-batch maps). A batch's result is the fold of its units
/// from `empty`, always in the same order, whether computed as blocks arrived or at batch
/// time from blocks read back: so both give the same result, to the iteration order.
pub(crate) struct Folding<R> {
    pub empty: Box<dyn Fn() -> R + Send + Sync>,
    /// Folds a result that is shared (a block's cached result): copies what it keeps.
    pub add: Box<dyn Fn(&mut R, &R) + Send + Sync>,
    /// The same fold for a result nobody else holds: moves its entries, so the batch never
    /// holds a unit's data twice. Must leave `acc` exactly as `add` would (the same
    /// entries, inserted in the same order).
    pub add_owned: Box<dyn Fn(&mut R, R) + Send + Sync>,
}

impl<R> Folding<R> {
    /// Folds `unit` into `acc`, by moving its entries if this was its last holder.
    fn add_shared(&self, acc: &mut R, unit: Arc<R>) {
        match Arc::try_unwrap(unit) {
            Ok(owned) => (self.add_owned)(acc, owned),
            Err(shared) => (self.add)(acc, &shared),
        }
    }
}

/// The fold of one batch's blocks, as far as their results are in.
struct BatchFold<R> {
    /// The blocks assigned to the batch, in block-id order.
    ids: Vec<BlockId>,
    /// How many of them are folded into `acc` (a prefix: the fold goes in order).
    folded: usize,
    acc: R,
    /// Whether the batch has taken the finished fold. It is handed over, not kept: the
    /// batch's consumer turns it into its output without a copy. A second request (not
    /// made today: a node's output is cached) would compute it again from the blocks.
    taken: bool,
}

/// Per-block results of one consumer's function over one input branch, by block id, and
/// (for folding consumers) per-batch folds of them.
///
/// A folding cache bounds the per-block results waiting for their fold by the receiver's
/// queue: it keeps a share of the queue slot of every block assigned to a batch until the
/// block's result is folded. Results are folded in block order, so without this a block
/// computed before an earlier one (the other worker was slower, or descheduled) released its
/// slot with its result still unfolded, and the receiver read on: on a busy machine up to a
/// dozen per-block maps were seen alive at once, where the queue allows two.
pub(crate) struct BlockCache<T, R> {
    stage: Arc<dyn Stage<T>>,
    f: Arc<UnitFn<T, R>>,
    slots: Mutex<HashMap<BlockId, Slot<R>>>,
    folding: Option<Arc<Folding<R>>>,
    /// Lock order: `folds`, then `assigned`, then `slots`, then `holds`.
    folds: Mutex<std::collections::BTreeMap<BatchTime, BatchFold<R>>>,
    assigned: Mutex<HashMap<BlockId, BatchTime>>,
    /// Queue slots kept until the block's result is folded (folding caches only).
    holds: Mutex<HashMap<BlockId, QueueSlot>>,
}

impl<T: 'static, R: Send + Sync + 'static> BlockCache<T, R> {
    fn slot(&self, id: BlockId) -> Slot<R> {
        Arc::clone(lock(&self.slots).entry(id).or_default())
    }

    fn compute(&self, id: BlockId, bytes: &Bytes) -> std::result::Result<Arc<R>, String> {
        catch(|| (self.f)(&*self.stage, Unit::Block(id, bytes)))
            .and_then(|r| r)
            .map(Arc::new)
    }

    /// The result for `block`: cached, or computed from its bytes read back; `None` if lost.
    fn get(
        &self,
        cx: &BatchCx,
        stream: StreamId,
        block: &StoredBlock,
    ) -> Result<Option<std::result::Result<Arc<R>, String>>> {
        let slot = self.slot(block.id);
        if let Some(done) = slot.get() {
            return Ok(Some(done.clone()));
        }
        let Some(bytes) = cx.read_block(stream, block)? else {
            // The arrival task may have finished (and released the bytes) just now.
            return Ok(slot.get().cloned());
        };
        Ok(Some(
            slot.get_or_init(|| self.compute(block.id, &bytes)).clone(),
        ))
    }

    /// Folds, in order, every result of batch `batch` that is in; each folded result is
    /// dropped (the fold replaces it). Stops at the first missing or failed one.
    fn advance(&self, batch: BatchTime) {
        let Some(folding) = &self.folding else { return };
        let mut folds = lock(&self.folds);
        let Some(fold) = folds.get_mut(&batch) else {
            return;
        };
        while !fold.taken && fold.folded < fold.ids.len() {
            let id = fold.ids[fold.folded];
            let ready = lock(&self.slots).get(&id).and_then(|s| s.get().cloned());
            match ready {
                Some(Ok(result)) => {
                    (folding.add)(&mut fold.acc, &result);
                    fold.folded += 1;
                    lock(&self.slots).remove(&id);
                    drop(result);
                    lock(&self.holds).remove(&id);
                }
                // A failed block stays in its slot: the batch reports its error.
                Some(Err(_)) | None => break,
            }
        }
    }

    /// The fold of the batch's blocks, if the blocks were assigned to it as they arrived
    /// (otherwise `None`: the caller folds the per-block results itself). Computes what is
    /// missing; a lost block is left out (and counted).
    fn batch_fold(
        &self,
        cx: &BatchCx,
        stream: StreamId,
        batch: BatchTime,
        blocks: &[StoredBlock],
    ) -> Result<Option<std::result::Result<R, String>>> {
        let Some(folding) = &self.folding else {
            return Ok(None);
        };
        {
            let folds = lock(&self.folds);
            let Some(fold) = folds.get(&batch) else {
                return Ok(None);
            };
            if fold.taken {
                return Ok(None);
            }
            if !fold.ids.iter().eq(blocks.iter().map(|b| &b.id)) {
                return Err(Error::Job {
                    batch_time: batch,
                    operator: "block fold".to_owned(),
                    message: format!(
                        "internal: blocks assigned on arrival ({}) differ from the allocation ({})",
                        fold.ids.len(),
                        blocks.len()
                    ),
                });
            }
        }
        loop {
            self.advance(batch);
            // The next block not folded yet: compute it (or wait for its arrival task)
            // without holding the fold, whose arrival tasks take it to advance.
            let next = {
                let folds = lock(&self.folds);
                let Some(fold) = folds.get(&batch) else {
                    return Ok(None);
                };
                if fold.folded == fold.ids.len() {
                    break;
                }
                fold.folded
            };
            match self.get(cx, stream, &blocks[next])? {
                Some(Ok(_)) => {}
                Some(Err(message)) => {
                    return Ok(Some(Err(format!("block {}: {message}", blocks[next].id))));
                }
                None => {
                    // Lost (counted by the read): the fold goes on without it.
                    let mut folds = lock(&self.folds);
                    if let Some(fold) = folds.get_mut(&batch).filter(|f| f.folded == next) {
                        fold.folded += 1;
                        lock(&self.holds).remove(&blocks[next].id);
                    }
                }
            }
        }
        let mut folds = lock(&self.folds);
        let Some(fold) = folds.get_mut(&batch) else {
            return Ok(None);
        };
        let acc = std::mem::replace(&mut fold.acc, (folding.empty)());
        fold.taken = true;
        Ok(Some(Ok(acc)))
    }
}

impl<T: 'static, R: Send + Sync + 'static> BlockCache<T, R> {
    /// Keeps a share of the block's queue slot if the block is assigned to a batch and its
    /// result is not folded yet (see the type's docs). Takes the fold's lock, as `advance`
    /// does, so a hold is never taken after the fold that would release it.
    fn hold_until_folded(&self, id: BlockId, slot: &QueueSlot) {
        if self.folding.is_none() {
            return;
        }
        let folds = lock(&self.folds);
        let Some(batch) = lock(&self.assigned).get(&id).copied() else {
            return;
        };
        let waiting = folds
            .get(&batch)
            .is_some_and(|f| !f.taken && f.ids[f.folded..].contains(&id));
        if waiting {
            lock(&self.holds).insert(id, Arc::clone(slot));
        }
    }
}

impl<T: 'static, R: Send + Sync + 'static> BlockTask for BlockCache<T, R> {
    fn on_block(&self, id: BlockId, bytes: &Bytes, queue_slot: &QueueSlot) {
        let slot = self.slot(id);
        slot.get_or_init(|| self.compute(id, bytes));
        let batch = lock(&self.assigned).get(&id).copied();
        if let Some(batch) = batch {
            self.advance(batch);
            self.hold_until_folded(id, queue_slot);
        }
    }

    fn folds(&self) -> bool {
        self.folding.is_some()
    }

    fn on_prefetched_block(&self, id: BlockId, bytes: &Bytes) {
        // The slot is taken under `assigned` (lock order: `assigned`, then `slots`): a
        // `forget` of the block's batch either ran before (the block is not assigned any
        // more: nothing is computed) or runs after and drops the slot with its result.
        let (slot, batch) = {
            let assigned = lock(&self.assigned);
            let Some(&batch) = assigned.get(&id) else {
                return;
            };
            (self.slot(id), batch)
        };
        slot.get_or_init(|| self.compute(id, bytes));
        self.advance(batch);
    }

    fn assign(&self, id: BlockId, batch: BatchTime, queue_slot: Option<&QueueSlot>) {
        let Some(folding) = &self.folding else { return };
        {
            let mut folds = lock(&self.folds);
            let fold = folds.entry(batch).or_insert_with(|| BatchFold {
                ids: Vec::new(),
                folded: 0,
                acc: (folding.empty)(),
                taken: false,
            });
            fold.ids.push(id);
            lock(&self.assigned).insert(id, batch);
        }
        self.advance(batch);
        // If the block's stages already ran, its result may be waiting for an earlier
        // block's; if they have not, the stage task holds the slot and decides when it ends.
        if let Some(queue_slot) = queue_slot {
            self.hold_until_folded(id, queue_slot);
        }
    }

    fn forget(&self, ids: &[BlockId], up_to: BatchTime) {
        {
            let mut folds = lock(&self.folds);
            let kept = folds.split_off(&up_to.plus_millis(1));
            *folds = kept;
        }
        let mut assigned = lock(&self.assigned);
        let mut slots = lock(&self.slots);
        let mut holds = lock(&self.holds);
        for id in ids {
            assigned.remove(id);
            slots.remove(id);
            holds.remove(id);
        }
    }
}

/// Runs a function over every unit of a pipe at a batch time (see the module docs).
pub(crate) struct UnitRunner<T, R> {
    branches: Vec<(Branch<T>, Option<Arc<BlockCache<T, R>>>)>,
    f: Arc<UnitFn<T, R>>,
    folding: Option<Arc<Folding<R>>>,
    /// Who runs this, for error messages.
    label: String,
}

impl<T: Data, R: Send + Sync + 'static> UnitRunner<T, R> {
    pub fn new<F>(branches: &[Branch<T>], label: String, f: F) -> Self
    where
        F: Fn(&dyn Stage<T>, Unit<'_>) -> std::result::Result<R, String> + Send + Sync + 'static,
    {
        Self::build(branches, label, f, None)
    }

    /// A runner whose per-unit results are folded (see [`Folding`]): per input branch, as
    /// blocks arrive; see [`UnitRunner::branch_results`].
    pub fn folding<F>(branches: &[Branch<T>], label: String, f: F, folding: Folding<R>) -> Self
    where
        F: Fn(&dyn Stage<T>, Unit<'_>) -> std::result::Result<R, String> + Send + Sync + 'static,
    {
        Self::build(branches, label, f, Some(Arc::new(folding)))
    }

    fn build<F>(
        branches: &[Branch<T>],
        label: String,
        f: F,
        folding: Option<Arc<Folding<R>>>,
    ) -> Self
    where
        F: Fn(&dyn Stage<T>, Unit<'_>) -> std::result::Result<R, String> + Send + Sync + 'static,
    {
        let f: Arc<UnitFn<T, R>> = Arc::new(f);
        let branches = branches
            .iter()
            .map(|b| {
                let cache = matches!(b.source, Source::Input(_)).then(|| {
                    Arc::new(BlockCache {
                        stage: Arc::clone(&b.stage),
                        f: Arc::clone(&f),
                        slots: Mutex::default(),
                        folding: folding.clone(),
                        folds: Mutex::default(),
                        assigned: Mutex::default(),
                        holds: Mutex::default(),
                    })
                });
                (b.clone(), cache)
            })
            .collect();
        UnitRunner {
            branches,
            f,
            folding,
            label,
        }
    }

    pub fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        self.branches
            .iter()
            .filter_map(|(b, _)| match &b.source {
                Source::Node(n) => Some((Arc::clone(n), 0)),
                Source::Input(_) => None,
            })
            .collect()
    }

    pub fn block_tasks(&self) -> Vec<(StreamId, Arc<dyn BlockTask>)> {
        self.branches
            .iter()
            .filter_map(|(b, cache)| match (&b.source, cache) {
                (Source::Input(s), Some(c)) => Some((*s, Arc::clone(c) as Arc<dyn BlockTask>)),
                _ => None,
            })
            .collect()
    }

    /// One result per branch, each the fold of the branch's units in order (for an input
    /// branch, the fold made as its blocks arrived, when there is one), owned by the caller
    /// (a folding runner only).
    pub fn branch_results(&self, cx: &BatchCx, time: BatchTime) -> Result<Vec<R>> {
        let Some(folding) = &self.folding else {
            unreachable!("branch_results called on a runner without folding");
        };
        let mut out = Vec::with_capacity(self.branches.len());
        for (index, (branch, cache)) in self.branches.iter().enumerate() {
            if let (Source::Input(stream), Some(cache)) = (&branch.source, cache) {
                let blocks = cx.blocks(*stream, time);
                if let Some(fold) = cache.batch_fold(cx, *stream, time, blocks)? {
                    out.push(fold.map_err(|message| Error::Job {
                        batch_time: time,
                        operator: self.label.clone(),
                        message,
                    })?);
                    continue;
                }
            }
            let units = self.units_of(cx, time, &self.branches[index..=index])?;
            let mut acc = (folding.empty)();
            // Each unit is dropped once folded (by moving, when no cache shares it).
            for unit in units {
                folding.add_shared(&mut acc, unit);
            }
            out.push(acc);
        }
        Ok(out)
    }

    /// The fold of `results` from empty, in order (a folding runner only).
    pub fn fold(&self, results: Vec<R>) -> R {
        let Some(folding) = &self.folding else {
            unreachable!("fold called on a runner without folding");
        };
        let mut acc = (folding.empty)();
        for r in results {
            (folding.add_owned)(&mut acc, r);
        }
        acc
    }

    /// The function's result for every unit at `time`, in unit order; lost blocks are
    /// skipped (and counted in the batch).
    pub fn results(&self, cx: &BatchCx, time: BatchTime) -> Result<Vec<Arc<R>>> {
        self.units_of(cx, time, &self.branches)
    }

    #[allow(clippy::type_complexity)]
    fn units_of(
        &self,
        cx: &BatchCx,
        time: BatchTime,
        branches: &[(Branch<T>, Option<Arc<BlockCache<T, R>>>)],
    ) -> Result<Vec<Arc<R>>> {
        enum Job<'a, T, R> {
            Block(StreamId, &'a StoredBlock, &'a BlockCache<T, R>),
            Part(&'a dyn Stage<T>, usize, Arc<dyn Any + Send + Sync>),
        }
        let mut jobs: Vec<Job<'_, T, R>> = Vec::new();
        for (branch, cache) in branches {
            match (&branch.source, cache) {
                (Source::Input(stream), Some(cache)) => {
                    for block in cx.blocks(*stream, time) {
                        jobs.push(Job::Block(*stream, block, cache));
                    }
                }
                (Source::Node(node), _) => {
                    if let Some(parts) = node.units(cx, time)? {
                        jobs.extend(
                            parts
                                .into_iter()
                                .enumerate()
                                .map(|(i, p)| Job::Part(&*branch.stage, i, p)),
                        );
                    }
                }
                (Source::Input(_), None) => unreachable!("input branches always have a cache"),
            }
        }
        let run = |job: &Job<'_, T, R>| -> Result<Option<Arc<R>>> {
            let outcome = match job {
                Job::Block(stream, block, cache) => match cache.get(cx, *stream, block)? {
                    Some(outcome) => outcome,
                    None => return Ok(None),
                },
                Job::Part(stage, index, part) => {
                    catch(|| (self.f)(*stage, Unit::Part(*index, &**part)))
                        .and_then(|r| r)
                        .map(Arc::new)
                }
            };
            outcome.map(Some).map_err(|message| Error::Job {
                batch_time: time,
                operator: self.label.clone(),
                message: match job {
                    Job::Block(_, block, _) => format!("block {}: {message}", block.id),
                    Job::Part(..) => message,
                },
            })
        };
        let results: Vec<Result<Option<Arc<R>>>> = if jobs.len() <= 1 {
            jobs.iter().map(run).collect()
        } else {
            cx.pool.install(|| jobs.par_iter().map(run).collect())
        };
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            if let Some(r) = r? {
                out.push(r);
            }
        }
        Ok(out)
    }
}
