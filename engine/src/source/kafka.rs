//! The Kafka direct source: no receiver, no copy of the data. A batch is its offset ranges.
//!
//! When the batch at time `t` is generated, the source asks the broker for each assigned
//! partition's high watermark and plans the range `[from, until)` where `from` is where the
//! previous batch stopped and `until = min(high watermark, from + cap)`; the cap is
//! `max_rate_per_partition * batch interval` (so the first batch after a restart never
//! swallows the whole backlog). Each range becomes one block of the batch (one Kafka
//! partition = one unit of input), its locator holding topic, partition, range and batch
//! time; the driver records the allocation in the metadata log *before* the batch runs. When
//! the batch runs (or re-runs after a crash), each block is read back by fetching exactly its
//! range from the broker (upstream replay); the records' values become the stream's lines.
//!
//! Offsets are Kafka's: a range may hold fewer records than `until - from` (compacted topics,
//! transaction markers); the block's record count is the span, an upper bound, and the read
//! stops at the first offset at or past `until` or at the partition's end.
//!
//! Two modes pick the partitions a source plans:
//! - **assign** (the default): every partition of the topic, or the ones given. A group id,
//!   if set, only names where offsets are committed; if that group has active members (other
//!   consumers subscribed with it), the source refuses to start, and a commit rejected
//!   because of them says so, instead of two consumers silently reading the same partitions.
//! - **subscribe** ([`KafkaOptions::subscribe`]): the source joins the consumer group and
//!   plans only the partitions the group assigns to it, following rebalances (the
//!   decision table is in `source/kafka/group.rs`): a revoked partition is no longer planned, a newly assigned one starts at the
//!   offsets stored by the sink ([`KafkaOptions::stored_offsets`]) or else at the starting
//!   offsets. A batch planned before a revocation may still run; a sink that must not count
//!   it twice fences its write on the stored offsets (the PostgreSQL sink's fenced mode).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

mod group;

use super::DirectInput;
use crate::block::{Block, BlockId, StoredBlock, StreamId};
use crate::clock::BoxFuture;
use crate::dstream::node::lock;
use crate::error::{Error, Result};
use crate::handler::ReceivedBlockHandler;
use crate::scheduler::Allocation;
use crate::time::BatchTime;

/// The offsets of one Kafka partition that one batch read: `[from, until)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OffsetRange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The first offset of the range.
    pub from: i64,
    /// The offset after the range (the next batch starts here).
    pub until: i64,
}

impl OffsetRange {
    /// The span of offsets (an upper bound on the records: compacted topics have gaps).
    pub fn span(&self) -> u64 {
        u64::try_from(self.until - self.from).unwrap_or(0)
    }
}

/// Where the source starts in each partition when nothing says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The earliest offset still in the log.
    Earliest,
    /// The high watermark at start: only records produced from now on.
    Latest,
    /// The offsets committed to Kafka for the group id; partitions without a committed
    /// offset start at the earliest.
    Committed,
    /// These offsets, per partition; partitions not named start at the earliest.
    Explicit(BTreeMap<i32, i64>),
}

/// Where a sink stored each partition's next offset: called with the topic and the
/// partitions just assigned to a subscribed source; partitions it leaves out start at the
/// starting offsets. See [`KafkaOptions::stored_offsets`].
#[derive(Clone)]
pub struct StoredOffsets(
    #[allow(clippy::type_complexity)]
    pub  Arc<dyn Fn(&str, &[i32]) -> std::result::Result<BTreeMap<i32, i64>, String> + Send + Sync>,
);

impl std::fmt::Debug for StoredOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredOffsets(..)")
    }
}

/// How to reach and read the topic.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `host:port[,host:port...]` of the brokers.
    pub bootstrap: String,
    /// The topic.
    pub topic: String,
    /// The partitions to read (`None`: every partition of the topic).
    pub partitions: Option<Vec<i32>>,
    /// Where to start.
    pub starting_offsets: StartingOffsets,
    /// The group id for committed offsets (`StartingOffsets::Committed` and
    /// [`KafkaOffsets::commit`]), and the group joined in subscribe mode.
    pub group_id: Option<String>,
    /// Subscribe mode: join the consumer group `group_id` and read only the partitions it
    /// assigns to this source, following rebalances (see the module docs). Needs
    /// `group_id`; `partitions` must be `None`.
    pub subscribe: bool,
    /// In subscribe mode, where a newly assigned partition resumes (e.g.
    /// `PostgresSink::stored_offsets_for`); partitions without a stored offset start at
    /// `starting_offsets`.
    pub stored_offsets: Option<StoredOffsets>,
    /// At most this many offsets per partition per second of batch interval (`None`: no cap).
    pub max_rate_per_partition: Option<u64>,
    /// At most about this many bytes per partition per second of batch interval (`None`:
    /// no cap). Offsets are what a batch records, so this is turned into offsets with the
    /// bytes per offset this stream has read so far; before its first read (the first
    /// batch after a start or restart) the source reads a few records at the planned
    /// position to learn it. Whatever the records' size, a batch's block (one partition's
    /// range, held in memory while it is counted) stays near this size, and a backlog is
    /// read over several batches instead of swallowed by the first.
    pub max_bytes_per_partition: Option<u64>,
    /// How often to try reaching the brokers at start before giving up.
    pub connect_attempts: u32,
    /// How long a batch may wait for an unreachable broker (planning or reading) before it
    /// fails.
    pub broker_timeout: Duration,
    /// Extra librdkafka settings (`key=value`), e.g. security settings.
    pub client_settings: BTreeMap<String, String>,
}

