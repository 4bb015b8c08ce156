//! The driver: runs the scheduler core against a clock and carries out its actions; and the
//! job thread, which runs batches.
//!
//! The driver is one async task. It sleeps until the core's next deadline or an event
//! (a block stored, a batch done, a receiver stopped, a stop request), feeds the core, and
//! carries out the returned actions in order: an allocation is recorded (and written to the
//! metadata log) before anything after it; a batch is handed to the job thread; cleanup
//! releases block caches, handler copies and retention slots.
//!
//! The job thread runs one batch at a time: each output operation's job in definition
//! order, then advances stateful operators the outputs did not reach, then notifies
//! listeners. Batch events therefore reach listeners between batches, when state is at a
//! batch boundary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::block::{BlockId, StoredBlock, StreamId};
use crate::clock::Clock;
use crate::context::{Listeners, MetadataLog, Shared};
use crate::dstream::node::{BatchCx, StreamTable, catch, lock};
use crate::dstream::pipe::QueueSlot;
use crate::dstream::state::StateSnapshot;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::metrics::{BatchInfo, OutputOperationInfo};
use crate::rate::{PidRateEstimator, RateLimiter};
use crate::scheduler::{Action, Allocation, Event, Scheduler};
use crate::source::DirectInput;
use crate::time::BatchTime;

/// What the driver task hears about.
pub(crate) enum DriverEvent {
    /// A block was stored. `queue_slot` is a share of the block's receiver queue slot: the
    /// slot frees only once the driver has assigned the block to its batch (here), its
    /// block stages have run and their results are folded, so that a receiver never runs
    /// more than `receiver_queue_blocks_max` blocks ahead of the driver or of the folds
    /// (see `BlockCache`).
    BlockStored {
        block: StoredBlock,
        queue_slot: Option<QueueSlot>,
    },
    ReceiverStopped {
        stream: StreamId,
        error: Option<Error>,
    },
    BatchDone {
        time: BatchTime,
        error: Option<Error>,
    },
    Stop {
        graceful: bool,
    },
}

/// What the job thread is asked to do.
pub(crate) enum JobMsg {
    Run {
        time: BatchTime,
        allocations: Arc<BTreeMap<BatchTime, Allocation>>,
        submitted_ms: u64,
    },
    Snapshot {
        reply: oneshot::Sender<Result<Vec<StateSnapshot>>>,
    },
}

pub(crate) struct Driver {
    pub scheduler: Scheduler,
    pub clock: Arc<dyn Clock>,
    pub events: mpsc::UnboundedReceiver<DriverEvent>,
    pub jobs: Option<std_mpsc::Sender<JobMsg>>,
    pub stop_receivers: watch::Sender<Option<bool>>,
    pub direct: Vec<(StreamId, Arc<dyn DirectInput>)>,
    pub graph: Arc<Graph>,
    pub streams: Arc<StreamTable>,
    pub retained: BTreeMap<StreamId, Arc<Semaphore>>,
    pub metadata_log: Arc<dyn MetadataLog>,
    pub listeners: Arc<Listeners>,
    pub graceful_stop_timeout_ms: u64,
    pub allocations: BTreeMap<BatchTime, Allocation>,
    pub submitted: BTreeMap<BatchTime, u64>,
    pub first_error: Option<Error>,
    pub stop_deadline: Option<Instant>,
    /// Reads direct inputs' planned blocks ahead of their batch (`None`: none prefetches).
    pub prefetcher: Option<Prefetcher>,
}

