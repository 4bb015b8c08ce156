//! Output operations: `print`, `save_as_text_files`, `foreach_batch`.
//!
//! Each output operation is one job per batch; a batch runs its jobs one at a time, in the
//! order the operations were defined. A job that fails (an error or a panic in user code, an
//! I/O error) fails the batch, which stops the context and stays pending for a restart.
//!
//! `save_as_text_files` is idempotent: a batch's output directory is a function of the batch
//! time, each part file is written under a temporary name, synced and renamed into place,
//! and the batch's data is a deterministic function of its inputs, so re-running a batch
//! (after a crash) rewrites byte-identical files.

use std::fmt::{Debug, Write as _};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::dstream::node::{AnyNode, BatchCx, Data, NodeCell, OperatorId, catch, lock};
use crate::dstream::{BatchData, DStream};
use crate::error::{Error, Result};
use crate::text::Str;
use crate::time::BatchTime;

/// An output operation, as the batch runner sees it.
pub(crate) trait OutputOp: Send + Sync + 'static {
    /// The operation's identity.
    fn id(&self) -> OperatorId;
    /// Its kind ("print", ...).
    fn kind(&self) -> &'static str;
    /// `kind#id`, for metrics and errors.
    fn label(&self) -> &str;
    /// The node whose data the job writes.
    fn node(&self) -> Arc<dyn AnyNode>;
    /// Runs the job for `time`; `Ok(false)` if the stream has no batch at `time`.
    fn run(&self, cx: &BatchCx, time: BatchTime) -> Result<bool>;
}

type JobFn<T> = dyn FnMut(&BatchData<T>, BatchTime) -> std::result::Result<(), String> + Send;

struct ForEach<T> {
    id: OperatorId,
    kind: &'static str,
    label: String,
    node: Arc<NodeCell<T>>,
    f: Mutex<Box<JobFn<T>>>,
}

impl<T: Data> OutputOp for ForEach<T> {
    fn id(&self) -> OperatorId {
        self.id
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn node(&self) -> Arc<dyn AnyNode> {
        Arc::clone(&self.node) as Arc<dyn AnyNode>
    }

    fn run(&self, cx: &BatchCx, time: BatchTime) -> Result<bool> {
        let Some(data) = self.node.get(cx, time)? else {
            return Ok(false);
        };
        let mut f = lock(&self.f);
        catch(|| f(&data, time))
            .and_then(|r| r)
            .map_err(|message| Error::Job {
                batch_time: time,
                operator: self.label.clone(),
                message,
            })?;
        Ok(true)
    }
}

pub(crate) fn foreach_batch<T: Data>(
    stream: &DStream<T>,
    kind: &'static str,
    f: impl FnMut(&BatchData<T>, BatchTime) -> std::result::Result<(), String> + Send + 'static,
) {
    let node = stream.node();
    let id = stream.graph().operator_id(kind, "", &[stream.lineage()]);
    let op = ForEach {
        id,
        kind,
        label: format!("{kind}#{id}"),
        node,
        f: Mutex::new(Box::new(f)),
    };
    stream.graph().add_output(Arc::new(op));
}

pub(crate) fn print<T: Data + Debug>(stream: &DStream<T>, n: usize) {
    foreach_batch(stream, "print", move |data, time| {
        let text = print_text(data, time, n);
        // `print` is an output operation the user asked for: standard output is its sink.
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing to stdout: {e}"))
    });
}

/// What `print(n)` writes for one batch, in Spark's layout: a header with the batch time,
/// the first `n` records, and "..." when there are more.
fn print_text<T: Debug>(data: &BatchData<T>, time: BatchTime, n: usize) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "-------------------------------------------");
    let _ = writeln!(text, "Time: {} ms", time.as_millis());
    let _ = writeln!(text, "-------------------------------------------");
    for record in data.iter().take(n) {
        let _ = writeln!(text, "{record:?}");
    }
    if data.len() > n {
        let _ = writeln!(text, "...");
    }
    text.push('\n');
    text
}

