//! [`StreamingContext`]: where a pipeline is defined, started and stopped.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::ThreadId;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::block::{BlockCodec, LinesCodec, PostcardCodec, StoredBlock, StreamId};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::driver::{Driver, DriverEvent, JobMsg, JobRunner, RateControl};
use crate::dstream::node::{Data, StreamEntry, StreamTable, catch, lock};
use crate::dstream::pipe::{Branch, DecodeStage, Source};
use crate::dstream::state::StateSnapshot;
use crate::dstream::{DStream, Pipe};
use crate::error::{Error, Result};
use crate::graph::{Graph, GraphBuilder};
use crate::handler::{MemoryBlockHandler, ReceivedBlockHandler};
use crate::metrics::{
    BatchInfo, OutputOperationInfo, ReceiverInfo, ReceiverState, StreamingListener,
};
use crate::rate::{PidRateEstimator, RateLimiter};
use crate::scheduler::{Allocation, RestoredState, Scheduler, SchedulerConfig};
use crate::source::file::FileInput;
use crate::source::queue::{QueueHandle, QueueInput};
use crate::source::receiver::{ReceiverShared, launcher};
use crate::source::{DirectInput, InputDef, InputKind, Receiver, SocketOptions, socket};
use crate::text::Str;
use crate::time::BatchTime;

/// Where a metadata log records the scheduler's decisions (the durability work's seam; the
/// default records nothing). Each call returns only once the record is durable; an error
/// stops the context. The calls come in the order of the events:
/// - `block_stored` from the receiver, after the handler stored the block and before the
///   store resolves (so before the source is acknowledged and before the block can be
///   allocated); calls from several receivers may be concurrent;
/// - `batch_allocated` before the batch runs (its jobs see exactly this allocation);
/// - `batch_completed` after every output operation of the batch ran;
/// - `batches_cleaned` when every batch up to a time no longer needs its blocks.
pub trait MetadataLog: Send + Sync + 'static {
    /// A block was stored by its stream's handler.
    fn block_stored(&self, _block: &StoredBlock) -> Result<()> {
        Ok(())
    }
    /// A batch was generated with these blocks (direct inputs' blocks included).
    fn batch_allocated(&self, _allocation: &Allocation) -> Result<()> {
        Ok(())
    }
    /// A batch completed.
    fn batch_completed(&self, _time: BatchTime) -> Result<()> {
        Ok(())
    }
    /// Batches up to `up_to` were cleaned up.
    fn batches_cleaned(&self, _up_to: BatchTime) -> Result<()> {
        Ok(())
    }
}

struct NoMetadataLog;
impl MetadataLog for NoMetadataLog {}

/// What a restarted context resumes from (built by the durability layer from its
/// checkpoint and metadata log).
#[derive(Clone, Debug, Default)]
pub struct Restore {
    /// The original grid's origin.
    pub zero: BatchTime,
    /// The scheduler's pending batches, unallocated blocks and last generated batch.
    pub scheduler: RestoredState,
    /// Per receiver stream, the next block sequence number (past every recovered block).
    pub next_block_seq: BTreeMap<StreamId, u64>,
    /// State to restore into the stateful operators.
    pub state: Vec<StateSnapshot>,
    /// Per receiver stream, where its source resumes: the highest `source_offsets.end` over
    /// every block recovered (allocated or not). Read by receivers through
    /// [`crate::ReceiverContext::resume_offset`].
    pub resume_offsets: BTreeMap<StreamId, u64>,
}

/// The registered listeners.
#[derive(Default)]
pub(crate) struct Listeners(RwLock<Vec<Arc<dyn StreamingListener>>>);

impl Listeners {
    fn each(&self, f: impl Fn(&dyn StreamingListener)) {
        let listeners = self.0.read().unwrap_or_else(|e| e.into_inner());
        for l in listeners.iter() {
            // A panicking listener must not take the job thread down with it.
            if let Err(message) = catch(|| f(&**l)) {
                tracing::error!(%message, "a streaming listener panicked");
            }
        }
    }

    pub fn batch_submitted(&self, b: &BatchInfo) {
        self.each(|l| l.on_batch_submitted(b));
    }