impl KafkaOptions {
    /// Reads `topic` at `bootstrap` from the earliest offsets, every partition, capped at
    /// 250,000 offsets and about [`DEFAULT_MAX_BYTES_PER_PARTITION`] bytes per partition per
    /// second of batch interval.
    pub fn new(bootstrap: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaOptions {
            bootstrap: bootstrap.into(),
            topic: topic.into(),
            partitions: None,
            starting_offsets: StartingOffsets::Earliest,
            group_id: None,
            subscribe: false,
            stored_offsets: None,
            max_rate_per_partition: Some(250_000),
            max_bytes_per_partition: Some(DEFAULT_MAX_BYTES_PER_PARTITION),
            connect_attempts: 5,
            broker_timeout: Duration::from_secs(60),
            client_settings: BTreeMap::new(),
        }
    }
}

/// The default byte cap per partition per second of batch interval: 32 MiB. With 4
/// partitions and 1 s batches that lets a backlog be read at 128 MiB/s (about 1.9 M lines/s
/// of the benchmark's 70-byte lines, above what the word count processes on 2 cores), while
/// a block, one partition's range of a batch, held in memory while it is read and counted,
/// stays near 32 MiB whatever the records' size (the offsets cap alone let a 100-line record
/// make a 1.5 GB block).
pub const DEFAULT_MAX_BYTES_PER_PARTITION: u64 = 32 << 20;

/// The source's readers' `fetch.wait.max.ms` (see `client_config`); public so that a bare
/// consumer measuring the broker (`ember bench kafka-read`) reads the same way.
pub const READER_FETCH_WAIT_MAX_MS: (&str, &str) = ("fetch.wait.max.ms", "10");

/// How many records the source reads to learn the bytes per offset before its first read.
const SIZE_SAMPLE_OFFSETS: i64 = 16;

/// What a Kafka block's locator holds (postcard).
#[derive(Debug, Serialize, Deserialize)]
struct KafkaLocator {
    range: OffsetRange,
    batch_time_ms: u64,
}

/// A block id that is the same however often a batch is planned or re-planned: the batch time
/// and the partition. (Block ids order the merge of a batch's blocks, so a re-run merges in
/// the same order.)
fn block_id(stream: StreamId, time: BatchTime, partition: i32) -> BlockId {
    let p = u64::try_from(partition).unwrap_or(0) & 0xffff;
    BlockId {
        stream,
        seq: time.as_millis().wrapping_mul(1 << 16) | p,
    }
}

pub(crate) struct KafkaShared {
    pub name: String,
    options: KafkaOptions,
    interval_ms: u64,
    /// Every partition the source may read (in subscribe mode: every partition of the topic).
    partitions: Vec<i32>,
    /// Per partition planned here, the next offset to plan (in subscribe mode: the partitions
    /// assigned now).
    positions: Arc<Mutex<BTreeMap<i32, i64>>>,
    /// Batches planned and not completed, with their partitions (what a revocation waits
    /// for).
    in_flight: Arc<group::InFlight>,
    /// The group membership in subscribe mode.
    membership: Option<group::Membership>,
    /// Per batch, the ranges it reads (planned here, or seen when a restored batch reads).
    ranges: Mutex<BTreeMap<BatchTime, Vec<OffsetRange>>>,
    /// The metadata consumer: watermarks and commits.
    meta: Mutex<BaseConsumer>,
    /// Consumers for reading ranges, reused.
    readers: Mutex<Vec<BaseConsumer>>,
    /// Since when planning could not reach the broker.
    unreachable_since: Mutex<Option<Instant>>,
    records_read: AtomicU64,
    /// Planned blocks being read ahead of their batch (see [`Prefetch`]).
    prefetched: Mutex<HashMap<BlockId, Arc<Prefetch>>>,
    /// Blocks whose bytes a prefetch read from the broker.
    blocks_prefetched: AtomicU64,
    /// Bytes and offsets spanned by the reads so far: the bytes per offset that turn
    /// `max_bytes_per_partition` into offsets.
    sized_bytes: AtomicU64,
    sized_offsets: AtomicU64,
}

/// A planned block read ahead of its batch by the driver's prefetch thread. Whoever reads
/// it first, the prefetch or the batch (which may start before the prefetch got to it),
/// does the broker read; the other waits for that read and shares its bytes, so a range is
/// fetched once. The bytes are kept until the prefetch is done with the block (its stages
/// ran) or the batch is cleaned up.
#[derive(Default)]
struct Prefetch {
    state: Mutex<PrefetchState>,
    read: Condvar,
}