impl Driver {
    pub async fn run(mut self) -> Option<Error> {
        // Pending batches of a restart start at once; new batches are generated only in the
        // loop, after the events already queued (blocks stored before the tick) are handled.
        let actions = self.scheduler.on_start();
        self.execute(actions).await;
        // Blocks recovered unallocated go to the next batch, ahead of any block stored from
        // now on: block stages that fold must expect them there (they have no arrival task;
        // the batch reads them back, or counts them lost).
        for block in self.scheduler.unallocated() {
            self.assign_to_open_batch(block.id, None);
        }
        while !self.scheduler.is_stopped() {
            let deadline = self.scheduler.next_deadline();
            let sleep = deadline.map(|d| self.clock.sleep_until(d.as_millis()));
            let stop_deadline = self.stop_deadline;
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                () = async { if let Some(s) = sleep { s.await } }, if deadline.is_some() => {
                    // Blocks reported before the tick belong to this batch, even if the
                    // channel's fairness budget hid them from the branch above.
                    while let Ok(event) = self.events.try_recv() {
                        self.handle(event).await;
                    }
                    let actions = self.scheduler.on_tick(self.clock.now_ms());
                    self.execute(actions).await;
                }
                () = async { if let Some(d) = stop_deadline { tokio::time::sleep_until(d.into()).await } }, if stop_deadline.is_some() => {
                    self.stop_deadline = None;
                    let pending = self.scheduler.pending_batches().len();
                    tracing::error!(pending, "graceful stop timed out; stopping now");
                    self.fail(Error::StopTimeout { timeout_ms: self.graceful_stop_timeout_ms, batches_pending: pending });
                    let actions = self.scheduler.on_event(Event::StopRequested { graceful: false });
                    self.execute(actions).await;
                }
            }
        }
        // Tell any receiver still running to stop, and let the job thread finish.
        let _ = self.stop_receivers.send(Some(false));
        self.jobs = None;
        self.first_error
    }

    fn fail(&mut self, error: Error) {
        tracing::error!(%error, "streaming context failed");
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    /// Tells the block stages of the block's stream which batch it goes to (the next one
    /// generated), so that stages that fold can fold it into that batch as it arrives.
    fn assign_to_open_batch(&self, id: BlockId, queue_slot: Option<&QueueSlot>) {
        let Some(batch) = self.scheduler.open_batch() else {
            return;
        };
        for task in self.graph.block_tasks.get(&id.stream).into_iter().flatten() {
            task.assign(id, batch, queue_slot);
        }
    }

    async fn handle(&mut self, event: DriverEvent) {
        let actions = match event {
            DriverEvent::BlockStored { block, queue_slot } => {
                // The receiver recorded the block in the metadata log before reporting it.
                // The block goes to the next batch generated: block stages that fold can
                // start folding it into that batch now.
                self.assign_to_open_batch(block.id, queue_slot.as_ref());
                // Assigned (and folded, if its stages have run): the receiver may go on.
                drop(queue_slot);
                self.scheduler.on_event(Event::BlockStored(block))
            }
            DriverEvent::ReceiverStopped { stream, error } => {
                let mut actions = Vec::new();
                if let Some(e) = error {
                    self.fail(e);
                    // Process what was received, then stop.
                    actions.extend(self.request_stop(true));
                }
                actions.extend(self.scheduler.on_event(Event::ReceiverStopped { stream }));
                actions
            }
            DriverEvent::BatchDone { time, error } => match error {
                Some(e) => {
                    self.fail(e);
                    self.scheduler.on_event(Event::BatchFailed { time })
                }
                None => {
                    if let Err(e) = blocking(|| self.metadata_log.batch_completed(time)) {
                        self.fail(e);
                    }
                    self.scheduler.on_event(Event::BatchCompleted { time })
                }
            },
            DriverEvent::Stop { graceful } => self.request_stop(graceful),
        };
        self.execute(actions).await;
    }

    fn request_stop(&mut self, graceful: bool) -> Vec<Action> {
        if graceful && self.stop_deadline.is_none() {
            self.stop_deadline =
                Some(Instant::now() + Duration::from_millis(self.graceful_stop_timeout_ms));
        }
        self.scheduler.on_event(Event::StopRequested { graceful })
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::AllocateBlocks(mut alloc) => {
                    let planned: Result<()> = blocking(|| {
                        for (stream, input) in &self.direct {
                            let blocks = input.plan(*stream, alloc.time)?;
                            if !blocks.is_empty() {
                                alloc.blocks.insert(*stream, blocks);
                            }
                        }
                        // The allocation is durable before anything after it happens.
                        self.metadata_log.batch_allocated(&alloc)
                    });
                    if let Err(e) = planned {
                        self.fail(e);
                        queue.extend(
                            self.scheduler
                                .on_event(Event::StopRequested { graceful: false }),
                        );
                    } else if let Some(prefetcher) = &self.prefetcher {
                        // Durable: the blocks may be read now, ahead of the batch.
                        for (stream, input) in &self.direct {
                            if let Some(blocks) = alloc.blocks.get(stream) {
                                prefetcher.planned(alloc.time, input, &self.graph, blocks);
                            }
                        }
                    }
                    let now = self.clock.now_ms();
                    let info = BatchInfo {
                        batch_time: alloc.time,
                        stream_records: alloc
                            .blocks
                            .keys()
                            .map(|s| (*s, alloc.stream_records(*s)))
                            .collect(),
                        submission_time_ms: now,
                        processing_start_ms: None,
                        processing_end_ms: None,
                        output_operations: Vec::new(),
                        lost_blocks: 0,
                        lost_records: 0,
                        failure: None,
                    };
                    self.listeners.batch_submitted(&info);
                    self.submitted.insert(alloc.time, now);
                    self.allocations.insert(alloc.time, alloc);
                }
                Action::RunBatch { time } => {
                    let submitted_ms = self
                        .submitted
                        .get(&time)
                        .copied()
                        .unwrap_or_else(|| self.clock.now_ms());
                    let msg = JobMsg::Run {
                        time,
                        allocations: Arc::new(self.allocations.clone()),
                        submitted_ms,
                    };
                    if self.jobs.as_ref().is_none_or(|j| j.send(msg).is_err()) {
                        self.fail(Error::ContextState {
                            state: "stopping",
                            action: "run a batch (the job thread is gone)",
                        });
                        queue.extend(self.scheduler.on_event(Event::BatchFailed { time }));
                    }
                }
                Action::Cleanup { up_to, blocks } => self.cleanup(up_to, blocks).await,
                Action::StopReceivers { graceful } => {
                    let _ = self.stop_receivers.send(Some(graceful));
                }
                Action::Stopped {
                    graceful,
                    unprocessed,
                } => {
                    if unprocessed.is_empty() {
                        tracing::info!(graceful, "streaming context stopped");
                    } else {
                        tracing::warn!(
                            graceful,
                            ?unprocessed,
                            "streaming context stopped with batches not processed (pending for a restart)"
                        );
                    }
                }
            }
        }
    }

    async fn cleanup(&mut self, up_to: BatchTime, blocks: Vec<StoredBlock>) {
        let mut by_stream: BTreeMap<StreamId, Vec<StoredBlock>> = BTreeMap::new();
        for b in blocks {
            by_stream.entry(b.id.stream).or_default().push(b);
        }
        // Direct inputs' blocks are in the driver's allocations only.
        let times: BTreeSet<BatchTime> =
            self.allocations.range(..=up_to).map(|(t, _)| *t).collect();
        for t in &times {
            if let Some(alloc) = self.allocations.remove(t) {
                for (stream, input) in &self.direct {
                    let _ = input;
                    if let Some(bs) = alloc.blocks.get(stream) {
                        by_stream
                            .entry(*stream)
                            .or_default()
                            .extend(bs.iter().cloned());
                    }
                }
            }
            self.submitted.remove(t);
        }
        for (stream, blocks) in by_stream {
            let ids: Vec<_> = blocks.iter().map(|b| b.id).collect();
            for task in self.graph.block_tasks.get(&stream).into_iter().flatten() {
                task.forget(&ids, up_to);
            }
            if let Err(e) = self.streams.handler(stream).cleanup(&blocks).await {
                self.fail(e);
            }
            if let Some(sem) = self.retained.get(&stream) {
                sem.add_permits(blocks.len());
            }
        }
        if let Err(e) = blocking(|| self.metadata_log.batches_cleaned(up_to)) {
            self.fail(e);
        }
    }
}