pub(crate) fn save_as_text_files<T: Data + TextRecord>(
    stream: &DStream<T>,
    prefix: &Path,
    suffix: &str,
) {
    let prefix = prefix.to_path_buf();
    let suffix = suffix.to_owned();
    let node = stream.node();
    let id = stream.graph().operator_id(
        "save_as_text_files",
        &format!("{}|{suffix}", prefix.display()),
        &[stream.lineage()],
    );
    let label = format!("save_as_text_files#{id}");
    let op = SaveText {
        id,
        label,
        node,
        prefix,
        suffix,
    };
    stream.graph().add_output(Arc::new(op));
}

struct SaveText<T> {
    id: OperatorId,
    label: String,
    node: Arc<NodeCell<T>>,
    prefix: PathBuf,
    suffix: String,
}

impl<T: Data + TextRecord> OutputOp for SaveText<T> {
    fn id(&self) -> OperatorId {
        self.id
    }

    fn kind(&self) -> &'static str {
        "save_as_text_files"
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn node(&self) -> Arc<dyn AnyNode> {
        Arc::clone(&self.node) as Arc<dyn AnyNode>
    }

    fn run(&self, cx: &BatchCx, time: BatchTime) -> Result<bool> {
        let Some(data) = self.node.get(cx, time)? else {
            return Ok(false);
        };
        let dir = batch_dir(&self.prefix, &self.suffix, time);
        write_text_files(cx, &dir, &data)?;
        Ok(true)
    }
}

/// `prefix-<batch time ms>[.suffix]`, as Spark names them.
pub fn batch_dir(prefix: &Path, suffix: &str, time: BatchTime) -> PathBuf {
    let mut name = prefix.as_os_str().to_os_string();
    name.push(format!("-{}", time.as_millis()));
    if !suffix.is_empty() {
        name.push(".");
        name.push(suffix);
    }
    PathBuf::from(name)
}