    pub fn batch_started(&self, b: &BatchInfo) {
        self.each(|l| l.on_batch_started(b));
    }

    pub fn batch_completed(&self, b: &BatchInfo) {
        self.each(|l| l.on_batch_completed(b));
    }

    pub fn output_operation_completed(&self, t: BatchTime, op: &OutputOperationInfo) {
        self.each(|l| l.on_output_operation_completed(t, op));
    }

    pub fn receiver_state(&self, r: &ReceiverInfo) {
        self.each(|l| l.on_receiver_state(r));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    Initialized,
    Active,
    Stopped,
}

type NamedInput = (StreamId, String, Arc<dyn DirectInput>);

/// What the context's parts share.
pub(crate) struct Shared {
    batches: Mutex<VecDeque<BatchInfo>>,
    batches_max: usize,
    receivers: Mutex<Vec<Arc<ReceiverShared>>>,
    direct: Mutex<Vec<NamedInput>>,
    termination: Mutex<Termination>,
    terminated: Condvar,
    job_thread: Mutex<Option<ThreadId>>,
    /// The first signal that stopped the context (0: none).
    signal: std::sync::atomic::AtomicI32,
    /// For state snapshot requests; dropped when the driver ends so the job thread can exit.
    jobs_tx: Mutex<Option<std::sync::mpsc::Sender<JobMsg>>>,
}

#[derive(Default)]
struct Termination {
    done: bool,
    error: Option<Error>,
    error_reported: bool,
}

impl Shared {
    pub fn record_batch(&self, info: BatchInfo) {
        crate::driver::retain_last(&self.batches, info, self.batches_max);
    }