/// Reads direct inputs' planned blocks ahead of their batch, on `direct_prefetch_blocks_max`
/// threads of its own, and runs each block's stages on it as a receiver's block would have
/// them run on arrival: so fetching a batch's ranges overlaps with counting them and with
/// earlier batches, and at batch time only the fold is left. Jobs run in planning order
/// (batch time, then block id). A prefetch changes no result: the block is the one
/// recorded in the metadata log, its stage results are folded in block-id order as
/// always, and a batch that needs a block whose prefetch has not finished reads it itself
/// (the input shares one read between them; see `DirectInput::prefetches`). Not started
/// for the pending batches of a restart, which read their blocks at batch time.
pub(crate) struct Prefetcher {
    jobs: Option<std_mpsc::Sender<PrefetchJob>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

struct PrefetchJob {
    input: Arc<dyn DirectInput>,
    block: StoredBlock,
    tasks: Vec<Arc<dyn crate::dstream::pipe::BlockTask>>,
}

impl Prefetcher {
    /// `threads` prefetch threads (at least one).
    pub fn start(threads: usize) -> Result<Prefetcher> {
        let (tx, rx) = std_mpsc::channel::<PrefetchJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for i in 0..threads.max(1) {
            let (rx, closed) = (Arc::clone(&rx), Arc::clone(&closed));
            std::thread::Builder::new()
                .name(format!("ember-prefetch-{i}"))
                .spawn(move || {
                    loop {
                        let job = lock(&rx).recv();
                        let Ok(job) = job else { return };
                        if closed.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        Self::run(job);
                    }
                })
                .map_err(|source| Error::Runtime {
                    what: "a prefetch thread",
                    source,
                })?;
        }
        Ok(Prefetcher {
            jobs: Some(tx),
            closed,
        })
    }