fn write_text_files<T: TextRecord + Sync + Send>(
    cx: &BatchCx,
    dir: &Path,
    data: &BatchData<T>,
) -> Result<()> {
    let created = !dir.exists();
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let write_part = |(i, part): (usize, &[T])| -> Result<()> {
        let name = format!("part-{i:05}");
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        let mut line = String::new();
        for record in part {
            line.clear();
            record.write_text(&mut line);
            line.push('\n');
            out.write_all(line.as_bytes())
                .map_err(|e| Error::io("write", &tmp, e))?;
        }
        let file = out
            .into_inner()
            .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        let path = dir.join(&name);
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename into", &path, e))
    };
    let parts: Vec<(usize, &[T])> = data.partitions().enumerate().collect();
    cx.pool.install(|| {
        parts
            .into_par_iter()
            .map(write_part)
            .collect::<Result<Vec<()>>>()
    })?;
    // A re-run with fewer partitions (another configuration) must not leave stale parts.
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let stale = name
            .to_str()
            .and_then(|n| n.strip_prefix("part-"))
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|i| i >= data.num_partitions());
        if stale {
            fs::remove_file(entry.path())
                .map_err(|e| Error::io("remove stale", entry.path(), e))?;
        }
    }
    let success = dir.join("_SUCCESS");
    File::create(&success)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("create", &success, e))?;
    // The renames live in the directory: sync it, and its parent if we created it.
    sync_dir(dir)?;
    if let Some(parent) = dir
        .parent()
        .filter(|p| created && !p.as_os_str().is_empty())
    {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// How a record is written as one line of text by `save_as_text_files` (Spark writes
/// `toString`; tuples as `(a,b)`).
pub trait TextRecord {
    /// Appends the record's text (without a newline) to `out`.
    fn write_text(&self, out: &mut String);
}

macro_rules! text_record_display {
    ($($t:ty),*) => {$(
        impl TextRecord for $t {
            fn write_text(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

text_record_display!(
    Str, String, &str, bool, char, i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize,
    f32, f64
);

impl<A: TextRecord, B: TextRecord> TextRecord for (A, B) {
    fn write_text(&self, out: &mut String) {
        out.push('(');
        self.0.write_text(out);
        out.push(',');
        self.1.write_text(out);
        out.push(')');
    }
}

impl<A: TextRecord, B: TextRecord, C: TextRecord> TextRecord for (A, B, C) {
    fn write_text(&self, out: &mut String) {
        out.push('(');
        self.0.write_text(out);
        out.push(',');
        self.1.write_text(out);
        out.push(',');
        self.2.write_text(out);
        out.push(')');
    }
}

impl<T: TextRecord> TextRecord for Option<T> {
    fn write_text(&self, out: &mut String) {
        match self {
            Some(v) => {
                out.push_str("Some(");
                v.write_text(out);
                out.push(')');
            }
            None => out.push_str("None"),
        }
    }
}

impl<T: TextRecord> TextRecord for Vec<T> {
    fn write_text(&self, out: &mut String) {
        out.push('[');
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            v.write_text(out);
        }
        out.push(']');
    }
}

pub mod files;
pub mod kafka;
pub mod postgres;

/// What a [`Sink`] promises when the engine writes a batch again.
///
/// The engine's side of the contract: a batch's output is a deterministic function of its
/// recorded inputs, so after a crash a batch that may have been written (wholly or in part)
/// is written again with the **same** [`BatchOutput`] (batch time, partition count, source
/// offset ranges) and the **same** records in the same partitions, provided the restart
/// restores the batch's allocation (from a checkpoint's metadata log, or from the progress a
/// sink stored itself, as [`postgres::PostgresSink::progress`]). Batches are written one at a
/// time, in batch-time order; a batch is complete only when `write_batch` returned `Ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Each batch (or batch partition) is committed atomically together with a key that
    /// identifies it; a re-run finds the key and writes nothing. Exactly-once.
    Transactional,
    /// A re-run overwrites the first attempt with identical bytes at identical names.
    /// Exactly-once for readers that read only complete batches.
    Idempotent,
    /// A re-run writes the records again; each carries a deterministic identity (batch time,
    /// partition, sequence) so a consumer can drop duplicates. At-least-once.
    AtLeastOnce,
}

/// What a sink is told about the batch it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOutput {
    /// The pipeline's name (part of every key a sink stores).
    pub pipeline: String,
    /// The batch.
    pub time: BatchTime,
    /// The batch's source offset ranges (empty for sources without offsets).
    pub offsets: Vec<crate::source::kafka::OffsetRange>,
}

impl BatchOutput {
    /// Whether the batch read no offsets and has no records: an exactly-once sink then
    /// writes nothing, not even its key (a re-run finds nothing to skip either).
    pub fn covers_nothing<T>(&self, data: &BatchData<T>) -> bool {
        let covered: u64 = self
            .offsets
            .iter()
            .map(crate::source::kafka::OffsetRange::span)
            .sum();
        covered == 0 && data.is_empty()
    }

    /// The offset ranges as the JSON the exactly-once sinks store beside a batch's output
    /// (`[{"topic":..,"partition":..,"from":..,"until":..},...]`), which
    /// [`Progress::of_newest_batch`] reads back.
    pub fn offsets_json(&self) -> std::result::Result<String, String> {
        serde_json::to_string(&self.offsets).map_err(|e| format!("cannot encode offsets: {e}"))
    }
}

/// What an exactly-once sink's own storage says about a pipeline's progress: where the
/// source resumes, and whether a batch must be re-run first. The PostgreSQL sink reads it
/// from its `ember_batches` table ([`postgres::PostgresSink::progress`]), the file sink from
/// its batch directories ([`files::FileSink::progress`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing committed yet.
    Empty,
    /// The newest batch committed every partition: resume at these ranges' `until`.
    Complete {
        /// The batch.
        time: BatchTime,
        /// Its ranges.
        offsets: Vec<crate::source::kafka::OffsetRange>,
    },
    /// The newest batch committed only some partitions: re-run it at `time` over exactly
    /// `offsets` with `partitions` partitions before anything else.
    Partial {
        /// The batch.
        time: BatchTime,
        /// Its partition count (0: any, the re-run rewrites every partition).
        partitions: usize,
        /// Partitions committed.
        committed: usize,
        /// Its ranges.
        offsets: Vec<crate::source::kafka::OffsetRange>,
    },
}

impl Progress {
    /// The progress of a sink whose newest stored batch is the one at `time`, with the
    /// offsets `offsets_json` (as [`BatchOutput::offsets_json`] wrote them): complete, or
    /// committed for `committed` of `partitions` partitions. Fails if the offsets do not
    /// parse.
    pub fn of_newest_batch(
        time: BatchTime,
        offsets_json: &str,
        complete: bool,
        partitions: usize,
        committed: usize,
    ) -> std::result::Result<Progress, serde_json::Error> {
        let offsets = serde_json::from_str(offsets_json)?;
        Ok(if complete {
            Progress::Complete { time, offsets }
        } else {
            Progress::Partial {
                time,
                partitions,
                committed,
                offsets,
            }
        })
    }

    /// Where each partition of the source resumes after this progress.
    pub fn resume_offsets(&self) -> std::collections::BTreeMap<i32, i64> {
        match self {
            Progress::Empty => Default::default(),
            Progress::Complete { offsets, .. } | Progress::Partial { offsets, .. } => {
                offsets.iter().map(|r| (r.partition, r.until)).collect()
            }
        }
    }
}

/// A user-writable output with an explicit re-execution contract; attach it with
/// [`DStream::write_to`].
pub trait Sink<T>: Send + Sync + 'static {
    /// The sink's name, for errors and metrics.
    fn name(&self) -> String;
    /// What the sink promises on re-execution.
    fn delivery(&self) -> Delivery;
    /// Writes one batch (every partition of `data`). An error fails the batch, which stays
    /// pending and is written again after a restart.
    fn write_batch(
        &self,
        batch: &BatchOutput,
        data: &BatchData<T>,
    ) -> std::result::Result<(), String>;
}

pub(crate) fn write_to<T: Data, S: Sink<T> + ?Sized>(
    stream: &DStream<T>,
    pipeline: String,
    sink: Arc<S>,
    offsets: Option<crate::source::kafka::KafkaOffsets>,
) {
    foreach_batch(stream, "write_to", move |data, time| {
        let offsets = match &offsets {
            None => Vec::new(),
            // A batch whose ranges this process neither planned nor read covers no offsets
            // (a restored batch without blocks of the stream).
            Some(o) => o.offset_ranges(time).unwrap_or_default(),
        };
        let batch = BatchOutput {
            pipeline: pipeline.clone(),
            time,
            offsets,
        };
        sink.write_batch(&batch, data)
            .map_err(|e| format!("sink {}: {e}", sink.name()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_shows_the_time_the_first_n_records_and_an_ellipsis_when_there_are_more() {
        let time = BatchTime::from_millis(3_000);
        let data = BatchData::from_partitions(vec![vec![("a", 1)], vec![("b", 2), ("c", 3)]]);
        let rule = "-------------------------------------------";
        assert_eq!(
            print_text(&data, time, 2),
            format!("{rule}\nTime: 3000 ms\n{rule}\n(\"a\", 1)\n(\"b\", 2)\n...\n\n")
        );
        assert_eq!(
            print_text(&data, time, 3),
            format!("{rule}\nTime: 3000 ms\n{rule}\n(\"a\", 1)\n(\"b\", 2)\n(\"c\", 3)\n\n")
        );
        let empty: BatchData<u8> = BatchData::empty();
        assert_eq!(
            print_text(&empty, time, 10),
            format!("{rule}\nTime: 3000 ms\n{rule}\n\n")
        );
    }
}
