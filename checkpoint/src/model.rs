//! The checkpoint data model: [`Checkpoint`] and what it is made of. Data only, never
//! closures: everything here is plain values the engine fills in, and the pipeline graph
//! itself is rebuilt from code at restart ([`GraphDescription`] is only a description of it,
//! compared with the current one by [`crate::compat`]).
//!
//! Units are in the names: `_ms` is milliseconds since the Unix epoch (batch times) or a
//! duration in milliseconds (intervals); [`Lsn`] is a WAL position; `offset` is only ever a
//! source (Kafka) offset.
//!
//! # Extending the model
//!
//! The body is JSON (see the crate docs). A field added later must be optional
//! (`#[serde(default)]`), so that this version's readers and the next one's read each
//! other's checkpoints: an old reader ignores fields it does not know, a new reader fills
//! in the default for fields an old writer did not write. A change an old reader would
//! misread (a new meaning for an existing field, a new enum variant, a required field)
//! needs a new [`FORMAT_VERSION`], which old readers refuse with a clear error.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use wal::Lsn;

use crate::error::{Error, Result};
use crate::format::{self, HEADER_BYTES, Kind};

/// The checkpoint format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The longest operator id. Ids become part of snapshot names, which must stay well inside
/// file-name and object-key limits.
pub const OPERATOR_ID_MAX_CHARS: usize = 128;

/// The name used in errors about a checkpoint that is being built rather than read.
pub const NEW_CHECKPOINT: &str = "(new checkpoint)";

/// Identifies a received block: its input stream and its sequence number in that stream
/// (the engine's `BlockId`). Unique across restarts of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockId {
    /// The input stream.
    pub stream: u32,
    /// The block's sequence number within the stream.
    pub seq: u64,
}

/// Everything a checkpoint holds, as plain public fields: build one, then validate it into
/// a [`Checkpoint`] with [`Checkpoint::new`]. See the crate docs for what each part is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointParts {
    /// The batch time of the checkpoint: the newest batch the scheduler had generated
    /// (allocated) when it was taken. On the grid: `zero_time_ms + k * batch_interval_ms`,
    /// `k >= 0`.
    pub batch_time_ms: u64,
    /// The batch interval of the grid. A restart keeps it (pending batches are on it).
    pub batch_interval_ms: u64,
    /// The zero time of the grid: batch `k` is at `zero_time_ms + k * batch_interval_ms`.
    pub zero_time_ms: u64,
    /// Every record of the driver's metadata log with an Lsn up to and including this one
    /// is reflected in the checkpoint; a restart replays the log from the next Lsn. `Lsn(0)`:
    /// none (replay from the start).
    #[serde(with = "lsn_serde")]
    pub metadata_log_lsn: Lsn,
    /// Batches allocated but not completed, oldest first, with their inputs. A restart
    /// re-runs them.
    #[serde(default)]
    pub pending_batches: Vec<BatchInputs>,
    /// Completed batches whose inputs later batches still read (window operators look
    /// back); a restart needs them to recompute a window. Oldest first.
    #[serde(default)]
    pub remembered_batches: Vec<BatchInputs>,
    /// Blocks received and acknowledged but not yet allocated to a batch, per stream. They
    /// go to the first batch generated after a restart.
    #[serde(default)]
    pub unallocated: Vec<StreamInput>,
    /// Per input stream: records of its data WAL below this Lsn are not needed by this
    /// checkpoint.
    #[serde(default)]
    pub data_wal_truncation: Vec<WalTruncation>,
    /// The state snapshot of each stateful operator, as written by
    /// [`crate::CheckpointStore::put_snapshot`].
    #[serde(default)]
    pub state_snapshots: Vec<StateRef>,
    /// The pipeline graph that wrote this checkpoint, for the compatibility check.
    pub graph: GraphDescription,
    /// Free-form positions sources need to resume, per stream (for example the
    /// acknowledged line number of the acknowledged test source).
    #[serde(default)]
    pub source_positions: Vec<SourcePosition>,
}

/// The inputs of one batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchInputs {
    /// The batch's time, on the grid (`k >= 1`).
    pub batch_time_ms: u64,
    /// What each input stream contributed, one entry per stream.
    #[serde(default)]
    pub inputs: Vec<StreamInput>,
}

/// What one input stream contributes to a batch (or holds unallocated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInput {
    /// The input stream.
    pub stream: u32,
    /// The data, in the form the stream's durability mode records.
    pub data: InputData,
}