    /// The blocks of `stream` in the batch at `time` were planned and recorded: assign
    /// them to their batch's folds and queue their reads. Streams whose inputs do not
    /// prefetch, or with a block stage that does not fold, are left to batch time.
    fn planned(
        &self,
        time: BatchTime,
        input: &Arc<dyn DirectInput>,
        graph: &Graph,
        blocks: &[StoredBlock],
    ) {
        let Some(stream) = blocks.first().map(|b| b.id.stream) else {
            return;
        };
        let tasks = graph.block_tasks.get(&stream).cloned().unwrap_or_default();
        if !input.prefetches() || tasks.is_empty() || !tasks.iter().all(|t| t.folds()) {
            return;
        }
        for block in blocks {
            for task in &tasks {
                task.assign(block.id, time, None);
            }
        }
        input.prefetch_planned(blocks);
        for block in blocks {
            let job = PrefetchJob {
                input: Arc::clone(input),
                block: block.clone(),
                tasks: tasks.clone(),
            };
            if self.jobs.as_ref().is_none_or(|j| j.send(job).is_err()) {
                // No prefetch thread: the batch reads the block itself.
                input.prefetch_done(block.id);
            }
        }
    }

    fn run(job: PrefetchJob) {
        let id = job.block.id;
        match job.input.prefetch(&job.block) {
            None => {}
            Some(Ok(bytes)) => {
                for task in &job.tasks {
                    if let Err(message) = catch(|| task.on_prefetched_block(id, &bytes)) {
                        // The batch computes the block again and reports the failure.
                        tracing::warn!(block = %id, %message, "block stage failed on a prefetched block");
                    }
                }
            }
            Some(Err(e)) => {
                // The batch reads the block again and reports the error if it persists.
                tracing::warn!(block = %id, error = %e, "prefetch failed; the batch reads the block itself");
            }
        }
        job.input.prefetch_done(id);
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Queued reads are not worth doing any more; the threads end after their current one.
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.jobs = None;
    }
}

/// Runs blocking work (file listing, metadata log writes) without stalling the runtime's
/// other tasks.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// Rate control of one receiver stream.
pub(crate) struct RateControl {
    pub stream: StreamId,
    pub limiter: Arc<RateLimiter>,
    pub max_rate: Option<u64>,
    pub estimator: Option<PidRateEstimator>,
}

/// The job thread's state.
pub(crate) struct JobRunner {
    pub graph: Arc<Graph>,
    pub streams: Arc<StreamTable>,
    pub pool: Arc<rayon::ThreadPool>,
    pub runtime: tokio::runtime::Handle,
    pub clock: Arc<dyn Clock>,
    pub zero: BatchTime,
    pub listeners: Arc<Listeners>,
    pub events: mpsc::UnboundedSender<DriverEvent>,
    pub rates: Vec<RateControl>,
    pub shared: Arc<Shared>,
    pub last_completed: Option<BatchTime>,
    pub checkpointer: Option<Arc<dyn crate::durability::BatchCheckpointer>>,
}

impl JobRunner {
    pub fn run(mut self, jobs: std_mpsc::Receiver<JobMsg>) {
        for msg in jobs {
            match msg {
                JobMsg::Run {
                    time,
                    allocations,
                    submitted_ms,
                } => {
                    let (info, mut error) = self.run_batch(time, allocations, submitted_ms);
                    if error.is_none() {
                        self.last_completed = Some(time);
                        // Between two batches state is at a batch boundary: the moment to
                        // checkpoint (the next batch waits, as the checkpoint must be
                        // consistent with this state).
                        if let Some(c) = &self.checkpointer
                            && let Err(e) = c.batch_completed(time, &self.graph)
                        {
                            tracing::error!(batch = %time, error = %e, "checkpoint failed");
                            error = Some(e);
                        }
                    }
                    self.shared.record_batch(info);
                    if self
                        .events
                        .send(DriverEvent::BatchDone { time, error })
                        .is_err()
                    {
                        return;
                    }
                }
                JobMsg::Snapshot { reply } => {
                    let snapshot = match self.last_completed {
                        Some(t) => self.graph.snapshot_state(t),
                        None => Ok(Vec::new()),
                    };
                    let _ = reply.send(snapshot);
                }
            }
        }
    }