#[derive(Default)]
enum PrefetchState {
    /// Nobody has started reading.
    #[default]
    Queued,
    /// A read is under way: wait for it.
    Reading,
    /// Read: share these bytes.
    Read(Bytes),
    /// The read failed: the next reader tries again.
    Failed,
}

/// Marks a read that did not finish (an error or a panic) as failed, so that waiters try
/// themselves instead of waiting for ever.
struct ReadingGuard<'a>(&'a Prefetch, bool);

impl Drop for ReadingGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            *lock(&self.0.state) = PrefetchState::Failed;
            self.0.read.notify_all();
        }
    }
}

/// How many batches' ranges [`KafkaOffsets::offset_ranges`] keeps.
const RANGES_KEPT: usize = 256;

fn client_config(options: &KafkaOptions, group: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &options.bootstrap)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // Bounded read-ahead per reader: what a range read may prefetch past its end.
        .set("queued.max.messages.kbytes", "16384")
        // A reader only fetches a range known to exist, so a fetch never has to wait for
        // data. librdkafka's default (500 ms) costs nothing on Kafka, which answers as soon
        // as it has data, but tansu 0.6.0 sleeps the remaining wait (half of it above
        // 250 ms) after every fetch even when it found data (tansu-storage
        // src/service/fetch.rs, the `while elapsed <= max_wait` loop): 7x fewer lines per
        // second read (BENCHMARKS.md, Kafka). Overridable with `client_settings`.
        .set(READER_FETCH_WAIT_MAX_MS.0, READER_FETCH_WAIT_MAX_MS.1)
        .set("group.id", group.unwrap_or("ember-direct"));
    for (k, v) in &options.client_settings {
        c.set(k, v);
    }
    c
}

