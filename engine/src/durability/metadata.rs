//! The driver metadata log: the scheduler's decisions, on a [`wal::Wal`].
//!
//! Every record is durable before the call that wrote it returns (group commit: concurrent
//! receivers share syncs). Together with the newest checkpoint it says exactly what a
//! restart must do: which blocks exist, which batch got which blocks (direct inputs'
//! allocations included, as given), which batches completed.
//!
//! # Record format
//!
//! One WAL record per [`LogRecord`]: a format byte (`1`) followed by the record in
//! postcard 1.x (serde's externally tagged enum: a varint variant index, then the fields in
//! declaration order). [`StoredBlock`] and [`Allocation`] are serialized whole, so fields a
//! source adds (`source_offsets`) and direct inputs' locators flow through. New variants are
//! only ever appended; a reader meeting an unknown variant or format byte refuses, naming
//! the Lsn.
//!
//! # Checkpoint cuts
//!
//! A checkpoint needs the log's view at one Lsn. [`WalMetadataLog::cut`] appends a
//! [`LogRecord::Cut`] holding the whole in-memory view ([`Mirror`]) while no other append is
//! in flight (appends hold a shared gate, the cut holds it exclusively, for one sync). The
//! checkpoint then records `metadata_log_lsn = cut - 1`, so a restart replays from the cut
//! record: it loads the view, then applies every later record. Later cut records are
//! skipped by a replay (their view is already covered by the records before them), which is
//! what makes falling back to an older checkpoint work.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use wal::{Lsn, SyncPolicy, Wal};

use crate::block::{BlockId, StoredBlock, StreamId};
use crate::context::MetadataLog;
use crate::dstream::node::lock;
use crate::error::{Error, Result};
use crate::scheduler::Allocation;
use crate::time::BatchTime;

/// The record format byte.
pub const RECORD_FORMAT: u8 = 1;

/// One record of the metadata log (see the module docs for the encoding).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    /// The pipeline's grid; the first record of a log, written once.
    Started {
        /// The grid's origin.
        zero: BatchTime,
        /// The batch interval.
        interval_ms: u64,
    },
    /// The input streams and their durability modes at a (re)start, for inspection.
    Streams(BTreeMap<StreamId, StreamDesc>),
    /// A block was stored by its stream's handler (written before the store resolves).
    BlockStored(StoredBlock),
    /// A batch was generated with these blocks (before it runs).
    BatchAllocated(Allocation),
    /// A batch completed.
    BatchCompleted(BatchTime),
    /// Batches up to this time were cleaned up by the scheduler.
    BatchesCleaned(BatchTime),
    /// The whole view at a checkpoint (see the module docs).
    Cut(Box<CutRecord>),
    /// What a restart must know of the graph that wrote the log, at a (re)start (after
    /// `Streams`). Without a checkpoint to restore state from, a stateful graph re-runs
    /// every batch, completed or not, to rebuild its state; `ember checkpoint inspect`
    /// reads this record to say so (with a checkpoint, the checkpoint's graph tells).
    Graph {
        /// Whether any operator keeps state across batches.
        stateful: bool,
    },
}

/// What a [`LogRecord::Cut`] holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutRecord {
    /// The completed batch the checkpoint was taken after (its state snapshots are at it).
    pub checkpoint_time: BatchTime,
    /// The view.
    pub mirror: Mirror,
}

/// An input stream as recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDesc {
    /// Its name.
    pub name: String,
    /// Its durability mode, as shown to people ("wal /path", "replicated a:1,b:2 x1",
    /// "ignore", "direct file_stream").
    pub mode: String,
}

/// What the metadata log says, applied record by record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// The grid's origin, once `Started` was seen.
    pub zero: Option<BatchTime>,
    /// The batch interval.
    pub interval_ms: u64,
    /// The input streams at the last start.
    pub streams: BTreeMap<StreamId, StreamDesc>,
    /// Blocks stored and not yet allocated.
    pub unallocated: BTreeMap<BlockId, StoredBlock>,
    /// Allocated batches not yet pruned by a checkpoint.
    pub allocations: BTreeMap<BatchTime, Allocation>,
    /// Which of them completed.
    pub completed: BTreeSet<BatchTime>,
    /// The newest batch generated.
    pub last_generated: Option<BatchTime>,
    /// The newest cleanup.
    pub cleaned_up_to: Option<BatchTime>,
    /// Per receiver stream, one past the highest block sequence number ever recorded.
    pub next_block_seq: BTreeMap<StreamId, u64>,
    /// Per stream, the highest `source_offsets.end` ever recorded.
    pub resume_offsets: BTreeMap<StreamId, u64>,
}

