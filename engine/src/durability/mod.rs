//! Durability and recovery: per-stream durability modes, the driver metadata log,
//! checkpoints, cleanup, and restart by recomputation
//! ([`crate::StreamingContext::get_or_create`]).
//!
//! # Choosing a mode (per input stream, [`Durability`])
//!
//! | mode | a block is acknowledged once | survives | costs |
//! |---|---|---|---|
//! | [`Durability::Ignore`] | it is in memory | nothing (loss is counted per batch) | nothing |
//! | [`Durability::Wal`] | its WAL record is synced (group commit) | driver crash, machine reboot | one fsync per group |
//! | [`Durability::WalUrl`] | the object holding its WAL record was put (group commit, conditional put) | loss of the whole machine | one PUT per group |
//! | [`Durability::Replicated`] | it is in memory here and on `replication` executors | driver crash (not a crash of every replica) | one network round trip |
//!
//! Direct inputs (the directory source, Kafka) need no mode: a batch records what it read
//! and recovery reads it again (*upstream replay*).
//!
//! # Layout of a checkpoint directory
//!
//! ```text
//! DIR/checkpoints/   checkpoint-<seq>.ckpt and state-*.snap (the `checkpoint` crate)
//! DIR/metadata/      the driver metadata log (a `wal` log; records in [`metadata`])
//! ```
//! WAL-mode streams keep their data log in `<Wal::dir>/stream-<id>/` (or, on object
//! storage, under `<WalUrl::url>/stream-<id>/`). A checkpoint location on object storage
//! ([`crate::StreamingContext::get_or_create_at`] with `s3://bucket/prefix`) has the same
//! two parts as key prefixes: `<url>/checkpoints/` and `<url>/metadata/`.
//!
//! # What happens at run time
//!
//! - A receiver's block is stored by the stream's handler, then recorded in the metadata
//!   log; only then does the store resolve (and the source get its acknowledgement).
//! - A batch's allocation is recorded before the batch runs.
//! - Every `checkpoint_interval_batches` batches, after the batch completed and before the
//!   next runs: state snapshots at that batch, a cut of the metadata log, a checkpoint
//!   published atomically; then cleanup below what every retained checkpoint references:
//!   metadata log and data WAL segments by Lsn, replicas of cleaned blocks by batch time.
//!
//! # Restart: the decision table
//!
//! [`crate::StreamingContext::get_or_create`] decides with [`RestartPlan::load`]:
//!
//! | checkpoints | metadata log | decision |
//! |---|---|---|
//! | none | empty | first start: grid from now, write `Started` |
//! | none | has records | crash before the first checkpoint: replay the whole log, no state, re-run every batch it allocated |
//! | newest valid (older damaged ones skipped, named in a warning) | reaches the checkpoint's cut | restore its state snapshots, replay from the cut, re-run the batches after the checkpoint's batch (stateless graphs: only those not completed) |
//! | valid | does not reach the cut | refuse, naming the Lsns (the log was truncated or replaced) |
//! | valid, graph changed incompatibly | any | refuse, listing every change |
//! | all damaged | any | refuse, listing each checkpoint and why |
//!
//! After the re-runs, the grid continues after the last batch generated: batches missed
//! while down are generated at their original times, at most `batches_queued_max` queued
//! at once (the catch-up cap); blocks recovered unallocated go to the first of them.

pub(crate) mod handlers;
pub mod metadata;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use checkpoint::{
    BatchInputs, BlockLocation, BlockRef, Checkpoint, CheckpointParts, CheckpointStore,
    GraphDescription, InputData, OperatorDesc, SourcePosition, StateDesc, StateRef, StreamInput,
    WalTruncation,
};
use wal::{Lsn, SyncPolicy};

pub use handlers::{
    ReplicaLocator, ReplicatedBlockHandler, WAL_RECORD_HEADER_LEN, WalBlockHandler,
};
pub use metadata::{LogRecord, Mirror, StreamDesc, WalMetadataLog};

use crate::block::{StoredBlock, StreamId};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::context::{Restore, StreamingContext};
use crate::dstream::node::lock;
use crate::dstream::state::StateSnapshot;
use crate::error::{Error, Result};
use crate::graph::{Graph, OperatorInfo};
use crate::handler::{MemoryBlockHandler, ReceivedBlockHandler};
use crate::scheduler::{Allocation, RestoredState};
use crate::time::BatchTime;

/// Opens (recovering) a local log in `dir` with the default limits and `sync`; an error
/// names `what` was being opened and where.
pub(crate) fn open_local_wal(dir: &Path, sync: SyncPolicy, what: &'static str) -> Result<wal::Wal> {
    wal::Wal::open_dir(
        dir,
        wal::Config {
            sync_policy: sync,
            ..wal::Config::default()
        },
    )
    .map_err(|source| Error::Wal {
        what,
        location: dir.display().to_string(),
        source,
    })
}