impl KafkaShared {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::Receiver {
            stream: self.name.clone(),
            message: message.into(),
        }
    }

    fn watermarks(&self, partition: i32, timeout: Duration) -> Result<(i64, i64), KafkaError> {
        lock(&self.meta).fetch_watermarks(&self.options.topic, partition, timeout)
    }

    /// The ranges of the next batch, advancing the positions.
    fn plan_ranges(&self, time: BatchTime) -> Result<Vec<OffsetRange>> {
        let cap = self.options.max_rate_per_partition.map(|r| {
            i64::try_from(r.saturating_mul(self.interval_ms) / 1000)
                .unwrap_or(i64::MAX)
                .max(1)
        });
        if let Some(m) = &self.membership
            && let Some(failure) = lock(&m.state.failure).clone()
        {
            return Err(self.error(failure));
        }
        let mut positions = lock(&self.positions);
        let planned: Vec<i32> = positions.keys().copied().collect();
        let mut highs = Vec::with_capacity(planned.len());
        for p in planned {
            match self.watermarks(p, Duration::from_secs(5)) {
                Ok((low, high)) => highs.push((p, low, high)),
                Err(e) => {
                    // A broker that is away (restarting) gives empty batches for a while,
                    // not a failed pipeline; past the bound it is an error.
                    let mut since = lock(&self.unreachable_since);
                    let first = *since.get_or_insert_with(Instant::now);
                    if first.elapsed() > self.options.broker_timeout {
                        return Err(self.error(format!(
                            "cannot reach Kafka at {} for partition {} of `{}` for {:?}: {e}",
                            self.options.bootstrap,
                            p,
                            self.options.topic,
                            first.elapsed()
                        )));
                    }
                    tracing::warn!(stream = %self.name, bootstrap = %self.options.bootstrap, partition = p, error = %e, batch = %time, "Kafka unreachable: planning an empty batch");
                    let ranges = positions
                        .iter()
                        .map(|(&partition, &at)| OffsetRange {
                            topic: self.options.topic.clone(),
                            partition,
                            from: at,
                            until: at,
                        })
                        .collect();
                    return Ok(ranges);
                }
            }
        }
        *lock(&self.unreachable_since) = None;
        let mut ranges = Vec::with_capacity(highs.len());
        let mut reading = std::collections::BTreeSet::new();
        for (p, low, high) in highs {
            let at = positions.get(&p).copied().unwrap_or(low);
            let from = if at < low {
                tracing::warn!(stream = %self.name, partition = p, expected = at, earliest = low, "offsets deleted by retention before they were read: resuming at the earliest");
                low
            } else {
                at
            };
            if high < from {
                return Err(self.error(format!(
                    "partition {p} of `{}` ends at offset {high}, before offset {from} that this \
                     stream already planned (was the topic deleted and re-created?)",
                    self.options.topic
                )));
            }
            let mut until = cap.map_or(high, |c| high.min(from.saturating_add(c)));
            if let Some(bytes) = self.options.max_bytes_per_partition
                && until > from
            {
                let bytes = bytes.saturating_mul(self.interval_ms) / 1000;
                let per_offset = match self.bytes_per_offset() {
                    Some(b) => Some(b),
                    None => self.sample_bytes_per_offset(p, from, until),
                };
                if let Some(per_offset) = per_offset {
                    // At least one offset, so that a record larger than the cap still moves.
                    let offsets = ((bytes as f64 / per_offset.max(1.0)) as i64).max(1);
                    until = until.min(from.saturating_add(offsets));
                }
            }
            positions.insert(p, until);
            if until > from {
                reading.insert(p);
            }
            ranges.push(OffsetRange {
                topic: self.options.topic.clone(),
                partition: p,
                from,
                until,
            });
        }
        // Registered under the positions lock: a revocation that removed a partition sees
        // every batch planned over it.
        self.in_flight.planned(time, reading);
        Ok(ranges)
    }

    /// The mean bytes per offset of this stream's reads so far (`None` before any).
    fn bytes_per_offset(&self) -> Option<f64> {
        let offsets = self.sized_offsets.load(Ordering::Relaxed);
        (offsets > 0).then(|| self.sized_bytes.load(Ordering::Relaxed) as f64 / offsets as f64)
    }

    /// Reads the first few records of `[from, until)` of partition `p` to learn the bytes per
    /// offset (then kept by [`KafkaShared::read_range`]); `None` if the read failed (the
    /// batch is then planned with the offsets cap alone).
    fn sample_bytes_per_offset(&self, p: i32, from: i64, until: i64) -> Option<f64> {
        let sample = OffsetRange {
            topic: self.options.topic.clone(),
            partition: p,
            from,
            until: until.min(from.saturating_add(SIZE_SAMPLE_OFFSETS)),
        };
        match self.read_range_counted(&sample, false) {
            Ok(_) => self.bytes_per_offset(),
            Err(e) => {
                tracing::warn!(stream = %self.name, partition = p, error = %e, "cannot sample the record size: this batch is capped by offsets only");
                None
            }
        }
    }

    fn remember(&self, time: BatchTime, ranges: Vec<OffsetRange>) {
        let mut all = lock(&self.ranges);
        all.insert(time, ranges);
        while all.len() > RANGES_KEPT {
            all.pop_first();
        }
    }

    /// Reads a planned block's range, sharing one broker read with a prefetch of it (see
    /// [`Prefetch`]); a block that is not being prefetched is simply read.
    fn read_block(&self, id: BlockId, range: &OffsetRange) -> Result<Bytes> {
        let entry = lock(&self.prefetched).get(&id).cloned();
        match entry {
            Some(entry) => self.read_shared(&entry, range).map(|(bytes, _)| bytes),
            None => self.read_range(range),
        }
    }

    /// The bytes of `entry`'s block: its read's, if done or under way, or read now; and
    /// whether this call read them from the broker.
    fn read_shared(&self, entry: &Prefetch, range: &OffsetRange) -> Result<(Bytes, bool)> {
        {
            let mut state = lock(&entry.state);
            loop {
                match &*state {
                    PrefetchState::Read(bytes) => return Ok((bytes.clone(), false)),
                    PrefetchState::Reading => {
                        state = entry.read.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                    PrefetchState::Queued | PrefetchState::Failed => {
                        *state = PrefetchState::Reading;
                        break;
                    }
                }
            }
        }
        let mut guard = ReadingGuard(entry, false);
        let bytes = self.read_range(range)?;
        *lock(&entry.state) = PrefetchState::Read(bytes.clone());
        guard.1 = true;
        entry.read.notify_all();
        Ok((bytes, true))
    }

    /// Reads `[from, until)` of one partition as newline-terminated values.
    fn read_range(&self, range: &OffsetRange) -> Result<Bytes> {
        self.read_range_counted(range, true)
    }

    /// [`KafkaShared::read_range`]; `counted`: whether its records count in
    /// [`KafkaOffsets::records_read`] (a size sample does not).
    fn read_range_counted(&self, range: &OffsetRange, counted: bool) -> Result<Bytes> {
        // Sized from what earlier reads saw (so the buffer is not copied as it grows), and
        // never above 256 MiB up front.
        let guess = self.bytes_per_offset().unwrap_or(64.0) * 1.05;
        let mut out = Vec::with_capacity(((range.span() as f64 * guess) as usize).min(256 << 20));
        if range.until <= range.from {
            return Ok(Bytes::new());
        }
        let consumer = match lock(&self.readers).pop() {
            Some(c) => c,
            None => client_config(&self.options, self.options.group_id.as_deref())
                .create::<BaseConsumer>()
                .map_err(|e| {
                    self.error(format!(
                        "cannot create a Kafka consumer for {}: {e}",
                        self.options.bootstrap
                    ))
                })?,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&range.topic, range.partition, Offset::Offset(range.from))
            .map_err(|e| self.error(format!("bad offset {}: {e}", range.from)))?;
        consumer
            .assign(&tpl)
            .map_err(|e| self.error(format!("cannot assign partition {}: {e}", range.partition)))?;
        let mut next = range.from;
        let mut records = 0u64;
        let mut last_progress = Instant::now();
        let done = loop {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => {
                    if m.partition() != range.partition
                        || m.topic() != range.topic
                        || m.offset() < next
                    {
                        continue; // prefetched for an earlier assignment
                    }
                    if m.offset() >= range.until {
                        break Ok(());
                    }
                    next = m.offset() + 1;
                    last_progress = Instant::now();
                    if let Some(v) = m.payload() {
                        out.extend_from_slice(v);
                        if v.last() != Some(&b'\n') {
                            out.push(b'\n');
                        }
                        records += 1;
                    }
                    if next >= range.until {
                        break Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) if p == range.partition => {
                    // The end of the partition. If this assignment's position is at or past
                    // `until`, every record of the range was delivered and the rest of the
                    // range is a compaction gap.
                    let at = consumer.position().ok().and_then(|tpl| {
                        tpl.find_partition(&range.topic, range.partition)
                            .and_then(|e| match e.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            })
                    });
                    if at.is_some_and(|o| o >= range.until) {
                        break Ok(());
                    }
                }
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))) => {
                    break Err(self.error(format!(
                        "topic `{}` partition {} no longer exists at {} (batch needs offsets {}..{})",
                        range.topic, range.partition, self.options.bootstrap, range.from, range.until
                    )));
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(stream = %self.name, partition = range.partition, error = %e, "Kafka read error; retrying");
                }
            }
            if last_progress.elapsed() > self.options.broker_timeout {
                break Err(self.error(format!(
                    "no progress reading offsets {}..{} of partition {} of `{}` from {} for {:?} \
                     (stuck at offset {next}; is the broker up?)",
                    range.from,
                    range.until,
                    range.partition,
                    range.topic,
                    self.options.bootstrap,
                    self.options.broker_timeout
                )));
            }
        };
        let _ = consumer.unassign();
        lock(&self.readers).push(consumer);
        done?;
        if counted {
            self.records_read.fetch_add(records, Ordering::Relaxed);
        }
        // The whole range was read (gaps included: they cost no bytes).
        self.sized_bytes
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        self.sized_offsets
            .fetch_add(range.span().max(1), Ordering::Relaxed);
        Ok(Bytes::from(out))
    }
}