impl Mirror {
    fn saw_block(&mut self, b: &StoredBlock) {
        let next = self.next_block_seq.entry(b.id.stream).or_insert(0);
        *next = (*next).max(b.id.seq.saturating_add(1));
        if let Some(r) = &b.source_offsets {
            let e = self.resume_offsets.entry(b.id.stream).or_insert(0);
            *e = (*e).max(r.end);
        }
    }

    /// Applies one record (a `Cut` is handled by the replay, not here).
    pub fn apply(&mut self, record: &LogRecord) {
        match record {
            LogRecord::Started { zero, interval_ms } => {
                self.zero = Some(*zero);
                self.interval_ms = *interval_ms;
            }
            LogRecord::Streams(s) => self.streams = s.clone(),
            LogRecord::BlockStored(b) => {
                self.saw_block(b);
                self.unallocated.insert(b.id, b.clone());
            }
            LogRecord::BatchAllocated(a) => {
                for b in a.blocks.values().flatten() {
                    self.unallocated.remove(&b.id);
                    self.saw_block(b);
                }
                self.allocations.insert(a.time, a.clone());
                self.last_generated = self.last_generated.max(Some(a.time));
            }
            LogRecord::BatchCompleted(t) => {
                self.completed.insert(*t);
            }
            LogRecord::BatchesCleaned(t) => {
                self.cleaned_up_to = self.cleaned_up_to.max(Some(*t));
            }
            LogRecord::Cut(_) | LogRecord::Graph { .. } => {}
        }
    }

    /// Forgets allocations before `time` (no retained checkpoint needs them).
    pub fn prune_before(&mut self, time: BatchTime) {
        self.allocations = self.allocations.split_off(&time);
        self.completed = self.completed.split_off(&time);
    }
}

/// Encodes a record (format byte + postcard).
pub fn encode(record: &LogRecord) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_FORMAT];
    let body = postcard::to_stdvec(record).map_err(|e| Error::Recovery {
        location: "metadata log".to_owned(),
        message: format!("cannot encode a record: {e}"),
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a record read at `lsn` of the log at `location`.
pub fn decode(location: &str, lsn: Lsn, bytes: &[u8]) -> Result<LogRecord> {
    let fail = |message: String| Error::Recovery {
        location: location.to_owned(),
        message: format!("metadata log record at Lsn {lsn}: {message}"),
    };
    match bytes.split_first() {
        None => Err(fail("empty record".to_owned())),
        Some((&RECORD_FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|e| fail(format!("does not decode: {e}")))
        }
        Some((v, _)) => Err(fail(format!(
            "record format {v} is not supported by this build (it reads format {RECORD_FORMAT})"
        ))),
    }
}

/// What a replay found.
#[derive(Clone, Debug, Default)]
pub struct Replayed {
    /// The view after the last record.
    pub mirror: Mirror,
    /// The checkpoint time of the cut record the replay started from, if it started from
    /// one.
    pub checkpoint_time: Option<BatchTime>,
    /// Records applied.
    pub records: u64,
    /// The first Lsn read.
    pub from: Option<Lsn>,
    /// Whether the graph was stateful, from the newest [`LogRecord::Graph`] replayed.
    pub stateful: Option<bool>,
}

/// Replays `wal` from `from` (a checkpoint's `metadata_log_lsn + 1`), or from its first
/// record if `None`. With `from`, the record there must be the checkpoint's cut.
pub fn replay(wal: &Wal, from: Option<Lsn>) -> Result<Replayed> {
    let location = wal.location().to_owned();
    let fail = |message: String| Error::Recovery {
        location: location.clone(),
        message,
    };
    let start = match from {
        Some(lsn) => {
            let first = wal.first_lsn();
            if first.is_none_or(|f| f > lsn) || wal.last_lsn().is_none_or(|l| l < lsn) {
                return Err(fail(format!(
                    "the checkpoint needs the metadata log from Lsn {lsn}, but the log holds {}",
                    match (wal.first_lsn(), wal.last_lsn()) {
                        (Some(a), Some(b)) => format!("Lsns {a} to {b}"),
                        _ => "no records".to_owned(),
                    }
                )));
            }
            lsn
        }
        None => wal.first_lsn().unwrap_or(Lsn::FIRST),
    };
    let mut out = Replayed::default();
    let iter = wal.iter_from(start).map_err(|source| Error::Wal {
        what: "read the metadata log",
        location: location.clone(),
        source,
    })?;
    for item in iter {
        let (lsn, bytes) = item.map_err(|source| Error::Wal {
            what: "read the metadata log",
            location: location.clone(),
            source,
        })?;
        let record = decode(&location, lsn, &bytes)?;
        if out.from.is_none() {
            out.from = Some(lsn);
            if from.is_some() {
                let LogRecord::Cut(cut) = record else {
                    return Err(fail(format!(
                        "the record at Lsn {lsn} is not the checkpoint's cut record"
                    )));
                };
                out.checkpoint_time = Some(cut.checkpoint_time);
                out.mirror = cut.mirror;
                out.records += 1;
                continue;
            }
        }
        if let LogRecord::Graph { stateful } = record {
            out.stateful = Some(stateful);
        }
        out.mirror.apply(&record);
        out.records += 1;
    }
    Ok(out)
}

/// A [`MetadataLog`] on a [`Wal`] (see the module docs).
pub struct WalMetadataLog {
    wal: Arc<Wal>,
    location: String,
    mirror: Mutex<Mirror>,
    /// Appends hold it shared; a cut holds it exclusively.
    gate: RwLock<()>,
}

impl std::fmt::Debug for WalMetadataLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalMetadataLog")
            .field("location", &self.location)
            .finish()
    }
}