/// How one input stream's received blocks survive failures (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In memory only; a lost block is counted in the batch's `lost_blocks`/`lost_records`
    /// and logged with its stream and batch.
    Ignore,
    /// Appended to a write-ahead log in `dir/stream-<id>/`, synced under `sync`, before the
    /// acknowledgement.
    Wal {
        /// The directory holding the streams' data logs.
        dir: PathBuf,
        /// When an append counts as durable (group commit by default).
        sync: SyncPolicy,
    },
    /// Appended to a write-ahead log on object storage (`s3://bucket/prefix`,
    /// `memory://name/prefix`, `hdfs://...`; see `wal::objstore`), one log per stream under
    /// `<url>/stream-<id>/`; an append is acknowledged once its object's conditional put
    /// was. Build it with [`Durability::wal_at`], which maps `file://` and plain paths to
    /// [`Durability::Wal`].
    WalUrl {
        /// The location holding the streams' data logs.
        url: wal::objstore::StorageUrl,
        /// Connection settings beyond the environment's `AWS_*` variables (timeouts and
        /// retries; S3 settings that override the environment).
        options: wal::objstore::ObjectOptions,
        /// When an append counts as durable (group commit by default: one object per
        /// flush window).
        sync: SyncPolicy,
    },
    /// Stored in memory here and on `replication` of `executors` (`host:port` of
    /// `ember executor` processes) before the acknowledgement.
    Replicated {
        /// The executors.
        executors: Vec<String>,
        /// How many executors must hold each block (at least 1).
        replication: usize,
    },
}

impl Durability {
    /// A WAL in `dir` with group commit.
    pub fn wal(dir: impl Into<PathBuf>) -> Self {
        Durability::Wal {
            dir: dir.into(),
            sync: SyncPolicy::GROUP_COMMIT_DEFAULT,
        }
    }

    /// A WAL at a storage URL with group commit: a local directory for `file://` and
    /// plain paths, else an object store. Fails on a URL that does not parse (the error
    /// names it); whether the storage is reachable is checked when the context opens.
    pub fn wal_at(url: &str) -> std::result::Result<Self, wal::Error> {
        Ok(Self::wal_at_url(wal::objstore::StorageUrl::parse(url)?))
    }

    /// [`Durability::wal_at`] for a parsed URL.
    pub fn wal_at_url(url: wal::objstore::StorageUrl) -> Self {
        match url {
            wal::objstore::StorageUrl::Local(dir) => Durability::wal(dir),
            url => Durability::WalUrl {
                url,
                options: wal::objstore::ObjectOptions::default(),
                sync: SyncPolicy::GROUP_COMMIT_DEFAULT,
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Durability::Ignore => "ignore".to_owned(),
            Durability::Wal { dir, .. } => format!("wal {}", dir.display()),
            Durability::WalUrl { url, .. } => format!("wal {url}"),
            Durability::Replicated {
                executors,
                replication,
            } => format!("replicated x{replication} on {}", executors.join(",")),
        }
    }
}

/// Durability and checkpointing settings of a checkpointed context.
#[derive(Clone, Debug)]
pub struct DurabilityConfig {
    /// The mode of every receiver stream not in `streams`.
    pub default: Durability,
    /// Per-stream modes (stream ids are assigned in creation order).
    pub streams: BTreeMap<StreamId, Durability>,
    /// A checkpoint (with state snapshots) every this many batches. Default 10.
    pub checkpoint_interval_batches: u64,
    /// Checkpoints kept for fallback. Default 3.
    pub checkpoints_retained: usize,
    /// When a metadata log append counts as durable. Default: group commit.
    pub metadata_sync: SyncPolicy,
    /// The block store settings of replicated streams (`peer_replicas` is set from the
    /// mode's `replication`).
    pub blockstore: blockstore::Config,
    /// Connection settings of a checkpoint location on object storage
    /// ([`StreamingContext::get_or_create_at`]), beyond the environment's `AWS_*`
    /// variables. (A [`Durability::WalUrl`] stream carries its own.)
    pub object_options: wal::objstore::ObjectOptions,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            default: Durability::Ignore,
            streams: BTreeMap::new(),
            checkpoint_interval_batches: 10,
            checkpoints_retained: 3,
            metadata_sync: SyncPolicy::GROUP_COMMIT_DEFAULT,
            blockstore: blockstore::Config::default(),
            object_options: wal::objstore::ObjectOptions::default(),
        }
    }
}