    fn terminate(&self, error: Option<Error>) {
        let mut t = lock(&self.termination);
        t.done = true;
        t.error = error;
        self.terminated.notify_all();
    }
}

/// A streaming pipeline: define input streams and their transformations and outputs, then
/// [`StreamingContext::start`] it. (Spark's `StreamingContext`.)
///
/// The context owns its threads: an I/O runtime for receivers and the driver, a pool of
/// `worker_threads` for block stages and per-partition work, and one job thread that runs
/// batches in order. Dropping an active context stops it immediately.
pub struct StreamingContext {
    config: Arc<Config>,
    graph: Arc<GraphBuilder>,
    clock: Arc<dyn Clock>,
    runtime: Option<tokio::runtime::Runtime>,
    pool: Arc<rayon::ThreadPool>,
    listeners: Arc<Listeners>,
    shared: Arc<Shared>,
    lifecycle: Mutex<Lifecycle>,
    default_handler: Mutex<Arc<dyn ReceivedBlockHandler>>,
    stream_handlers: Mutex<BTreeMap<StreamId, Arc<dyn ReceivedBlockHandler>>>,
    metadata_log: Mutex<Option<Arc<dyn MetadataLog>>>,
    /// Set by [`StreamingContext::get_or_create`]: what `start` resumes from, and who
    /// writes checkpoints.
    pub(crate) recovered: Mutex<Option<Restore>>,
    pub(crate) checkpointer: Mutex<Option<Arc<dyn crate::durability::BatchCheckpointer>>>,
    events_tx: mpsc::UnboundedSender<DriverEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<DriverEvent>>>,
    frozen: Mutex<Option<Arc<Graph>>>,
    frozen_inputs: Mutex<Vec<(StreamId, crate::dstream::OperatorId, &'static str)>>,
}

impl StreamingContext {
    /// A context with `config`, on the system clock.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A context on `clock` (a [`crate::ManualClock`] runs schedules in tests without sleeping).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ember-io")
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime {
                what: "the I/O runtime",
                source,
            })?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.worker_threads)
            .thread_name(|i| format!("ember-worker-{i}"))
            .build()
            .map_err(|e| Error::Runtime {
                what: "the worker pool",
                source: std::io::Error::other(e),
            })?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Ok(StreamingContext {
            graph: Arc::new(GraphBuilder::new(config.partitions)),
            shared: Arc::new(Shared {
                batches: Mutex::default(),
                batches_max: config.metrics_batches_retained_max,
                receivers: Mutex::default(),
                direct: Mutex::default(),
                termination: Mutex::default(),
                terminated: Condvar::new(),
                job_thread: Mutex::default(),
                signal: std::sync::atomic::AtomicI32::new(0),
                jobs_tx: Mutex::default(),
            }),
            config: Arc::new(config),
            clock,
            runtime: Some(runtime),
            pool: Arc::new(pool),
            listeners: Arc::default(),
            lifecycle: Mutex::new(Lifecycle::Initialized),
            default_handler: Mutex::new(Arc::new(MemoryBlockHandler::new())),
            stream_handlers: Mutex::default(),
            metadata_log: Mutex::new(None),
            recovered: Mutex::default(),
            checkpointer: Mutex::default(),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            frozen: Mutex::default(),
            frozen_inputs: Mutex::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        // Only `drop` takes the runtime.
        self.runtime
            .as_ref()
            .unwrap_or_else(|| unreachable!("runtime taken before drop"))
    }

    fn check_initialized(&self, action: &'static str) -> Result<()> {
        match *lock(&self.lifecycle) {
            Lifecycle::Initialized => Ok(()),
            Lifecycle::Active => Err(Error::ContextState {
                state: "active",
                action,
            }),
            Lifecycle::Stopped => Err(Error::ContextState {
                state: "stopped",
                action,
            }),
        }
    }

    pub(crate) fn add_input<T: Data>(
        &self,
        name: String,
        kind: InputKind,
        codec: Arc<dyn BlockCodec<T>>,
        kind_name: &'static str,
    ) -> Result<DStream<T>> {
        self.check_initialized("add an input stream")?;
        let id = StreamId(self.graph.state().inputs.len() as u32);
        let lineage = self
            .graph
            .operator_id("input", &format!("{kind_name}:{}", id.0), &[]);
        self.graph.state().inputs.push(InputDef {
            id,
            name: name.clone(),
            kind,
            lineage,
            kind_name,
        });
        let pipe = Pipe {
            branches: vec![Branch {
                source: Source::Input(id),
                stage: Arc::new(DecodeStage { codec }),
            }],
            slide_ms: self.config.batch_interval_ms,
            lineage,
            node: None,
        };
        Ok(DStream::from_input(Arc::clone(&self.graph), pipe, id))
    }

    /// Lines of text from a TCP server at `address` (`host:port`), reconnecting with
    /// back-off (Spark's `socketTextStream`). See [`crate::source`] for the details.
    pub fn socket_text_stream(&self, address: &str) -> Result<DStream<Str>> {
        self.socket_text_stream_with(address, SocketOptions::default())
    }

    /// [`StreamingContext::socket_text_stream`] with options.
    pub fn socket_text_stream_with(
        &self,
        address: &str,
        options: SocketOptions,
    ) -> Result<DStream<Str>> {
        let address = address.to_owned();
        let name = format!("socket_text_stream({address})");
        let launch: crate::source::ReceiverLauncher =
            Box::new(move |shared| Box::pin(socket::run(shared, address, options)));
        self.add_input(
            name,
            InputKind::Receiver(Some(launch)),
            Arc::new(LinesCodec),
            "socket_text_stream",
        )
    }

    /// Lines of the new files of directory `dir` (Spark's `textFileStream`); see the
    /// directory source's rules in [`crate::source`].
    pub fn text_file_stream(&self, dir: impl AsRef<Path>) -> Result<DStream<Str>> {
        let dir = dir.as_ref().to_path_buf();
        let name = format!("text_file_stream({})", dir.display());
        let input = FileInput::new(
            name.clone(),
            dir,
            self.clock.now_ms(),
            self.config.file_stream_remember_ms,
            self.config.invalid_utf8,
        );
        self.add_input(
            name,
            InputKind::Direct(Arc::new(input)),
            Arc::new(LinesCodec),
            "text_file_stream",
        )
    }

    /// One queued batch of records per batch (Spark's `queueStream`, one at a time); an
    /// empty queue gives empty batches. For tests and examples.
    pub fn queue_stream<T>(&self, batches: impl IntoIterator<Item = Vec<T>>) -> Result<DStream<T>>
    where
        T: Data + Serialize + DeserializeOwned,
    {
        let (stream, handle) = self.queue_stream_with_handle()?;
        for b in batches {
            handle.push(b);
        }
        Ok(stream)
    }

    /// A queue stream and a handle to add batches while the context runs.
    pub fn queue_stream_with_handle<T>(&self) -> Result<(DStream<T>, QueueHandle<T>)>
    where
        T: Data + Serialize + DeserializeOwned,
    {
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let name = format!("queue_stream#{}", self.graph.state().inputs.len());
        let input = QueueInput {
            name: name.clone(),
            queue: Arc::clone(&queue),
            handler: Arc::new(MemoryBlockHandler::new()),
            next_seq: AtomicU64::new(0),
        };
        let stream = self.add_input(
            name,
            InputKind::Direct(Arc::new(input)),
            Arc::new(PostcardCodec::<T>::new()),
            "queue_stream",
        )?;
        Ok((stream, QueueHandle { queue }))
    }

    /// The records of a custom [`Receiver`].
    pub fn receiver_stream<R: Receiver>(
        &self,
        name: &str,
        receiver: R,
    ) -> Result<DStream<R::Record>> {
        let codec = receiver.codec();
        self.add_input(
            name.to_owned(),
            InputKind::Receiver(Some(launcher(receiver))),
            codec,
            "receiver_stream",
        )
    }

    /// The union of several streams with the same slide.
    pub fn union<T: Data>(&self, streams: &[DStream<T>]) -> Result<DStream<T>> {
        let (first, rest) = streams.split_first().ok_or_else(|| Error::Graph {
            operator: "union".to_owned(),
            message: "needs at least one stream".to_owned(),
        })?;
        Ok(rest.iter().fold(first.clone(), |acc, s| acc.union(s)))
    }

    /// The handler that stores received blocks of streams without their own (default: in
    /// memory, the ignore durability mode).
    pub fn set_default_block_handler(&self, handler: Arc<dyn ReceivedBlockHandler>) -> Result<()> {
        self.check_initialized("change the block handler")?;
        *lock(&self.default_handler) = handler;
        Ok(())
    }

    /// The handler for one input stream (see [`DStream::input_stream_id`]).
    pub fn set_block_handler(
        &self,
        stream: StreamId,
        handler: Arc<dyn ReceivedBlockHandler>,
    ) -> Result<()> {
        self.check_initialized("change a block handler")?;
        lock(&self.stream_handlers).insert(stream, handler);
        Ok(())
    }

    /// Where the scheduler's decisions are recorded (default: nowhere).
    pub fn set_metadata_log(&self, log: Arc<dyn MetadataLog>) -> Result<()> {
        self.check_initialized("change the metadata log")?;
        *lock(&self.metadata_log) = Some(log);
        Ok(())
    }

    /// Adds a listener.
    pub fn add_listener(&self, listener: Arc<dyn StreamingListener>) {
        self.listeners
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    /// The input streams defined so far: id, name, whether a receiver feeds it (else it is a
    /// direct input), and its kind.
    pub(crate) fn input_streams(&self) -> Vec<(StreamId, String, bool, &'static str)> {
        self.graph
            .state()
            .inputs
            .iter()
            .map(|i| {
                (
                    i.id,
                    i.name.clone(),
                    matches!(i.kind, InputKind::Receiver(_)),
                    i.kind_name,
                )
            })
            .collect()
    }

    /// The pipeline's operators, for a checkpoint's compatibility check (the graph as built
    /// so far, before `start`; the frozen graph after).
    pub fn describe_graph(&self) -> Vec<crate::graph::OperatorInfo> {
        let state = self.graph.state();
        let inputs: Vec<(StreamId, crate::dstream::OperatorId, &'static str)> = state
            .inputs
            .iter()
            .map(|i| (i.id, i.lineage, i.kind_name))
            .collect();
        let outputs = state.outputs.clone();
        drop(state);
        match &*lock(&self.frozen) {
            Some(frozen) => frozen.describe(&lock(&self.frozen_inputs)),
            None => Graph::freeze(outputs).describe(&inputs),
        }
    }

    /// Starts the pipeline: the grid starts now (`zero` = the clock's time); or, for a
    /// context from [`StreamingContext::get_or_create`] that found a checkpoint or a
    /// metadata log, resumes where it left off.
    pub fn start(&self) -> Result<()> {
        if let Some(restore) = lock(&self.recovered).take() {
            return self.start_from(restore);
        }
        let zero = BatchTime::from_millis(self.clock.now_ms());
        self.start_from(Restore {
            zero,
            ..Restore::default()
        })
    }

    /// Starts the pipeline from a restart point: the original grid, pending batches first.
    pub fn start_from(&self, restore: Restore) -> Result<()> {
        self.check_initialized("start")?;
        let (outputs, mut inputs) = {
            let mut state = self.graph.state();
            if let Some(e) = state.errors.drain(..).next() {
                return Err(e);
            }
            state.started = true;
            (
                std::mem::take(&mut state.outputs),
                std::mem::take(&mut state.inputs),
            )
        };
        if outputs.is_empty() {
            return Err(Error::Graph {
                operator: "graph".to_owned(),
                message: "no output operations: nothing would ever run (add print, save_as_text_files or foreach_batch)".to_owned(),
            });
        }
        let graph = Arc::new(Graph::freeze(outputs));
        graph.restore_state(restore.state)?;
        *lock(&self.frozen_inputs) = inputs
            .iter()
            .map(|i| (i.id, i.lineage, i.kind_name))
            .collect();
        *lock(&self.frozen) = Some(Arc::clone(&graph));

        // Input streams: their handlers, receivers and direct inputs.
        let default_handler = Arc::clone(&lock(&self.default_handler));
        let stream_handlers = lock(&self.stream_handlers).clone();
        let mut table = StreamTable::default();
        let mut direct = Vec::new();
        let mut receivers = Vec::new();
        for input in &mut inputs {
            let handler = match &input.kind {
                InputKind::Direct(d) => {
                    direct.push((input.id, Arc::clone(d)));
                    d.handler()
                }
                InputKind::Receiver(launch) => {
                    debug_assert!(launch.is_some());
                    let handler = stream_handlers
                        .get(&input.id)
                        .cloned()
                        .unwrap_or_else(|| Arc::clone(&default_handler));
                    receivers.push(input.id);
                    handler
                }
            };
            table.entries.push(StreamEntry {
                name: input.name.clone(),
                handler,
            });
        }
        let streams = Arc::new(table);
        *lock(&self.shared.direct) = direct
            .iter()
            .map(|(id, d)| (*id, streams.name(*id).to_owned(), Arc::clone(d)))
            .collect();

        // Pending batches of a restart run from the allocations recorded before it.
        let pending_allocations: BTreeMap<BatchTime, Allocation> = restore
            .scheduler
            .pending
            .iter()
            .map(|a| (a.time, a.clone()))
            .collect();
        // Direct inputs continue planning after what the recovered batches read.
        for (id, input) in &direct {
            let mut recovered: Vec<&Allocation> = restore
                .scheduler
                .remembered
                .iter()
                .chain(&restore.scheduler.pending)
                .collect();
            recovered.sort_by_key(|a| a.time);
            let blocks: Vec<StoredBlock> = recovered
                .into_iter()
                .flat_map(|a| a.blocks.get(id).into_iter().flatten().cloned())
                .collect();
            if !blocks.is_empty() {
                input.recovered(restore.zero, &blocks);
            }
        }
        let mut pending_allocations = pending_allocations;
        for a in &restore.scheduler.remembered {
            pending_allocations.insert(a.time, a.clone());
        }
        let remembered_times: Vec<BatchTime> = restore
            .scheduler
            .remembered
            .iter()
            .map(|a| a.time)
            .collect();
        let last_completed = restore
            .scheduler
            .last_generated
            .filter(|_| restore.scheduler.pending.is_empty());
        let metadata_log = lock(&self.metadata_log).clone();
        let scheduler = Scheduler::restore(
            SchedulerConfig {
                interval_ms: self.config.batch_interval_ms,
                zero: restore.zero,
                remember_ms: graph.input_remember_ms,
                receivers: receivers.clone(),
                queued_max: self.config.batches_queued_max,
            },
            restore.scheduler,
        );

        let (stop_tx, stop_rx) = watch::channel(None);
        let mut retained = BTreeMap::new();
        let mut rates = Vec::new();
        let mut launches = Vec::new();
        for input in &mut inputs {
            let InputKind::Receiver(launch) = &mut input.kind else {
                continue;
            };
            let Some(launch) = launch.take() else {
                continue;
            };
            let limiter = Arc::new(RateLimiter::new(
                match (
                    self.config.backpressure_enabled,
                    self.config.backpressure_initial_rate_records_per_sec,
                    self.config.receiver_max_rate_records_per_sec,
                ) {
                    (true, Some(initial), max) => Some(max.map_or(initial, |m| m.min(initial))),
                    (_, _, max) => max,
                },
            ));
            let retain = Arc::new(Semaphore::new(self.config.blocks_retained_max));
            retained.insert(input.id, Arc::clone(&retain));
            rates.push(RateControl {
                stream: input.id,
                limiter: Arc::clone(&limiter),
                max_rate: self.config.receiver_max_rate_records_per_sec,
                estimator: self.config.backpressure_enabled.then(|| {
                    PidRateEstimator::new(
                        self.config.batch_interval_ms,
                        self.config.backpressure_pid_proportional,
                        self.config.backpressure_pid_integral,
                        self.config.backpressure_pid_derivative,
                        self.config.backpressure_min_rate_records_per_sec,
                    )
                }),
            });
            let shared = Arc::new(ReceiverShared {
                stream: input.id,
                name: input.name.clone(),
                config: Arc::clone(&self.config),
                handler: Arc::clone(streams.handler(input.id)),
                next_seq: AtomicU64::new(
                    restore.next_block_seq.get(&input.id).copied().unwrap_or(0),
                ),
                queue: Arc::new(Semaphore::new(self.config.receiver_queue_blocks_max)),
                retained: retain,
                tasks: graph
                    .block_tasks
                    .get(&input.id)
                    .cloned()
                    .unwrap_or_default(),
                pool: Arc::clone(&self.pool),
                events: self.events_tx.clone(),
                stop: stop_rx.clone(),
                limiter,
                info: Mutex::new(ReceiverInfo {
                    stream: input.id,
                    name: input.name.clone(),
                    state: ReceiverState::Starting,
                    records: 0,
                    blocks: 0,
                    bytes: 0,
                    invalid_records: 0,
                    rate_limit_records_per_sec: None,
                    errors: 0,
                    ends_of_stream: 0,
                }),
                listeners: Arc::clone(&self.listeners),
                metadata_log: metadata_log.clone(),
                resume_offset: restore.resume_offsets.get(&input.id).copied(),
            });
            lock(&self.shared.receivers).push(Arc::clone(&shared));
            launches.push((shared, launch));
        }

        // The job thread.
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
        let runner = JobRunner {
            graph: Arc::clone(&graph),
            streams: Arc::clone(&streams),
            pool: Arc::clone(&self.pool),
            runtime: self.runtime().handle().clone(),
            clock: Arc::clone(&self.clock),
            zero: restore.zero,
            listeners: Arc::clone(&self.listeners),
            events: self.events_tx.clone(),
            rates,
            shared: Arc::clone(&self.shared),
            last_completed,
            checkpointer: lock(&self.checkpointer).clone(),
        };
        let job_thread = std::thread::Builder::new()
            .name("ember-jobs".to_owned())
            .spawn(move || runner.run(jobs_rx))
            .map_err(|source| Error::Runtime {
                what: "the job thread",
                source,
            })?;
        *lock(&self.shared.job_thread) = Some(job_thread.thread().id());
        *lock(&self.shared.jobs_tx) = Some(jobs_tx.clone());

        // The driver.
        let events = lock(&self.events_rx).take().ok_or(Error::ContextState {
            state: "started",
            action: "start again",
        })?;
        let prefetcher = match self.config.direct_prefetch_blocks_max {
            n if n > 0 && direct.iter().any(|(_, d)| d.prefetches()) => {
                Some(crate::driver::Prefetcher::start(n)?)
            }
            _ => None,
        };
        let driver = Driver {
            prefetcher,
            scheduler,
            clock: Arc::clone(&self.clock),
            events,
            jobs: Some(jobs_tx),
            stop_receivers: stop_tx,
            direct,
            graph,
            streams,
            retained,
            metadata_log: metadata_log.unwrap_or_else(|| Arc::new(NoMetadataLog)),
            listeners: Arc::clone(&self.listeners),
            graceful_stop_timeout_ms: self.config.effective_graceful_stop_timeout_ms(),
            submitted: pending_allocations
                .keys()
                .filter(|t| !remembered_times.contains(t))
                .map(|t| (*t, self.clock.now_ms()))
                .collect(),
            allocations: pending_allocations,
            first_error: None,
            stop_deadline: None,
        };
        let shared = Arc::clone(&self.shared);
        let rt = self.runtime();
        let mut receiver_tasks = Vec::new();
        for (shared_r, launch) in launches {
            let events = self.events_tx.clone();
            receiver_tasks.push(rt.spawn(async move {
                let stream = shared_r.stream;
                let result = launch(Arc::clone(&shared_r)).await;
                match &result {
                    Ok(()) => shared_r.set_state(ReceiverState::Stopped),
                    Err(e) => shared_r.set_state(ReceiverState::Failed {
                        error: e.to_string(),
                    }),
                }
                let _ = events.send(DriverEvent::ReceiverStopped {
                    stream,
                    error: result.err(),
                });
            }));
        }
        rt.spawn(async move {
            let error = driver.run().await;
            for task in receiver_tasks {
                task.abort();
            }
            lock(&shared.jobs_tx).take();
            // Wait for the job thread to finish the batch it is running.
            let joined = tokio::task::spawn_blocking(move || job_thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the job thread panicked");
            }
            shared.terminate(error);
        });
        *lock(&self.lifecycle) = Lifecycle::Active;
        tracing::info!(
            zero = restore.zero.as_millis(),
            interval_ms = self.config.batch_interval_ms,
            partitions = self.config.partitions,
            "streaming context started"
        );
        Ok(())
    }

    /// Asks the context to stop without waiting (safe from listeners and output operations).
    pub fn request_stop(&self, graceful: bool) {
        let _ = self.events_tx.send(DriverEvent::Stop { graceful });
    }

    /// A handle that can request a stop from anywhere (another thread, a listener).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            events: self.events_tx.clone(),
        }
    }

    /// Stops the context and waits until it has stopped. Graceful: first process everything
    /// received (bounded by `graceful_stop_timeout_ms`). Returns the context's error, if it
    /// failed.
    pub fn stop(&self, graceful: bool) -> Result<()> {
        match *lock(&self.lifecycle) {
            Lifecycle::Initialized => {
                *lock(&self.lifecycle) = Lifecycle::Stopped;
                return Ok(());
            }
            Lifecycle::Stopped => return self.await_termination(),
            Lifecycle::Active => {}
        }
        self.request_stop(graceful);
        self.await_termination()
    }

    /// Waits until the context stops (by `stop`, a signal, or a failure); returns its error.
    pub fn await_termination(&self) -> Result<()> {
        self.await_termination_timeout(None).map(drop)
    }

    /// Waits at most `timeout`; `Ok(true)` if the context stopped.
    pub fn await_termination_timeout(&self, timeout: Option<std::time::Duration>) -> Result<bool> {
        if *lock(&self.lifecycle) == Lifecycle::Initialized {
            return Err(Error::ContextState {
                state: "not started",
                action: "await termination",
            });
        }
        if *lock(&self.shared.job_thread) == Some(std::thread::current().id()) {
            return Err(Error::ContextState {
                state: "running this batch",
                action: "wait for termination from an output operation or listener (use request_stop)",
            });
        }
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut t = lock(&self.shared.termination);
        while !t.done {
            match deadline {
                None => {
                    t = self
                        .shared
                        .terminated
                        .wait(t)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    t = self
                        .shared
                        .terminated
                        .wait_timeout(t, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        *lock(&self.lifecycle) = Lifecycle::Stopped;
        match t.error.take() {
            Some(e) => {
                t.error_reported = true;
                Err(e)
            }
            None if t.error_reported => Err(Error::ContextState {
                state: "stopped with an error (already returned)",
                action: "report it again",
            }),
            None => Ok(true),
        }
    }

    /// Stops gracefully on SIGINT or SIGTERM (a second signal stops immediately).
    pub fn stop_on_signals(&self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let events = self.events_tx.clone();
        let shared = Arc::clone(&self.shared);
        let _guard = self.runtime().enter();
        let mut int = signal(SignalKind::interrupt()).map_err(|source| Error::Runtime {
            what: "the SIGINT handler",
            source,
        })?;
        let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Runtime {
            what: "the SIGTERM handler",
            source,
        })?;
        self.runtime().spawn(async move {
            let mut graceful = true;
            loop {
                let which = tokio::select! {
                    s = int.recv() => s.map(|()| ("SIGINT", 2)),
                    s = term.recv() => s.map(|()| ("SIGTERM", 15)),
                };
                let Some((name, number)) = which else { return };
                let _ = shared.signal.compare_exchange(
                    0,
                    number,
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                );
                tracing::warn!(signal = name, graceful, "stopping on signal");
                if events.send(DriverEvent::Stop { graceful }).is_err() {
                    return;
                }
                graceful = false;
            }
        });
        Ok(())
    }

    /// The signal (2 for SIGINT, 15 for SIGTERM) that stopped the context, if one did.
    pub fn stopped_by_signal(&self) -> Option<i32> {
        match self.shared.signal.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    /// The most recent completed batches (up to `metrics_batches_retained_max`).
    pub fn batches(&self) -> Vec<BatchInfo> {
        lock(&self.shared.batches).iter().cloned().collect()
    }

    /// Every receiver's counters and state.
    pub fn receivers(&self) -> Vec<ReceiverInfo> {
        lock(&self.shared.receivers)
            .iter()
            .map(|r| {
                let mut info = lock(&r.info).clone();
                info.rate_limit_records_per_sec = r.limiter.rate();
                info
            })
            .collect()
    }

    /// Invalid records counted by direct inputs (the directory source), by stream name.
    pub fn direct_input_invalid_records(&self) -> Vec<(String, u64)> {
        lock(&self.shared.direct)
            .iter()
            .map(|(_, name, d)| (name.clone(), d.invalid_records()))
            .collect()
    }

    /// Every stateful operator's state, taken on the job thread between two batches (after
    /// the last completed one), so the snapshots form a consistent cut.
    pub fn state_snapshot(&self) -> Result<Vec<StateSnapshot>> {
        let (reply, rx) = oneshot::channel();
        let sent = lock(&self.shared.jobs_tx)
            .as_ref()
            .is_some_and(|j| j.send(JobMsg::Snapshot { reply }).is_ok());
        if !sent {
            return Err(Error::ContextState {
                state: "not running",
                action: "snapshot state",
            });
        }
        rx.blocking_recv().map_err(|_| Error::ContextState {
            state: "stopping",
            action: "snapshot state",
        })?
    }
}

impl Drop for StreamingContext {
    fn drop(&mut self) {
        if *lock(&self.lifecycle) == Lifecycle::Active {
            self.request_stop(false);
            let _ = self.await_termination_timeout(Some(std::time::Duration::from_secs(30)));
        }
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                // Wait for the tasks to be dropped: aborted receivers still hold the
                // stream handlers and the metadata log, whose locks a context opened next
                // on the same directories needs.
                rt.shutdown_timeout(std::time::Duration::from_secs(10));
            }
        }
    }
}

/// Requests a stop from anywhere.
#[derive(Clone, Debug)]
pub struct StopHandle {
    events: mpsc::UnboundedSender<DriverEvent>,
}

impl StopHandle {
    /// Asks the context to stop (graceful: process what was received first).
    pub fn request_stop(&self, graceful: bool) {
        let _ = self.events.send(DriverEvent::Stop { graceful });
    }
}