impl WalMetadataLog {
    /// Opens (recovering) the log in `dir` and replays it from `from` (see [`replay`]).
    pub fn open(dir: &Path, sync: SyncPolicy, from: Option<Lsn>) -> Result<(Self, Replayed)> {
        let wal = super::open_local_wal(dir, sync, "open the metadata log")?;
        Self::with_wal(Arc::new(wal), from)
    }

    /// [`WalMetadataLog::open`] over an open log.
    pub fn with_wal(wal: Arc<Wal>, from: Option<Lsn>) -> Result<(Self, Replayed)> {
        let replayed = replay(&wal, from)?;
        Ok((
            WalMetadataLog {
                location: wal.location().to_owned(),
                wal,
                mirror: Mutex::new(replayed.mirror.clone()),
                gate: RwLock::new(()),
            },
            replayed,
        ))
    }

    /// The log.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// A copy of the current view.
    pub fn mirror(&self) -> Mirror {
        lock(&self.mirror).clone()
    }

    /// Appends `record` and applies it once durable.
    pub fn append(&self, record: LogRecord) -> Result<Lsn> {
        let bytes = encode(&record)?;
        let _shared = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let lsn = self.append_bytes(bytes)?;
        lock(&self.mirror).apply(&record);
        Ok(lsn)
    }

    fn append_bytes(&self, bytes: Vec<u8>) -> Result<Lsn> {
        self.wal
            .append_blocking(bytes)
            .map_err(|source| Error::Wal {
                what: "append to the metadata log",
                location: self.location.clone(),
                source,
            })
    }

    /// Writes a cut record for a checkpoint taken after batch `checkpoint_time`, first
    /// forgetting allocations before `prune_before`; returns its Lsn and the view.
    pub fn cut(
        &self,
        checkpoint_time: BatchTime,
        prune_before: Option<BatchTime>,
    ) -> Result<(Lsn, Mirror)> {
        let _exclusive = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mirror = {
            let mut m = lock(&self.mirror);
            if let Some(t) = prune_before {
                m.prune_before(t);
            }
            m.clone()
        };
        let record = LogRecord::Cut(Box::new(CutRecord {
            checkpoint_time,
            mirror,
        }));
        let lsn = self.append_bytes(encode(&record)?)?;
        let LogRecord::Cut(cut) = record else {
            unreachable!("built above")
        };
        Ok((lsn, cut.mirror))
    }

    /// Forgets allocations before `time` in memory (after a publish).
    pub fn prune_before(&self, time: BatchTime) {
        lock(&self.mirror).prune_before(time);
    }

    /// Retention: drops whole segments below `lsn`.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        self.wal.truncate_before(lsn).map_err(|source| Error::Wal {
            what: "truncate the metadata log",
            location: self.location.clone(),
            source,
        })
    }
}