/// The recorded inputs of one stream in one batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputData {
    /// Received blocks (hot replication, WAL, ignore modes), in block order.
    Blocks(Vec<BlockRef>),
    /// Source offset ranges (upstream replay from Kafka): a recomputation re-reads exactly
    /// these.
    OffsetRanges(Vec<OffsetRange>),
    /// Files read from a directory source, in the order they were read.
    Files(Vec<String>),
}

/// One received block and where its data can be read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// The block's sequence number in its stream.
    pub seq: u64,
    /// Records in the block.
    pub records: u64,
    /// The block's length in bytes.
    pub len_bytes: u64,
    /// Where its data is.
    pub location: BlockLocation,
}

/// Where a block's data survives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockLocation {
    /// Write-ahead-log mode: record `lsn` of the data WAL of stream `log_stream`.
    Wal {
        /// The stream whose data log holds the record.
        log_stream: u32,
        /// The record's Lsn.
        #[serde(with = "lsn_serde")]
        lsn: Lsn,
    },
    /// Hot-replication mode: in the block stores of these executors (`host:port`).
    Replicas(Vec<String>),
    /// Ignore mode: only in the memory of the executor that received it. If that is lost,
    /// so is the block, and the loss is counted.
    MemoryOnly,
}

/// A source offset range of one partition: `[from_offset, until_offset)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// First offset, inclusive.
    pub from_offset: u64,
    /// End offset, exclusive.
    pub until_offset: u64,
}

/// Where a stream's data WAL may be truncated as far as one checkpoint is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalTruncation {
    /// The stream whose data log this is.
    pub stream: u32,
    /// Records below this Lsn are not needed (`wal::Wal::truncate_before`). At least 1.
    #[serde(with = "lsn_serde")]
    pub truncate_before: Lsn,
}

/// A reference to one operator's state snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRef {
    /// The operator's stable identity ([`OperatorDesc::id`]).
    pub operator: String,
    /// The batch time the snapshot was taken at (on the grid).
    pub taken_at_ms: u64,
    /// The snapshot's name in the checkpoint location.
    pub object: String,
    /// CRC-32 of the snapshot's body (the state bytes, without the envelope).
    pub crc32: u32,
    /// Length of the snapshot's body in bytes.
    pub len_bytes: u64,
}

/// Free-form resume positions of one stream's source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// The input stream.
    pub stream: u32,
    /// Key-value pairs the source defines (e.g. `acked_line` = `"12345"`).
    pub position: BTreeMap<String, String>,
}

/// A description of the pipeline graph: enough to decide whether a restart with other code
/// can use the checkpoint (see [`crate::compat`]), and to show the graph to an operator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphDescription {
    /// Every operator, parents before children (the order is kept for display).
    pub operators: Vec<OperatorDesc>,
}

/// One operator of the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorDesc {
    /// Stable identity: the same code yields the same id across restarts, and state is
    /// keyed by it. 1 to 128 characters of `A-Z a-z 0-9 _ . -`.
    pub id: String,
    /// What it does ("socket_input", "map", "reduce_by_key", "update_state_by_key",
    /// "foreach_rdd", ...).
    pub kind: String,
    /// A human label (may change freely).
    #[serde(default)]
    pub name: String,
    /// Ids of the operators it reads from.
    #[serde(default)]
    pub parents: Vec<String>,
    /// For an input operator, its stream.
    #[serde(default)]
    pub input_stream: Option<u32>,
    /// True for an output operation (a sink).
    #[serde(default)]
    pub output: bool,
    /// For a stateful operator, the type of its state.
    #[serde(default)]
    pub state: Option<StateDesc>,
}

/// The type of a stateful operator's state, as its snapshots encode it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDesc {
    /// The key type's name.
    pub key_type: String,
    /// The state (or value) type's name.
    pub state_type: String,
    /// The version of the snapshot body format.
    pub version: u32,
}

/// A validated checkpoint: the parts, checked against every invariant in the crate docs.
/// Immutable; read it through [`Checkpoint::parts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    parts: CheckpointParts,
    format_version: u32,
}

impl Checkpoint {
    /// Validates `parts` into a checkpoint. Lists that are sets (batches by time, inputs by
    /// stream, blocks by sequence number, snapshots by operator, ...) are sorted; lists whose
    /// order is data (offset ranges, files, graph operators) are kept as given.
    ///
    /// Errors with [`Error::Invalid`] naming the field and what is wrong.
    pub fn new(parts: CheckpointParts) -> Result<Checkpoint> {
        Checkpoint::validated(NEW_CHECKPOINT, parts, FORMAT_VERSION)
    }