/// The source as the driver sees it.
pub(crate) struct KafkaInput(pub Arc<KafkaShared>);

impl DirectInput for KafkaInput {
    fn handler(&self) -> Arc<dyn ReceivedBlockHandler> {
        Arc::new(KafkaReader(Arc::clone(&self.0)))
    }

    fn plan(&self, stream: StreamId, time: BatchTime) -> Result<Vec<StoredBlock>> {
        let ranges = self.0.plan_ranges(time)?;
        let blocks = ranges
            .iter()
            .filter(|r| r.until > r.from)
            .map(|r| stored_block(stream, time, r))
            .collect::<Result<Vec<_>>>()?;
        self.0.remember(time, ranges);
        Ok(blocks)
    }

    fn prefetches(&self) -> bool {
        true
    }

    fn prefetch_planned(&self, blocks: &[StoredBlock]) {
        let mut prefetched = lock(&self.0.prefetched);
        for b in blocks {
            prefetched.entry(b.id).or_default();
        }
    }

    fn prefetch(&self, block: &StoredBlock) -> Option<Result<Bytes>> {
        let entry = lock(&self.0.prefetched).get(&block.id).cloned()?;
        let read = decode_locator(&self.0.name, block)
            .and_then(|loc| self.0.read_shared(&entry, &loc.range));
        Some(read.map(|(bytes, fetched)| {
            if fetched {
                self.0.blocks_prefetched.fetch_add(1, Ordering::Relaxed);
            }
            bytes
        }))
    }

    fn prefetch_done(&self, id: BlockId) {
        lock(&self.0.prefetched).remove(&id);
    }
}

fn decode_locator(stream: &str, stored: &StoredBlock) -> Result<KafkaLocator> {
    postcard::from_bytes::<KafkaLocator>(&stored.locator).map_err(|e| Error::BlockStore {
        stream: stream.to_owned(),
        block: stored.id,
        message: format!("corrupt Kafka offset-range locator: {e}"),
    })
}

fn stored_block(stream: StreamId, time: BatchTime, range: &OffsetRange) -> Result<StoredBlock> {
    let locator = KafkaLocator {
        range: range.clone(),
        batch_time_ms: time.as_millis(),
    };
    Ok(StoredBlock {
        id: block_id(stream, time, range.partition),
        records: range.span(),
        len_bytes: 0,
        source_offsets: Some(
            u64::try_from(range.from).unwrap_or(0)..u64::try_from(range.until).unwrap_or(0),
        ),
        locator: postcard::to_stdvec(&locator).map_err(|e| Error::Receiver {
            stream: format!("kafka {}", range.topic),
            message: format!("cannot encode an offset range: {e}"),
        })?,
    })
}

/// Reads planned ranges back from the broker.
struct KafkaReader(Arc<KafkaShared>);