impl MetadataLog for WalMetadataLog {
    fn block_stored(&self, block: &StoredBlock) -> Result<()> {
        self.append(LogRecord::BlockStored(block.clone())).map(drop)
    }

    fn batch_allocated(&self, allocation: &Allocation) -> Result<()> {
        self.append(LogRecord::BatchAllocated(allocation.clone()))
            .map(drop)
    }

    fn batch_completed(&self, time: BatchTime) -> Result<()> {
        self.append(LogRecord::BatchCompleted(time)).map(drop)
    }

    fn batches_cleaned(&self, up_to: BatchTime) -> Result<()> {
        self.append(LogRecord::BatchesCleaned(up_to)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seq: u64, offsets: Option<std::ops::Range<u64>>) -> StoredBlock {
        StoredBlock {
            id: BlockId {
                stream: StreamId(0),
                seq,
            },
            records: 2,
            len_bytes: 4,
            locator: vec![1, 2],
            source_offsets: offsets,
        }
    }

    #[test]
    fn record_format_is_pinned() {
        let bytes = encode(&LogRecord::BlockStored(block(3, Some(10..12)))).unwrap();
        // format 1; variant 2 (BlockStored); stream 0, seq 3, records 2, len 4, locator
        // [1, 2], Some(10..12).
        assert_eq!(bytes, [1, 2, 0, 3, 2, 4, 2, 1, 2, 1, 10, 12]);
        let back = decode("log", Lsn::new(5), &bytes).unwrap();
        assert_eq!(back, LogRecord::BlockStored(block(3, Some(10..12))));
        let err = decode("log", Lsn::new(5), &[9, 0]).unwrap_err().to_string();
        assert!(err.contains("Lsn 5") && err.contains("format 9"), "{err}");
        let err = decode("log", Lsn::new(6), &[1, 200])
            .unwrap_err()
            .to_string();
        assert!(err.contains("Lsn 6"), "{err}");
    }

    #[test]
    fn replay_from_a_cut_skips_later_cuts_and_applies_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let t = |ms| BatchTime::from_millis(ms);
        let (log, replayed) =
            WalMetadataLog::open(dir.path(), SyncPolicy::EveryRecord, None).unwrap();
        assert_eq!(replayed.records, 0);
        log.append(LogRecord::Started {
            zero: t(0),
            interval_ms: 100,
        })
        .unwrap();
        log.block_stored(&block(0, Some(0..5))).unwrap();
        log.batch_allocated(&Allocation {
            time: t(100),
            blocks: [(StreamId(0), vec![block(0, Some(0..5))])].into(),
        })
        .unwrap();
        let (cut1, _) = log.cut(t(100), None).unwrap();
        log.block_stored(&block(1, Some(5..9))).unwrap();
        let (_cut2, _) = log.cut(t(100), Some(t(200))).unwrap();
        log.batch_completed(t(100)).unwrap();
        let live = log.mirror();
        drop(log);

        let (_log, from_cut1) =
            WalMetadataLog::open(dir.path(), SyncPolicy::EveryRecord, Some(cut1)).unwrap();
        assert_eq!(from_cut1.checkpoint_time, Some(t(100)));
        let m = from_cut1.mirror;
        assert_eq!(m.unallocated.len(), 1, "block 1 was stored after the cut");
        assert!(
            m.allocations.contains_key(&t(100)),
            "the older cut keeps what the newer one pruned"
        );
        assert!(m.completed.contains(&t(100)));
        assert_eq!(m.next_block_seq[&StreamId(0)], 2);
        assert_eq!(m.resume_offsets[&StreamId(0)], 9);
        assert_eq!(m.unallocated, live.unallocated);
    }

    #[test]
    fn replay_refuses_a_log_that_does_not_reach_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = WalMetadataLog::open(dir.path(), SyncPolicy::EveryRecord, None).unwrap();
        log.batch_completed(BatchTime::from_millis(5)).unwrap();
        drop(log);
        let err = WalMetadataLog::open(dir.path(), SyncPolicy::EveryRecord, Some(Lsn::new(7)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Lsn 7") && err.contains("Lsns 1 to 1"),
            "{err}"
        );
        let err = WalMetadataLog::open(dir.path(), SyncPolicy::EveryRecord, Some(Lsn::new(1)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not the checkpoint's cut"), "{err}");
    }
}