    fn validated(
        name: &str,
        mut parts: CheckpointParts,
        format_version: u32,
    ) -> Result<Checkpoint> {
        validate(&mut parts).map_err(|(field, reason)| Error::Invalid {
            name: name.to_owned(),
            field,
            reason,
        })?;
        Ok(Checkpoint {
            parts,
            format_version,
        })
    }

    /// The content.
    pub fn parts(&self) -> &CheckpointParts {
        &self.parts
    }

    /// The content, by value.
    pub fn into_parts(self) -> CheckpointParts {
        self.parts
    }

    /// The format version it was read in ([`FORMAT_VERSION`] for a new one).
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// The checkpoint's batch time.
    pub fn batch_time_ms(&self) -> u64 {
        self.parts.batch_time_ms
    }

    /// The snapshot reference of an operator, if it has one.
    pub fn state_ref(&self, operator: &str) -> Option<&StateRef> {
        self.parts
            .state_snapshots
            .iter()
            .find(|r| r.operator == operator)
    }

    /// Every input stream the checkpoint refers to anywhere.
    pub fn streams(&self) -> BTreeSet<u32> {
        let p = &self.parts;
        let mut streams = BTreeSet::new();
        for batch in p.pending_batches.iter().chain(&p.remembered_batches) {
            streams.extend(batch.inputs.iter().map(|i| i.stream));
        }
        streams.extend(p.unallocated.iter().map(|i| i.stream));
        streams.extend(p.data_wal_truncation.iter().map(|t| t.stream));
        streams.extend(p.source_positions.iter().map(|s| s.stream));
        streams
    }
}

/// A checkpoint as stored: the checkpoint and its sequence number in its location (see
/// [`crate::names`]). The sequence is inside the body as well as in the file name, so a file
/// stored under another checkpoint's name is detected ([`Error::Misplaced`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The publish number in its location.
    pub sequence: u64,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
}

#[derive(Serialize)]
struct BodyOut<'a> {
    sequence: u64,
    checkpoint: &'a CheckpointParts,
}

#[derive(Deserialize)]
struct BodyIn {
    sequence: u64,
    checkpoint: CheckpointParts,
}

impl StoredCheckpoint {
    /// The bytes of the checkpoint file: the envelope around the JSON body (see the crate
    /// docs, "Byte format").
    pub fn encode(&self) -> Vec<u8> {
        format::seal(Kind::Checkpoint, &self.encode_body())
    }

    /// The JSON body alone: `{"sequence":N,"checkpoint":{...}}`.
    pub fn encode_body(&self) -> Vec<u8> {
        let body = BodyOut {
            sequence: self.sequence,
            checkpoint: &self.checkpoint.parts,
        };
        // Plain structs with string keys and integer values: serializing cannot fail.
        serde_json::to_vec(&body).expect("a checkpoint always serializes to JSON")
    }

    /// Reads a checkpoint file. `name` is its path or key, used in errors. Checks the
    /// envelope ([`format::open`]), parses the body and validates the checkpoint like
    /// [`Checkpoint::new`]. Never panics, whatever the bytes.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<StoredCheckpoint> {
        let (version, body) = format::open(Kind::Checkpoint, name, bytes)?;
        let parsed: BodyIn = serde_json::from_slice(body).map_err(|e| Error::Decode {
            name: name.to_owned(),
            offset: HEADER_BYTES as u64 + byte_index(body, e.line(), e.column()),
            reason: e.to_string(),
        })?;
        Ok(StoredCheckpoint {
            sequence: parsed.sequence,
            checkpoint: Checkpoint::validated(name, parsed.checkpoint, version)?,
        })
    }
}

/// The byte index in `body` of serde_json's 1-based (line, column) position.
fn byte_index(body: &[u8], line: usize, column: usize) -> u64 {
    let mut index = 0usize;
    if line > 1 {
        let mut newlines = 0;
        for (i, b) in body.iter().enumerate() {
            if *b == b'\n' {
                newlines += 1;
                if newlines == line - 1 {
                    index = i + 1;
                    break;
                }
            }
        }
    }
    (index + column.saturating_sub(1)).min(body.len()) as u64
}

/// A failed check: `(field, reason)`.
type Check = std::result::Result<(), (String, String)>;