impl ReceivedBlockHandler for KafkaReader {
    fn mode(&self) -> &'static str {
        "replay"
    }

    fn store(&self, block: Block) -> BoxFuture<Result<StoredBlock>> {
        let error = Error::BlockStore {
            stream: self.0.name.clone(),
            block: block.id,
            message: "a Kafka direct stream has no receiver to store blocks".to_owned(),
        };
        Box::pin(async move { Err(error) })
    }

    fn consumed(&self, _id: BlockId) {}

    fn read(&self, stored: &StoredBlock) -> BoxFuture<Result<Option<Bytes>>> {
        let shared = &self.0;
        let result = decode_locator(&shared.name, stored).and_then(|loc| {
            let time = BatchTime::from_millis(loc.batch_time_ms);
            // A batch restored from a metadata log was not planned here: learn its ranges.
            {
                let mut all = lock(&shared.ranges);
                let ranges = all.entry(time).or_default();
                if !ranges.contains(&loc.range) {
                    ranges.push(loc.range.clone());
                    ranges.sort();
                }
            }
            shared.read_block(stored.id, &loc.range).map(Some)
        });
        Box::pin(async move { result })
    }

    fn cleanup(&self, blocks: &[StoredBlock]) -> BoxFuture<Result<()>> {
        // Bytes a prefetch kept for a batch that is over.
        let mut prefetched = lock(&self.0.prefetched);
        for b in blocks {
            prefetched.remove(&b.id);
        }
        Box::pin(async { Ok(()) })
    }
}

/// The source's offsets, for user code and for sinks that store them.
#[derive(Clone)]
pub struct KafkaOffsets(pub(crate) Arc<KafkaShared>);

impl std::fmt::Debug for KafkaOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOffsets")
            .field("stream", &self.0.name)
            .finish_non_exhaustive()
    }
}

impl KafkaOffsets {
    /// The offset ranges the batch at `time` reads, one per partition (empty ranges
    /// included), sorted by partition; `None` for a batch this process does not know.
    pub fn offset_ranges(&self, time: BatchTime) -> Option<Vec<OffsetRange>> {
        lock(&self.0.ranges).get(&time).cloned()
    }

    /// The next offset to plan, per partition.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        lock(&self.0.positions).clone()
    }

    /// The partitions the source may read: the ones given or every partition of the topic
    /// (in subscribe mode, every partition of the topic; see [`KafkaOffsets::assigned`]).
    pub fn partitions(&self) -> &[i32] {
        &self.0.partitions
    }

    /// The partitions planned now (in subscribe mode, the ones the group assigns here).
    pub fn assigned(&self) -> Vec<i32> {
        lock(&self.0.positions).keys().copied().collect()
    }

    /// In subscribe mode, leaves the consumer group now, so that the other members take
    /// over this source's partitions at once rather than after the session timeout. Call it
    /// after the context stopped. Does nothing in assign mode.
    pub fn leave_group(&self) {
        if let Some(m) = &self.0.membership {
            m.leave();
        }
    }

    /// Per partition, the high watermark now (the offset after the last record).
    pub fn end_offsets(&self) -> Result<BTreeMap<i32, i64>> {
        self.0
            .partitions
            .iter()
            .map(|&p| {
                self.0
                    .watermarks(p, Duration::from_secs(10))
                    .map(|(_, high)| (p, high))
                    .map_err(|e| {
                        self.0.error(format!(
                            "cannot read the end offsets of `{}` at {}: {e}",
                            self.0.options.topic, self.0.options.bootstrap
                        ))
                    })
            })
            .collect()
    }

    /// Commits the batch's `until` offsets to Kafka for the group id (call it after the
    /// batch's outputs completed, e.g. from a listener's `on_batch_completed`). Kafka's
    /// committed offsets are then a resume point for `StartingOffsets::Committed`; they are
    /// not what makes a sink exactly-once.
    pub fn commit(&self, time: BatchTime) -> Result<()> {
        let Some(ranges) = self.offset_ranges(time) else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        for r in &ranges {
            tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.until))
                .map_err(|e| self.0.error(format!("bad offset {}: {e}", r.until)))?;
        }
        let committed = match &self.0.membership {
            // A member commits as a member of the current generation.
            Some(m) => m.consumer().commit(&tpl, CommitMode::Sync),
            None => lock(&self.0.meta).commit(&tpl, CommitMode::Sync),
        };
        committed.map_err(|e| {
            let code = e.rdkafka_error_code();
            let owned_by_group = matches!(
                code,
                Some(
                    RDKafkaErrorCode::UnknownMemberId
                        | RDKafkaErrorCode::IllegalGeneration
                        | RDKafkaErrorCode::RebalanceInProgress
                )
            );
            if owned_by_group && self.0.membership.is_none() {
                self.0.error(format!(
                    "cannot commit offsets of batch {time} to {}: group {:?} has active members \
                     (another consumer subscribed with this group id owns the partitions of `{}`), \
                     and this stream assigns its partitions itself: use subscribe mode or \
                     another group id ({e})",
                    self.0.options.bootstrap, self.0.options.group_id, self.0.options.topic
                ))
            } else if owned_by_group {
                self.0.error(format!(
                    "cannot commit offsets of batch {time} to {}: the partitions were revoked \
                     from this member of group {:?} by a rebalance ({e})",
                    self.0.options.bootstrap, self.0.options.group_id
                ))
            } else {
                self.0.error(format!(
                    "cannot commit offsets of batch {time} to {} (group {:?}): {e}",
                    self.0.options.bootstrap, self.0.options.group_id
                ))
            }
        })
    }

    /// The allocation that re-runs a batch over exactly `ranges` (for a restart from a
    /// sink's stored progress: see `sink::postgres`).
    pub fn allocation(
        &self,
        stream: StreamId,
        time: BatchTime,
        ranges: &[OffsetRange],
    ) -> Result<Allocation> {
        let blocks = ranges
            .iter()
            .filter(|r| r.until > r.from)
            .map(|r| stored_block(stream, time, r))
            .collect::<Result<Vec<_>>>()?;
        self.0.remember(time, ranges.to_vec());
        let mut alloc = Allocation {
            time,
            blocks: BTreeMap::new(),
        };
        if !blocks.is_empty() {
            alloc.blocks.insert(stream, blocks);
        }
        Ok(alloc)
    }

    /// Moves the planning positions (before the context starts), e.g. past a batch that a
    /// restart re-runs from recorded ranges.
    pub fn seek(&self, offsets: &BTreeMap<i32, i64>) {
        let mut positions = lock(&self.0.positions);
        for (p, o) in offsets {
            if positions.contains_key(p) {
                positions.insert(*p, *o);
            }
        }
    }

    /// Records read from the broker by this process (re-reads included).
    pub fn records_read(&self) -> u64 {
        self.0.records_read.load(Ordering::Relaxed)
    }

    /// Blocks (partition ranges of a batch) that were read from the broker ahead of their
    /// batch by a prefetch (`Config::direct_prefetch_blocks_max`), rather than by the
    /// batch itself.
    pub fn blocks_prefetched(&self) -> u64 {
        self.0.blocks_prefetched.load(Ordering::Relaxed)
    }
}