impl DurabilityConfig {
    /// Every stream in `mode`.
    pub fn new(mode: Durability) -> Self {
        DurabilityConfig {
            default: mode,
            ..DurabilityConfig::default()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.checkpoint_interval_batches == 0 {
            return Err(Error::config(
                "checkpoint_interval_batches",
                "must be at least 1",
            ));
        }
        if self.checkpoints_retained == 0 {
            return Err(Error::config("checkpoints_retained", "must be at least 1"));
        }
        for mode in std::iter::once(&self.default).chain(self.streams.values()) {
            if let Durability::Replicated {
                executors,
                replication,
            } = mode
                && (*replication == 0 || *replication > executors.len())
            {
                return Err(Error::config(
                    "durability.replication",
                    format!(
                        "replication {replication} needs between 1 and the {} executors given ({})",
                        executors.len(),
                        executors.join(",")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Where checkpoints live inside a checkpoint location.
const CHECKPOINTS: &str = "checkpoints";
/// Where the metadata log lives inside a checkpoint location.
const METADATA: &str = "metadata";

/// The checkpoint directory's parts.
pub fn checkpoints_dir(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINTS)
}

/// The metadata log's directory.
pub fn metadata_dir(dir: &Path) -> PathBuf {
    dir.join(METADATA)
}

/// A checkpoint location for messages: a local directory as its path, else its URL.
fn location_name(location: &wal::objstore::StorageUrl) -> String {
    match location {
        wal::objstore::StorageUrl::Local(dir) => dir.display().to_string(),
        url => url.to_string(),
    }
}

/// Where a WAL-mode stream keeps its data log.
pub fn stream_wal_dir(dir: &Path, stream: StreamId) -> PathBuf {
    dir.join(format!("stream-{}", stream.0))
}

/// Called by the job thread after every completed batch (internal seam).
pub(crate) trait BatchCheckpointer: Send + Sync + 'static {
    fn batch_completed(&self, time: BatchTime, graph: &Graph) -> Result<()>;
}

/// The graph description a checkpoint stores, from the engine's operator list.
pub fn graph_description(ops: &[OperatorInfo]) -> GraphDescription {
    GraphDescription {
        operators: ops
            .iter()
            .map(|op| OperatorDesc {
                id: op.id.to_string(),
                kind: op.kind.clone(),
                name: op.kind.clone(),
                parents: op.parents.iter().map(ToString::to_string).collect(),
                input_stream: op.input_stream.map(|s| s.0),
                output: op.output,
                state: op.state.as_ref().map(|s| StateDesc {
                    key_type: s.key_type.clone(),
                    state_type: s.state_type.clone(),
                    version: s.format_version,
                }),
            })
            .collect(),
    }
}

/// What a restart would do, computed from the checkpoint directory alone (what
/// `get_or_create` acts on and `ember checkpoint inspect` prints).
#[derive(Debug)]
pub struct RestartPlan {
    /// The checkpoint used: name and the batch it was taken after.
    pub checkpoint: Option<(String, BatchTime)>,
    /// Newer checkpoints skipped, with why.
    pub skipped: Vec<String>,
    /// The metadata log's view after replay.
    pub mirror: Mirror,
    /// Records replayed and the first Lsn.
    pub replayed_records: u64,
    /// Batches to re-run, oldest first.
    pub rerun: Vec<Allocation>,
    /// Earlier batches kept for windows (not re-run).
    pub remembered: Vec<Allocation>,
    /// The state to restore, decoded.
    pub state: Vec<StateSnapshot>,
    /// Whether the graph that wrote the log had stateful operators.
    pub stateful: bool,
}

impl RestartPlan {
    /// Reads the newest valid checkpoint (with its snapshots) and replays the metadata
    /// log; `stateful` says whether completed batches after the checkpoint must re-run
    /// (they must when state is restored from the checkpoint). `wal` is the opened log.
    fn compute(
        restored: Option<&checkpoint::Restored>,
        replayed: metadata::Replayed,
        stateful: bool,
    ) -> Result<RestartPlan> {
        let mirror = replayed.mirror;
        let checkpoint_time = replayed.checkpoint_time;
        let mut state = Vec::new();
        if let Some(r) = restored {
            for (op, body) in &r.state {
                let snap: StateSnapshot =
                    postcard::from_bytes(body).map_err(|e| Error::Recovery {
                        location: r.display_name.clone(),
                        message: format!("state snapshot of operator {op} does not decode: {e}"),
                    })?;
                state.push(snap);
            }
        }
        let (mut rerun, mut remembered) = (Vec::new(), Vec::new());
        for (t, a) in &mirror.allocations {
            let after = checkpoint_time.is_none_or(|c| *t > c);
            let again = after && (stateful || !mirror.completed.contains(t));
            if again {
                rerun.push(a.clone());
            } else {
                remembered.push(a.clone());
            }
        }
        Ok(RestartPlan {
            checkpoint: restored.map(|r| {
                (
                    r.display_name.clone(),
                    checkpoint_time.unwrap_or(BatchTime::from_millis(r.checkpoint.batch_time_ms())),
                )
            }),
            skipped: restored
                .map(|r| {
                    r.skipped
                        .iter()
                        .map(|s| format!("{}: {}", s.name, s.error))
                        .collect()
                })
                .unwrap_or_default(),
            replayed_records: replayed.records,
            mirror,
            rerun,
            remembered,
            state,
            stateful,
        })
    }

    /// Reads a checkpoint directory without changing it and says what a restart would do.
    pub fn inspect(dir: &Path) -> Result<RestartPlan> {
        let ckpt_dir = checkpoints_dir(dir);
        let restored = if ckpt_dir.exists() {
            let backend = checkpoint::DirBackend::local_existing(&ckpt_dir)
                .map_err(|e| Error::io("open checkpoint directory", &ckpt_dir, e))?;
            let store =
                CheckpointStore::open_read_only(Arc::new(backend), checkpoint::Config::default())?;
            store.restore()?
        } else {
            None
        };
        let meta = metadata_dir(dir);
        let store = wal::store::DirSegmentStore::new(Arc::new(
            wal::fs::LocalDir::open(&meta)
                .map_err(|e| Error::io("open metadata log directory", &meta, e))?,
        ));
        let log = wal::Wal::open_read_only(Arc::new(store), wal::Config::default()).map_err(
            |source| Error::Wal {
                what: "open the metadata log",
                location: meta.display().to_string(),
                source,
            },
        )?;
        let from = restored
            .as_ref()
            .map(|r| Lsn::new(r.checkpoint.parts().metadata_log_lsn.get() + 1));
        let replayed = metadata::replay(&log, from)?;
        // The checkpoint's graph, or (none yet) what the log recorded at the last start.
        let stateful = restored.as_ref().map_or_else(
            || replayed.stateful.unwrap_or(false),
            |r| {
                r.checkpoint
                    .parts()
                    .graph
                    .operators
                    .iter()
                    .any(|o| o.state.is_some())
            },
        );
        Self::compute(restored.as_ref(), replayed, stateful)
    }

    /// The plan as text, for people: what a restart re-runs and where each batch's data
    /// comes from.
    pub fn describe(&self, now_ms: u64) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let m = &self.mirror;
        match &self.checkpoint {
            Some((name, t)) => {
                let _ = writeln!(out, "checkpoint: {name} (taken after batch {t})");
            }
            None => {
                let _ = writeln!(
                    out,
                    "checkpoint: none (a restart replays the whole metadata log)"
                );
            }
        }
        for s in &self.skipped {
            let _ = writeln!(out, "  skipped: {s}");
        }
        match m.zero {
            Some(z) => {
                let _ = writeln!(out, "grid: zero {z} ms, interval {} ms", m.interval_ms);
            }
            None => {
                let _ = writeln!(out, "grid: not started (a restart is a first start)");
            }
        }
        let _ = writeln!(
            out,
            "metadata log: {} records replayed",
            self.replayed_records
        );
        for (id, s) in &m.streams {
            let _ = writeln!(out, "stream {id} `{}`: {}", s.name, s.mode);
        }
        let _ = writeln!(
            out,
            "state: {} operator snapshot(s) restored{}",
            self.state.len(),
            self.state
                .first()
                .map(|s| format!(" at batch {}", s.taken_at))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "batches to recompute: {}", self.rerun.len());
        for a in &self.rerun {
            let done = if m.completed.contains(&a.time) {
                "completed before the crash, re-run for state"
            } else {
                "not completed"
            };
            let _ = writeln!(out, "  batch {} ({} records, {done})", a.time, a.records());
            for (stream, blocks) in &a.blocks {
                let _ = writeln!(
                    out,
                    "    stream {stream}: {} block(s) from {}",
                    blocks.len(),
                    self.source_of(*stream, blocks)
                );
            }
        }
        let _ = writeln!(
            out,
            "remembered batches (for windows, not re-run): {}",
            self.remembered.len()
        );
        let _ = writeln!(
            out,
            "unallocated blocks (go to the first new batch): {} ({} records)",
            m.unallocated.len(),
            m.unallocated.values().map(|b| b.records).sum::<u64>()
        );
        if let (Some(z), Some(last)) = (m.zero, m.last_generated) {
            let interval = m.interval_ms.max(1);
            let missed = now_ms.saturating_sub(last.as_millis()) / interval;
            let _ = writeln!(
                out,
                "last batch generated: {last}; batches missed until now on the grid (zero {z}): {missed}"
            );
        }
        for (stream, end) in &m.resume_offsets {
            let _ = writeln!(out, "stream {stream}: source resumes at position {end}");
        }
        out
    }

    fn source_of(&self, stream: StreamId, blocks: &[StoredBlock]) -> String {
        let mode = self
            .mirror
            .streams
            .get(&stream)
            .map_or("unknown", |s| s.mode.as_str());
        if mode.starts_with("wal") {
            let lsns: Vec<String> = blocks
                .iter()
                .filter_map(WalBlockHandler::locator_lsn)
                .map(|l| l.to_string())
                .collect();
            format!("WAL ({mode}), Lsns {}", lsns.join(","))
        } else if mode.starts_with("replicated") {
            let mut peers: Vec<String> = blocks
                .iter()
                .filter_map(ReplicatedBlockHandler::decode_locator)
                .flat_map(|l| l.peers)
                .collect();
            peers.sort();
            peers.dedup();
            format!("replica on {}", peers.join(","))
        } else if mode.starts_with("direct") {
            format!("replay ({mode})")
        } else {
            format!("memory only ({mode}): lost after a restart, counted as lost")
        }
    }
}

/// A stream's durable part, for the checkpointer.
enum StreamStore {
    Memory,
    Wal(Arc<WalBlockHandler>),
    Replicated(Arc<ReplicatedBlockHandler>),
    /// A direct input, by kind: re-read from its source.
    Direct(&'static str),
}

/// Writes checkpoints and cleans up below them (see the module docs).
struct Checkpointer {
    store: CheckpointStore,
    log: Arc<WalMetadataLog>,
    zero: BatchTime,
    interval_ms: u64,
    every: u64,
    graph: GraphDescription,
    stateful: bool,
    streams: BTreeMap<StreamId, StreamStore>,
    runtime: tokio::runtime::Handle,
    /// The oldest batch a retained checkpoint needs, after the last publish.
    horizon: Mutex<Option<BatchTime>>,
}

impl Checkpointer {
    fn block_ref(&self, b: &StoredBlock) -> BlockRef {
        let location = match self.streams.get(&b.id.stream) {
            Some(StreamStore::Wal(_)) => match WalBlockHandler::locator_lsn(b) {
                Some(lsn) => BlockLocation::Wal {
                    log_stream: b.id.stream.0,
                    lsn,
                },
                None => BlockLocation::MemoryOnly,
            },
            Some(StreamStore::Replicated(_)) => BlockLocation::Replicas(
                ReplicatedBlockHandler::decode_locator(b)
                    .map(|l| l.peers)
                    .unwrap_or_default(),
            ),
            _ => BlockLocation::MemoryOnly,
        };
        BlockRef {
            seq: b.id.seq,
            records: b.records,
            len_bytes: b.len_bytes,
            location,
        }
    }

    fn inputs(&self, blocks: &BTreeMap<StreamId, Vec<StoredBlock>>) -> Vec<StreamInput> {
        blocks
            .iter()
            .map(|(stream, bs)| StreamInput {
                stream: stream.0,
                data: match self.streams.get(stream) {
                    // Direct inputs are re-read from their source; their locators are the
                    // input's own (file path, offsets) and stay in the metadata log.
                    // (Other direct inputs, e.g. Kafka, add their form here: offset ranges.)
                    Some(StreamStore::Direct(kind)) if kind.contains("file") => InputData::Files(
                        bs.iter()
                            .map(|b| {
                                crate::source::file::locator_path(b)
                                    .map_or_else(|| b.id.to_string(), |p| p.display().to_string())
                            })
                            .collect(),
                    ),
                    _ => InputData::Blocks(bs.iter().map(|b| self.block_ref(b)).collect()),
                },
            })
            .collect()
    }

    fn checkpoint(&self, time: BatchTime, graph: &Graph) -> Result<()> {
        let snapshots = graph.snapshot_state(time)?;
        let mut state_refs: Vec<StateRef> = Vec::new();
        for s in &snapshots {
            let body = postcard::to_stdvec(s).map_err(|e| Error::State {
                operator: s.operator.to_string(),
                message: format!("cannot encode the snapshot: {e}"),
            })?;
            state_refs.push(self.store.put_snapshot(
                &s.operator.to_string(),
                time.as_millis(),
                &body,
            )?);
        }
        // Floors first: a block stored after this gets a higher Lsn (see truncation_floor).
        let floors: BTreeMap<StreamId, Lsn> = self
            .streams
            .iter()
            .filter_map(|(s, st)| match st {
                StreamStore::Wal(h) => Some((*s, h.truncation_floor())),
                _ => None,
            })
            .collect();
        let prune = *lock(&self.horizon);
        let (cut_lsn, mirror) = self.log.cut(time, prune)?;
        let last = mirror.last_generated.unwrap_or(time).max(time);
        let (mut pending, mut remembered) = (Vec::new(), Vec::new());
        // Batches a restart from this checkpoint reads: those after it, and those windows
        // still look back to. Older ones are not referenced, which moves the cleanup
        // horizon (and the mirror's pruning) forward.
        let window_start = time.saturating_minus_millis(graph.input_remember_ms);
        for (t, a) in mirror.allocations.range(window_start.plus_millis(1)..) {
            let batch = BatchInputs {
                batch_time_ms: t.as_millis(),
                inputs: self.inputs(&a.blocks),
            };
            if *t > time && (self.stateful || !mirror.completed.contains(t)) {
                pending.push(batch);
            } else {
                remembered.push(batch);
            }
        }
        let mut unallocated: BTreeMap<StreamId, Vec<StoredBlock>> = BTreeMap::new();
        for b in mirror.unallocated.values() {
            unallocated.entry(b.id.stream).or_default().push(b.clone());
        }
        let data_wal_truncation = floors
            .iter()
            .map(|(s, floor)| {
                let referenced = mirror
                    .allocations
                    .values()
                    .flat_map(|a| a.blocks.get(s).into_iter().flatten())
                    .chain(mirror.unallocated.values().filter(|b| b.id.stream == *s))
                    .filter_map(WalBlockHandler::locator_lsn)
                    .min();
                WalTruncation {
                    stream: s.0,
                    truncate_before: referenced.map_or(*floor, |r| r.min(*floor)).max(Lsn::FIRST),
                }
            })
            .collect();
        let parts = CheckpointParts {
            batch_time_ms: last.as_millis(),
            batch_interval_ms: self.interval_ms,
            zero_time_ms: self.zero.as_millis(),
            metadata_log_lsn: Lsn::new(cut_lsn.get() - 1),
            pending_batches: pending,
            remembered_batches: remembered,
            unallocated: self.inputs(&unallocated),
            data_wal_truncation,
            state_snapshots: state_refs,
            graph: self.graph.clone(),
            source_positions: mirror
                .resume_offsets
                .iter()
                .map(|(s, end)| SourcePosition {
                    stream: s.0,
                    position: [("resume_offset".to_owned(), end.to_string())].into(),
                })
                .collect(),
        };
        let published = self.store.publish(&Checkpoint::new(parts)?)?;
        tracing::info!(
            batch = %time,
            checkpoint = %published.name,
            metadata_lsn = cut_lsn.get(),
            "checkpoint published"
        );
        self.cleanup()
    }

    /// Deletes what no retained checkpoint needs: metadata log and data WAL segments by
    /// Lsn, replicas of cleaned blocks by batch time.
    fn cleanup(&self) -> Result<()> {
        let Some(refs) = self.store.references() else {
            return Ok(());
        };
        let horizon = BatchTime::from_millis(refs.oldest_batch_time_ms);
        *lock(&self.horizon) = Some(horizon);
        self.log.prune_before(horizon);
        self.log
            .truncate_before(refs.metadata_log_truncate_before)?;
        let mirror = self.log.mirror();
        for (stream, st) in &self.streams {
            match st {
                StreamStore::Wal(h) => {
                    // The declared point covers every retained checkpoint; blocks recorded
                    // since the last cut are protected by the floor.
                    if let Some(point) = refs.data_wal_truncation_point(stream.0) {
                        let floor = h.truncation_floor();
                        let live = mirror
                            .allocations
                            .values()
                            .flat_map(|a| a.blocks.get(stream).into_iter().flatten())
                            .chain(
                                mirror
                                    .unallocated
                                    .values()
                                    .filter(|b| b.id.stream == *stream),
                            )
                            .filter_map(WalBlockHandler::locator_lsn)
                            .min()
                            .unwrap_or(floor);
                        let at = point.min(floor).min(live);
                        h.wal().truncate_before(at).map_err(|source| Error::Wal {
                            what: "truncate a data WAL",
                            location: h.wal().location().to_owned(),
                            source,
                        })?;
                    }
                }
                StreamStore::Replicated(h) => {
                    let needed: std::collections::BTreeSet<_> = mirror
                        .allocations
                        .values()
                        .flat_map(|a| a.blocks.values().flatten())
                        .chain(mirror.unallocated.values())
                        .map(|b| b.id)
                        .collect();
                    self.runtime.block_on(h.purge(|b| needed.contains(&b.id)))?;
                }
                StreamStore::Memory | StreamStore::Direct(_) => {}
            }
        }
        Ok(())
    }
}

impl BatchCheckpointer for Checkpointer {
    fn batch_completed(&self, time: BatchTime, graph: &Graph) -> Result<()> {
        let k = time.as_millis().saturating_sub(self.zero.as_millis()) / self.interval_ms;
        if !k.is_multiple_of(self.every) {
            return Ok(());
        }
        self.checkpoint(time, graph)
    }
}

impl StreamingContext {
    /// Opens a checkpointed context (Spark's `getOrCreate`): builds the graph with
    /// `build` (on every start: the graph comes from code, the checkpoint holds data
    /// only), then, if `checkpoint_dir` holds a checkpoint or a metadata log, prepares a
    /// restart: newest valid checkpoint (falling back past damaged ones), graph
    /// compatibility check (an error lists every change), metadata log replay, state
    /// restore. [`StreamingContext::start`] then re-runs the batches the crash lost, on
    /// their original grid, and resumes. See the module docs for the decision table.
    pub fn get_or_create(
        checkpoint_dir: impl AsRef<Path>,
        config: Config,
        durability: DurabilityConfig,
        build: impl FnOnce(&StreamingContext) -> Result<()>,
    ) -> Result<StreamingContext> {
        Self::get_or_create_with_clock(
            checkpoint_dir,
            config,
            durability,
            Arc::new(SystemClock),
            build,
        )
    }

    /// [`StreamingContext::get_or_create`] on a given clock (tests).
    pub fn get_or_create_with_clock(
        checkpoint_dir: impl AsRef<Path>,
        config: Config,
        durability: DurabilityConfig,
        clock: Arc<dyn Clock>,
        build: impl FnOnce(&StreamingContext) -> Result<()>,
    ) -> Result<StreamingContext> {
        let location = wal::objstore::StorageUrl::Local(checkpoint_dir.as_ref().to_path_buf());
        Self::get_or_create_at_with_clock(&location, config, durability, clock, build)
    }

    /// [`StreamingContext::get_or_create`] with the checkpoint location given as a storage
    /// URL: a local directory (`file://`, or a [`wal::objstore::StorageUrl::Local`] path)
    /// or an object store (`s3://bucket/prefix`, `memory://`, `hdfs://`), for machines
    /// whose local disks do not survive them. The layout is the same as a directory's:
    /// checkpoints under `<url>/checkpoints/` (the `checkpoint` crate's `ObjectBackend`:
    /// create-only puts, the same fallback rule), the metadata log under
    /// `<url>/metadata/` (a `wal` log on `wal::objstore`: one conditional put per group
    /// commit). Connection settings come from the `AWS_*` environment, then
    /// `durability.object_options`. Both locations are checked with a listing request
    /// before anything else happens, so a bad URL, a missing bucket or refused credentials
    /// fail here, naming the URL, before any data is accepted.
    pub fn get_or_create_at(
        location: &wal::objstore::StorageUrl,
        config: Config,
        durability: DurabilityConfig,
        build: impl FnOnce(&StreamingContext) -> Result<()>,
    ) -> Result<StreamingContext> {
        Self::get_or_create_at_with_clock(
            location,
            config,
            durability,
            Arc::new(SystemClock),
            build,
        )
    }

    /// [`StreamingContext::get_or_create_at`] on a given clock (tests).
    pub fn get_or_create_at_with_clock(
        location: &wal::objstore::StorageUrl,
        config: Config,
        durability: DurabilityConfig,
        clock: Arc<dyn Clock>,
        build: impl FnOnce(&StreamingContext) -> Result<()>,
    ) -> Result<StreamingContext> {
        durability.validate()?;
        let where_ = location_name(location);
        let interval_ms = config.batch_interval_ms;
        let ctx = StreamingContext::with_clock(config, Arc::clone(&clock))?;
        build(&ctx)?;
        let ops = ctx.describe_graph();
        let graph = graph_description(&ops);
        let stateful = ops.iter().any(|o| o.state.is_some());

        let ckpt_config = checkpoint::Config {
            checkpoints_retained: durability.checkpoints_retained,
            ..checkpoint::Config::default()
        };
        let store = match location {
            wal::objstore::StorageUrl::Local(dir) => {
                CheckpointStore::open_dir(checkpoints_dir(dir), ckpt_config)?
            }
            url => CheckpointStore::open(
                checkpoint::backend_for_url(&url.join(CHECKPOINTS), &durability.object_options)?,
                ckpt_config,
            )?,
        };
        let restored = store.restore()?;
        if let Some(r) = &restored {
            for s in &r.skipped {
                tracing::warn!(checkpoint = %s.name, error = %s.error, "skipped a damaged checkpoint");
            }
            let changes = r.check_compatible(&graph, interval_ms)?;
            for c in changes {
                tracing::info!(change = %c, "graph changed compatibly since the checkpoint");
            }
        }
        let from = restored
            .as_ref()
            .map(|r| Lsn::new(r.checkpoint.parts().metadata_log_lsn.get() + 1));
        let (log, replayed) = match location {
            wal::objstore::StorageUrl::Local(dir) => {
                WalMetadataLog::open(&metadata_dir(dir), durability.metadata_sync, from)?
            }
            url => {
                let url = url.join(METADATA);
                let wal = wal::Wal::open_url(
                    &url,
                    &durability.object_options,
                    wal::Config {
                        sync_policy: durability.metadata_sync,
                        ..wal::Config::default()
                    },
                )
                .map_err(|source| Error::Wal {
                    what: "open the metadata log",
                    location: url.to_string(),
                    source,
                })?;
                WalMetadataLog::with_wal(Arc::new(wal), from)?
            }
        };
        let log = Arc::new(log);
        let plan = RestartPlan::compute(restored.as_ref(), replayed, stateful)?;

        // The grid: the log's, or a new one.
        let zero = match plan.mirror.zero {
            Some(zero) => {
                if plan.mirror.interval_ms != interval_ms {
                    return Err(Error::config(
                        "batch_interval_ms",
                        format!(
                            "{interval_ms} ms, but the pipeline in {where_} runs on a {} ms grid; \
                             restart with the same interval or use a new checkpoint location",
                            plan.mirror.interval_ms
                        ),
                    ));
                }
                zero
            }
            None => {
                let zero = BatchTime::from_millis(clock.now_ms());
                log.append(LogRecord::Started { zero, interval_ms })?;
                zero
            }
        };

        // Handlers per stream.
        // One per run: the start time with the process id mixed in, so neither a restart
        // nor another driver on the same executors reuses a block id a peer may hold.
        let incarnation = (clock.now_ms() << 20) ^ u64::from(std::process::id() & 0xF_FFFF);
        let mut streams = BTreeMap::new();
        let mut descs = BTreeMap::new();
        let mut replicated_stores: BTreeMap<Vec<String>, Arc<blockstore::ReplicatedStore>> =
            BTreeMap::new();
        for (id, name, receiver, kind) in ctx.input_streams() {
            if !receiver {
                streams.insert(id, StreamStore::Direct(kind));
                descs.insert(
                    id,
                    StreamDesc {
                        name,
                        mode: format!("direct {kind}"),
                    },
                );
                continue;
            }
            let mode = durability.streams.get(&id).unwrap_or(&durability.default);
            let (handler, st): (Arc<dyn ReceivedBlockHandler>, StreamStore) = match mode {
                Durability::Ignore => (Arc::new(MemoryBlockHandler::new()), StreamStore::Memory),
                Durability::Wal { dir: wal_dir, sync } => {
                    let h = Arc::new(WalBlockHandler::open(
                        &stream_wal_dir(wal_dir, id),
                        id,
                        *sync,
                    )?);
                    (h.clone(), StreamStore::Wal(h))
                }
                Durability::WalUrl { url, options, sync } => {
                    let h = Arc::new(WalBlockHandler::open_url(
                        &url.join(&format!("stream-{}", id.0)),
                        options,
                        id,
                        *sync,
                    )?);
                    (h.clone(), StreamStore::Wal(h))
                }
                Durability::Replicated {
                    executors,
                    replication,
                } => {
                    let store = match replicated_stores.get(executors) {
                        Some(s) => Arc::clone(s),
                        None => {
                            let bs_config = blockstore::Config {
                                peer_replicas: *replication,
                                ..durability.blockstore.clone()
                            };
                            let s = Arc::new(
                                ctx.runtime()
                                    .block_on(blockstore::ReplicatedStore::open(
                                        bs_config, executors,
                                    ))
                                    .map_err(|e| {
                                        Error::config(
                                            "durability.executors",
                                            format!(
                                                "cannot open the replicated store over {}: {e}",
                                                executors.join(",")
                                            ),
                                        )
                                    })?,
                            );
                            replicated_stores.insert(executors.clone(), Arc::clone(&s));
                            s
                        }
                    };
                    let h = Arc::new(ReplicatedBlockHandler::new(
                        store,
                        incarnation,
                        ctx.runtime().handle().clone(),
                    ));
                    h.defer_cleanup();
                    (h.clone(), StreamStore::Replicated(h))
                }
            };
            ctx.set_block_handler(id, handler)?;
            streams.insert(id, st);
            descs.insert(
                id,
                StreamDesc {
                    name,
                    mode: mode.describe(),
                },
            );
        }
        log.append(LogRecord::Streams(descs))?;
        log.append(LogRecord::Graph { stateful })?;

        let m = &plan.mirror;
        let recovering =
            plan.checkpoint.is_some() || m.last_generated.is_some() || !m.unallocated.is_empty();
        if recovering {
            tracing::info!(
                checkpoint = ?plan.checkpoint.as_ref().map(|c| &c.0),
                rerun = plan.rerun.len(),
                unallocated = m.unallocated.len(),
                "restarting from {where_}"
            );
            *lock(&ctx.recovered) = Some(Restore {
                zero,
                scheduler: RestoredState {
                    last_generated: m.last_generated,
                    pending: plan.rerun.clone(),
                    unallocated: m.unallocated.values().cloned().collect(),
                    remembered: plan.remembered.clone(),
                },
                next_block_seq: m.next_block_seq.clone(),
                state: plan.state,
                resume_offsets: m.resume_offsets.clone(),
            });
        } else {
            *lock(&ctx.recovered) = Some(Restore {
                zero,
                ..Restore::default()
            });
        }
        ctx.set_metadata_log(Arc::clone(&log) as Arc<dyn crate::context::MetadataLog>)?;
        *lock(&ctx.checkpointer) = Some(Arc::new(Checkpointer {
            store,
            log,
            zero,
            interval_ms,
            every: durability.checkpoint_interval_batches,
            graph,
            stateful,
            streams,
            runtime: ctx.runtime().handle().clone(),
            horizon: Mutex::new(None),
        }));
        Ok(ctx)
    }
}