/// Checks the invariants, sorting set-like lists first.
fn validate(p: &mut CheckpointParts) -> Check {
    let fail = |field: &str, reason: String| Err((field.to_owned(), reason));
    let interval = p.batch_interval_ms;
    let zero = p.zero_time_ms;
    if interval == 0 {
        return fail("batch_interval_ms", "must be at least 1".to_owned());
    }
    let on_grid = |t: u64| t >= zero && (t - zero).is_multiple_of(interval);
    if !on_grid(p.batch_time_ms) {
        return fail(
            "batch_time_ms",
            format!(
                "{} is not on the grid (zero {zero} ms, interval {interval} ms)",
                p.batch_time_ms
            ),
        );
    }

    // The graph first: everything else refers to it.
    let mut ids = BTreeSet::new();
    let mut inputs = BTreeSet::new();
    let mut stateful = BTreeSet::new();
    for (i, op) in p.graph.operators.iter().enumerate() {
        let field = format!("graph.operators[{i}]");
        check_operator_id(&op.id).or_else(|r| fail(&format!("{field}.id"), r))?;
        if !ids.insert(op.id.as_str()) {
            return fail(
                &format!("{field}.id"),
                format!("duplicate operator id {:?}", op.id),
            );
        }
        if let Some(stream) = op.input_stream
            && !inputs.insert(stream)
        {
            return fail(
                &format!("{field}.input_stream"),
                format!("stream {stream} has two input operators"),
            );
        }
        if op.state.is_some() {
            stateful.insert(op.id.as_str());
        }
    }
    for (i, op) in p.graph.operators.iter().enumerate() {
        for parent in &op.parents {
            if !ids.contains(parent.as_str()) || parent == &op.id {
                return fail(
                    &format!("graph.operators[{i}].parents"),
                    format!("{parent:?} is not another operator of the graph"),
                );
            }
        }
    }
    let known_stream = |field: &str, stream: u32| {
        if inputs.contains(&stream) {
            Ok(())
        } else {
            fail(
                field,
                format!("stream {stream} has no input operator in the graph"),
            )
        }
    };

    for (list, name) in [
        (&mut p.pending_batches, "pending_batches"),
        (&mut p.remembered_batches, "remembered_batches"),
    ] {
        list.sort_by_key(|b| b.batch_time_ms);
        for (i, batch) in list.iter_mut().enumerate() {
            let field = format!("{name}[{i}]");
            let t = batch.batch_time_ms;
            if !on_grid(t) || t == zero {
                return fail(
                    &format!("{field}.batch_time_ms"),
                    format!(
                        "{t} is not a batch time of the grid (zero {zero} ms, interval {interval} ms)"
                    ),
                );
            }
            if t > p.batch_time_ms {
                return fail(
                    &format!("{field}.batch_time_ms"),
                    format!(
                        "{t} is after the checkpoint's batch time {}",
                        p.batch_time_ms
                    ),
                );
            }
            check_inputs(&field, &mut batch.inputs, &known_stream)?;
        }
        for pair in list.windows(2) {
            if pair[0].batch_time_ms == pair[1].batch_time_ms {
                return fail(
                    name,
                    format!("batch {} appears twice", pair[0].batch_time_ms),
                );
            }
        }
    }
    let pending: BTreeSet<u64> = p.pending_batches.iter().map(|b| b.batch_time_ms).collect();
    if let Some(b) = p
        .remembered_batches
        .iter()
        .find(|b| pending.contains(&b.batch_time_ms))
    {
        return fail(
            "remembered_batches",
            format!("batch {} is also pending", b.batch_time_ms),
        );
    }
    check_inputs("unallocated", &mut p.unallocated, &known_stream)?;

    p.data_wal_truncation.sort_by_key(|t| t.stream);
    for (i, t) in p.data_wal_truncation.iter().enumerate() {
        let field = format!("data_wal_truncation[{i}]");
        known_stream(&field, t.stream)?;
        if t.truncate_before == Lsn::new(0) {
            return fail(&field, "truncate_before must be at least Lsn 1".to_owned());
        }
        if i > 0 && p.data_wal_truncation[i - 1].stream == t.stream {
            return fail(&field, format!("stream {} appears twice", t.stream));
        }
    }

    p.state_snapshots
        .sort_by(|a, b| a.operator.cmp(&b.operator));
    for (i, r) in p.state_snapshots.iter().enumerate() {
        let field = format!("state_snapshots[{i}]");
        if !stateful.contains(r.operator.as_str()) {
            return fail(
                &field,
                format!(
                    "operator {:?} is not a stateful operator of the graph",
                    r.operator
                ),
            );
        }
        if i > 0 && p.state_snapshots[i - 1].operator == r.operator {
            return fail(
                &field,
                format!("operator {:?} has two snapshots", r.operator),
            );
        }
        if !on_grid(r.taken_at_ms) || r.taken_at_ms > p.batch_time_ms {
            return fail(
                &format!("{field}.taken_at_ms"),
                format!(
                    "{} is not a batch time of the grid at or before the checkpoint's",
                    r.taken_at_ms
                ),
            );
        }
        if crate::names::check_plain_name(&r.object).is_err() {
            return fail(
                &format!("{field}.object"),
                format!("{:?} is not a plain object name", r.object),
            );
        }
    }

    p.source_positions.sort_by_key(|s| s.stream);
    for (i, s) in p.source_positions.iter().enumerate() {
        let field = format!("source_positions[{i}]");
        known_stream(&field, s.stream)?;
        if i > 0 && p.source_positions[i - 1].stream == s.stream {
            return fail(&field, format!("stream {} appears twice", s.stream));
        }
    }
    Ok(())
}