/// Connects (bounded retries), checks the topic, resolves the starting offsets.
pub(crate) fn open(
    name: String,
    options: KafkaOptions,
    interval_ms: u64,
) -> Result<Arc<KafkaShared>> {
    let err = |message: String| Error::Receiver {
        stream: name.clone(),
        message,
    };
    let meta: BaseConsumer = client_config(&options, options.group_id.as_deref())
        .create()
        .map_err(|e| {
            err(format!(
                "invalid Kafka client settings for {}: {e}",
                options.bootstrap
            ))
        })?;
    let attempts = options.connect_attempts.max(1);
    let mut metadata = None;
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        match meta.fetch_metadata(Some(&options.topic), Duration::from_secs(3)) {
            Ok(m) => {
                metadata = Some(m);
                break;
            }
            Err(e) => {
                last_error = e.to_string();
                tracing::warn!(bootstrap = %options.bootstrap, attempt, attempts, error = %e, "cannot reach Kafka yet");
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            }
        }
    }
    let Some(metadata) = metadata else {
        return Err(err(format!(
            "cannot reach Kafka at {} after {attempts} attempts: {last_error}",
            options.bootstrap
        )));
    };
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == options.topic)
        .ok_or_else(|| {
            err(format!(
                "topic `{}` is not known at {}",
                options.topic, options.bootstrap
            ))
        })?;
    if let Some(e) = topic.error() {
        return Err(err(format!(
            "topic `{}` at {}: {:?} (does the topic exist?)",
            options.topic,
            options.bootstrap,
            RDKafkaErrorCode::from(e)
        )));
    }
    let mut available: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    available.sort_unstable();
    if available.is_empty() {
        return Err(err(format!(
            "topic `{}` at {} has no partitions (does the topic exist?)",
            options.topic, options.bootstrap
        )));
    }
    if options.subscribe {
        if options.group_id.is_none() {
            return Err(Error::Config {
                setting: "group_id",
                message: "subscribe mode needs a consumer group id".to_owned(),
            });
        }
        if options.partitions.is_some() {
            return Err(Error::Config {
                setting: "partitions",
                message: "subscribe mode reads the partitions the group assigns; partitions \
                          cannot also be given"
                    .to_owned(),
            });
        }
    } else if let Some(group) = &options.group_id {
        refuse_active_group(&meta, group, &options).map_err(err)?;
    }
    let partitions = match &options.partitions {
        None => available,
        Some(wanted) => {
            if let Some(p) = wanted.iter().find(|p| !available.contains(p)) {
                return Err(err(format!(
                    "partition {p} of topic `{}` does not exist at {} (it has {:?})",
                    options.topic, options.bootstrap, available
                )));
            }
            let mut w = wanted.clone();
            w.sort_unstable();
            w.dedup();
            w
        }
    };
    let committed = match &options.starting_offsets {
        // In subscribe mode, positions are resolved when partitions are assigned.
        _ if options.subscribe => BTreeMap::new(),
        StartingOffsets::Committed => {
            if options.group_id.is_none() {
                return Err(Error::Config {
                    setting: "group_id",
                    message: "starting from committed offsets needs a group id".to_owned(),
                });
            }
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition(&options.topic, p);
            }
            let c = meta
                .committed_offsets(tpl, Duration::from_secs(10))
                .map_err(|e| {
                    err(format!(
                        "cannot read committed offsets from {}: {e}",
                        options.bootstrap
                    ))
                })?;
            c.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        }
        StartingOffsets::Explicit(m) => m.clone(),
        _ => BTreeMap::new(),
    };
    let mut positions = BTreeMap::new();
    for &p in partitions.iter().filter(|_| !options.subscribe) {
        let (low, high) = meta
            .fetch_watermarks(&options.topic, p, Duration::from_secs(10))
            .map_err(|e| {
                err(format!(
                    "cannot read the offsets of partition {p} of `{}` at {}: {e}",
                    options.topic, options.bootstrap
                ))
            })?;
        let at = match &options.starting_offsets {
            StartingOffsets::Earliest => low,
            StartingOffsets::Latest => high,
            StartingOffsets::Committed | StartingOffsets::Explicit(_) => {
                committed.get(&p).copied().unwrap_or(low)
            }
        };
        positions.insert(p, at);
    }
    tracing::info!(stream = %name, bootstrap = %options.bootstrap, topic = %options.topic, ?positions, subscribe = options.subscribe, "Kafka direct stream starts");
    let positions = Arc::new(Mutex::new(positions));
    let in_flight = Arc::new(group::InFlight::default());
    let membership = if options.subscribe {
        Some(group::Membership::join(Arc::new(group::GroupState {
            name: name.clone(),
            options: options.clone(),
            positions: Arc::clone(&positions),
            in_flight: Arc::clone(&in_flight),
            failure: Mutex::default(),
            closing: Default::default(),
        }))?)
    } else {
        None
    };
    Ok(Arc::new(KafkaShared {
        name,
        options,
        interval_ms,
        partitions,
        positions,
        in_flight,
        membership,
        ranges: Mutex::default(),
        meta: Mutex::new(meta),
        readers: Mutex::default(),
        unreachable_since: Mutex::default(),
        records_read: AtomicU64::new(0),
        prefetched: Mutex::default(),
        blocks_prefetched: AtomicU64::new(0),
        sized_bytes: AtomicU64::new(0),
        sized_offsets: AtomicU64::new(0),
    }))
}