    fn run_batch(
        &mut self,
        time: BatchTime,
        allocations: Arc<BTreeMap<BatchTime, Allocation>>,
        submitted_ms: u64,
    ) -> (BatchInfo, Option<Error>) {
        let stream_records = allocations
            .get(&time)
            .map(|a| {
                a.blocks
                    .keys()
                    .map(|s| (*s, a.stream_records(*s)))
                    .collect()
            })
            .unwrap_or_default();
        let mut info = BatchInfo {
            batch_time: time,
            stream_records,
            submission_time_ms: submitted_ms,
            processing_start_ms: Some(self.clock.now_ms()),
            processing_end_ms: None,
            output_operations: Vec::new(),
            lost_blocks: 0,
            lost_records: 0,
            failure: None,
        };
        self.listeners.batch_started(&info);
        let cx = BatchCx::new(
            time,
            self.zero,
            allocations,
            Arc::clone(&self.streams),
            Arc::clone(&self.pool),
            self.runtime.clone(),
        );
        let mut error = None;
        for (i, op) in self.graph.outputs.iter().enumerate() {
            let start_ms = self.clock.now_ms();
            let result = catch(|| op.run(&cx, time)).unwrap_or_else(|message| {
                Err(Error::Job {
                    batch_time: time,
                    operator: op.label().to_owned(),
                    message,
                })
            });
            let end_ms = self.clock.now_ms();
            let ran = match result {
                Ok(ran) => ran,
                Err(e) => {
                    let op_info = OutputOperationInfo {
                        id: i,
                        name: op.label().to_owned(),
                        start_ms,
                        end_ms,
                        failure: Some(e.to_string()),
                    };
                    self.listeners.output_operation_completed(time, &op_info);
                    info.output_operations.push(op_info);
                    error = Some(e);
                    break;
                }
            };
            if ran {
                let op_info = OutputOperationInfo {
                    id: i,
                    name: op.label().to_owned(),
                    start_ms,
                    end_ms,
                    failure: None,
                };
                self.listeners.output_operation_completed(time, &op_info);
                info.output_operations.push(op_info);
            }
        }
        if error.is_none() {
            // Stateful operators advance every batch, even when no output read them now.
            for node in &self.graph.nodes {
                if node.stateful().is_none() || !cx.is_valid(time, node.info().slide_ms) {
                    continue;
                }
                let advanced =
                    catch(|| node.ensure_computed(&cx, time)).unwrap_or_else(|message| {
                        Err(Error::Job {
                            batch_time: time,
                            operator: node.info().label(),
                            message,
                        })
                    });
                if let Err(e) = advanced {
                    error = Some(e);
                    break;
                }
            }
        }
        info.processing_end_ms = Some(self.clock.now_ms());
        (info.lost_blocks, info.lost_records) = cx.lost();
        info.failure = error.as_ref().map(|e| e.to_string());
        drop(cx);
        self.graph.forget(time);
        self.log(&info);
        self.update_rates(&info);
        self.listeners.batch_completed(&info);
        (info, error)
    }

    fn log(&self, info: &BatchInfo) {
        let (sched, proc, total) = (
            info.scheduling_delay_ms().unwrap_or(0),
            info.processing_delay_ms().unwrap_or(0),
            info.total_delay_ms().unwrap_or(0),
        );
        if let Some(failure) = &info.failure {
            tracing::error!(batch = info.batch_time.as_millis(), records = info.records(), %failure, "batch failed");
        } else if info.lost_blocks > 0 {
            tracing::warn!(
                batch = info.batch_time.as_millis(),
                records = info.records(),
                scheduling_delay_ms = sched,
                processing_ms = proc,
                total_delay_ms = total,
                lost_blocks = info.lost_blocks,
                lost_records = info.lost_records,
                "batch completed with lost blocks"
            );
        } else {
            tracing::info!(
                batch = info.batch_time.as_millis(),
                records = info.records(),
                scheduling_delay_ms = sched,
                processing_ms = proc,
                total_delay_ms = total,
                "batch completed"
            );
        }
    }

    fn update_rates(&mut self, info: &BatchInfo) {
        let (Some(end), Some(processing), Some(scheduling)) = (
            info.processing_end_ms,
            info.processing_delay_ms(),
            info.scheduling_delay_ms(),
        ) else {
            return;
        };
        for rc in &mut self.rates {
            let Some(estimator) = rc.estimator.as_mut() else {
                continue;
            };
            let records = info.stream_records.get(&rc.stream).copied().unwrap_or(0);
            if let Some(rate) = estimator.compute(end, records, processing, scheduling) {
                let rate = rc.max_rate.map_or(rate, |max| rate.min(max)).max(1);
                rc.limiter.set_rate(Some(rate));
            }
        }
    }
}

/// Keeps the last `n` batch infos.
pub(crate) fn retain_last(
    batches: &std::sync::Mutex<std::collections::VecDeque<BatchInfo>>,
    info: BatchInfo,
    n: usize,
) {
    let mut b = lock(batches);
    b.push_back(info);
    while b.len() > n {
        b.pop_front();
    }
}