fn check_inputs(
    field: &str,
    inputs: &mut [StreamInput],
    known_stream: &dyn Fn(&str, u32) -> Check,
) -> Check {
    inputs.sort_by_key(|i| i.stream);
    for (i, pair) in inputs.windows(2).enumerate() {
        if pair[0].stream == pair[1].stream {
            return Err((
                format!("{field}.inputs[{}]", i + 1),
                format!("stream {} appears twice", pair[0].stream),
            ));
        }
    }
    for (i, input) in inputs.iter_mut().enumerate() {
        let field = format!("{field}.inputs[{i}]");
        known_stream(&field, input.stream)?;
        match &mut input.data {
            InputData::Blocks(blocks) => {
                blocks.sort_by_key(|b| b.seq);
                for (j, b) in blocks.iter().enumerate() {
                    let field = format!("{field}.blocks[{j}]");
                    if j > 0 && blocks[j - 1].seq == b.seq {
                        return Err((field, format!("block {} appears twice", b.seq)));
                    }
                    match &b.location {
                        BlockLocation::Wal { log_stream, lsn } => {
                            known_stream(&field, *log_stream)?;
                            if *lsn == Lsn::new(0) {
                                return Err((field, "a WAL record's Lsn is at least 1".to_owned()));
                            }
                        }
                        BlockLocation::Replicas(peers) if peers.is_empty() => {
                            return Err((
                                field,
                                "a replicated block needs at least one peer".to_owned(),
                            ));
                        }
                        BlockLocation::Replicas(_) | BlockLocation::MemoryOnly => {}
                    }
                }
            }
            InputData::OffsetRanges(ranges) => {
                let mut seen = BTreeSet::new();
                for (j, r) in ranges.iter().enumerate() {
                    let field = format!("{field}.offset_ranges[{j}]");
                    if r.from_offset > r.until_offset {
                        return Err((
                            field,
                            format!(
                                "from_offset {} is after until_offset {}",
                                r.from_offset, r.until_offset
                            ),
                        ));
                    }
                    if !seen.insert((r.topic.as_str(), r.partition)) {
                        return Err((field, format!("{}/{} appears twice", r.topic, r.partition)));
                    }
                }
            }
            InputData::Files(files) => {
                let mut seen = BTreeSet::new();
                for (j, f) in files.iter().enumerate() {
                    if f.is_empty() || !seen.insert(f.as_str()) {
                        return Err((
                            format!("{field}.files[{j}]"),
                            format!("file name {f:?} is empty or appears twice"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Checks an operator id: 1 to [`OPERATOR_ID_MAX_CHARS`] characters of `A-Z a-z 0-9 _ . -`,
/// not `.` or `..` (ids become part of snapshot names).
pub fn check_operator_id(id: &str) -> std::result::Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if id.is_empty()
        || id.len() > OPERATOR_ID_MAX_CHARS
        || id == "."
        || id == ".."
        || !id.chars().all(ok_char)
    {
        return Err(format!(
            "operator id {id:?} must be 1 to {OPERATOR_ID_MAX_CHARS} characters of A-Z a-z 0-9 _ . -"
        ));
    }
    Ok(())
}

/// `Lsn` as a JSON number.
mod lsn_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use wal::Lsn;

    pub(super) fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(lsn.get())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        u64::deserialize(d).map(Lsn::new)
    }
}