impl crate::StreamingContext {
    /// A Kafka topic as a direct stream of lines (each record's value is one line): see
    /// [`crate::source::kafka`]. Connects now (bounded retries), so an unreachable broker or
    /// an unknown topic is reported here. The returned [`KafkaOffsets`] gives each batch's
    /// offset ranges to user code and to sinks.
    pub fn kafka_stream(
        &self,
        options: KafkaOptions,
    ) -> Result<(crate::DStream<crate::Str>, KafkaOffsets)> {
        let name = format!("kafka_stream({}/{})", options.bootstrap, options.topic);
        let shared = open(name.clone(), options, self.config().batch_interval_ms)?;
        let stream = self.add_input(
            name,
            super::InputKind::Direct(Arc::new(KafkaInput(Arc::clone(&shared)))),
            Arc::new(crate::block::LinesCodec),
            "kafka_stream",
        )?;
        self.add_listener(Arc::new(CompletedBatches(Arc::clone(&shared.in_flight))));
        Ok((stream, KafkaOffsets(shared)))
    }
}

/// Tells the source which planned batches completed (what a revocation waits for).
struct CompletedBatches(Arc<group::InFlight>);

impl crate::StreamingListener for CompletedBatches {
    fn on_batch_completed(&self, batch: &crate::BatchInfo) {
        self.0.completed(batch.batch_time);
    }
}

/// In assign mode with a group id: refuses to start while that group has active members.
/// Their partitions are theirs; reading them here too would count them twice.
fn refuse_active_group(
    meta: &BaseConsumer,
    group: &str,
    options: &KafkaOptions,
) -> std::result::Result<(), String> {
    match meta.fetch_group_list(Some(group), Duration::from_secs(5)) {
        Ok(list) => {
            if let Some(g) = list
                .groups()
                .iter()
                .find(|g| g.name() == group && !g.members().is_empty())
            {
                return Err(format!(
                    "consumer group {group:?} at {} has {} active member(s) (state {}) that own \
                     the partitions of `{}`; this stream assigns partitions itself and would \
                     read them too: run it in subscribe mode (kafka://...?group={group}) or use \
                     another group id",
                    options.bootstrap,
                    g.members().len(),
                    g.state(),
                    options.topic
                ));
            }
            Ok(())
        }
        Err(e) => {
            tracing::debug!(%group, error = %e, "cannot describe the consumer group; not checked for active members");
            Ok(())
        }
    }
}
