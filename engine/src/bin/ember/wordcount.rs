//! The word-count pipeline shared by `ember run wordcount`, `ember bench wordcount` and
//! `ember demo`, and its metrics with the Spark baseline's definitions
//! (`../shared/anchors/spark-streaming/README.md`, "Metric definitions").

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use engine::{
    BatchData, BatchInfo, Config, ReceiverInfo, Str, StreamingContext, StreamingListener,
};
use serde_json::{Map, Value, json};

/// The block size of the word count when its blocks are only in memory (`--durability
/// ignore`, the Spark baseline's setting), instead of the engine's 4 MiB. In memory a block
/// costs nothing per block but its per-block hash map, and its size sets the receiver's
/// memory: `receiver_queue_blocks_max + 2` buffers of a block and a read, 5 MiB at 1 MiB
/// against 17 MiB at 4 MiB, and with them the step by which the peak RSS varies between runs
/// (BENCHMARKS.md, "Memory at 2 M and 50 M lines"); it measured no slower. With a WAL or
/// replicas each block costs a sync or a round trip before the next is read, and 1 MiB
/// blocks measured about 15% slower there, so those modes keep 4 MiB.
pub const IN_MEMORY_BLOCK_SIZE_MAX_BYTES: usize = 1 << 20;

/// The pipeline's knobs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub address: String,
    pub batch_ms: u64,
    pub partitions: Option<usize>,
    pub workers: Option<usize>,
    pub block_interval_ms: Option<u64>,
    pub block_size_max_bytes: Option<usize>,
    pub receiver_queue_blocks_max: Option<usize>,
    /// `None`: the engine's default (ten batch intervals).
    pub graceful_stop_timeout_ms: Option<u64>,
}

impl Settings {
    pub fn config(&self) -> Config {
        let mut config = Config::new(Duration::from_millis(self.batch_ms));
        // Short batches get blocks at least as short (a block must fit in a batch).
        config.block_interval_ms = config.block_interval_ms.min(self.batch_ms);
        if let Some(p) = self.partitions {
            config.partitions = p;
        }
        if let Some(w) = self.workers {
            config.worker_threads = w;
        }
        if let Some(b) = self.block_interval_ms {
            config.block_interval_ms = b;
        }
        if let Some(b) = self.block_size_max_bytes {
            config.block_size_max_bytes = b;
        }
        if let Some(q) = self.receiver_queue_blocks_max {
            config.receiver_queue_blocks_max = q;
        }
        if let Some(t) = self.graceful_stop_timeout_ms {
            config.graceful_stop_timeout_ms = Some(t);
        }
        config
    }
}

/// Where the latest running totals are kept.
pub type Totals = Arc<Mutex<BatchData<(Str, u64)>>>;

/// Called with each completed batch and the records so far.
pub type BatchPrinter = Box<dyn Fn(&BatchInfo, u64) + Send + Sync>;

/// Everything the run observed.
#[derive(Default)]
pub struct Observed {
    pub batches: Mutex<Vec<BatchInfo>>,
    pub records: AtomicU64,
    pub target_seen_ms: AtomicU64,
    pub receiver_errors: AtomicU64,
    pub receiver_ends_of_stream: AtomicU64,
}

/// Stops the context (gracefully) once `lines` records have been processed, and keeps every
/// batch's metrics; optionally prints a line per batch.
pub struct Monitor {
    pub lines: u64,
    pub observed: Arc<Observed>,
    pub stop: engine::StopHandle,
    pub on_batch: Option<BatchPrinter>,
}

impl StreamingListener for Monitor {
    fn on_batch_completed(&self, batch: &BatchInfo) {
        self.observed
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(batch.clone());
        let before = self
            .observed
            .records
            .fetch_add(batch.records(), Ordering::SeqCst);
        let total = before + batch.records();
        if let Some(f) = &self.on_batch {
            f(batch, total);
        }
        if before < self.lines && total >= self.lines {
            self.observed
                .target_seen_ms
                .store(engine::clock::now_epoch_ms(), Ordering::SeqCst);
            self.stop.request_stop(true);
        }
    }

    fn on_receiver_state(&self, receiver: &ReceiverInfo) {
        // The engine's count (a clean end of stream and the reconnects after it are not
        // errors); the word count has one receiver.
        self.observed
            .receiver_errors
            .fetch_max(receiver.errors, Ordering::Relaxed);
        self.observed
            .receiver_ends_of_stream
            .fetch_max(receiver.ends_of_stream, Ordering::Relaxed);
    }
}

/// `ember run wordcount --stop-at-end-of-stream` and `ember demo`: once the socket receiver
/// has stopped at the end of its stream, nothing more will arrive, so the run stops
/// gracefully. The receiver has stored every line it read before it reports `Stopped`; with
/// every receiver stopped, the engine runs the last (open) batch at once rather than at its
/// grid time.
pub struct StopAtEndOfStream {
    pub stop: engine::StopHandle,
}

impl engine::StreamingListener for StopAtEndOfStream {
    fn on_receiver_state(&self, receiver: &engine::ReceiverInfo) {
        if receiver.state == engine::ReceiverState::Stopped && receiver.ends_of_stream > 0 {
            tracing::info!(
                records = receiver.records,
                "the source ended its stream; stopping"
            );
            self.stop.request_stop(true);
        }
    }
}

/// Builds the word count with a running total: the pipeline of the benchmark, written as a
/// user would. Returns where the latest totals are kept.
pub fn build(
    ctx: &StreamingContext,
    address: &str,
    options: engine::SocketOptions,
) -> anyhow::Result<Totals> {
    let lines = ctx.socket_text_stream_with(address, options)?;
    let totals = running_totals(&lines);
    let latest = Arc::new(Mutex::new(BatchData::empty()));
    let sink = Arc::clone(&latest);
    totals.foreach_batch(move |data, _| {
        *sink.lock().unwrap_or_else(|e| e.into_inner()) = data.clone()
    });
    Ok(latest)
}

/// Words of each line counted, then summed into running totals across batches.
fn running_totals(lines: &engine::DStream<Str>) -> engine::DStream<(Str, u64)> {
    lines
        .flat_map(|line| line.split(' '))
        .map(|word| (word, 1u64))
        .reduce_by_key(|a, b| a + b)
        .update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
            Some(total.unwrap_or(0) + new.iter().sum::<u64>())
        })
}

/// The restartable word count of `ember run wordcount`: [`build`]'s pipeline, plus the
/// number of lines processed kept in state too, so that a restarted run knows how far the
/// whole run (across restarts) has come. Returns the latest totals and the latest line count.
pub fn build_restartable(
    ctx: &StreamingContext,
    address: &str,
    options: engine::SocketOptions,
) -> engine::Result<(Totals, Arc<AtomicU64>)> {
    let lines = ctx.socket_text_stream_with(address, options)?;
    let totals = running_totals(&lines);
    let processed =
        lines
            .count()
            .map(|n| (0u8, n))
            .update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
                Some(total.unwrap_or(0) + new.iter().sum::<u64>())
            });
    let latest = Arc::new(Mutex::new(BatchData::empty()));
    let sink = Arc::clone(&latest);
    totals.foreach_batch(move |data, _| {
        *sink.lock().unwrap_or_else(|e| e.into_inner()) = data.clone()
    });
    let lines_done = Arc::new(AtomicU64::new(0));
    let sink = Arc::clone(&lines_done);
    processed.foreach_batch(move |data, _| {
        let n = data.iter().map(|(_, n)| *n).sum::<u64>();
        sink.store(n, Ordering::SeqCst);
    });
    Ok((latest, lines_done))
}

/// `word\tcount\n`, sorted by word in byte order.
pub fn sorted_counts(totals: &BatchData<(Str, u64)>) -> Vec<(Str, u64)> {
    let mut rows = totals.to_vec();
    rows.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    rows
}

pub fn tsv(rows: &[(Str, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 16);
    for (w, c) in rows {
        out.extend_from_slice(w.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(c.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Writes `bytes` to `path` atomically: a temporary file, synced, renamed, directory synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("out".into(), |n| n.to_string_lossy())
    ));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// This process's peak resident set size in MB (`VmHWM`, the counter behind `/usr/bin/time
/// -v`'s "Maximum resident set size").
pub fn peak_rss_mb() -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

fn round3(x: f64) -> Value {
    json!((x * 1000.0).round() / 1000.0)
}

/// The baseline's metrics over the observed batches (`AnchorWordCount.java`'s definitions):
/// from the first non-empty batch through the one that completes line `target`.
pub fn metrics(
    batches: &[BatchInfo],
    target: u64,
    batch_ms: u64,
    launch_ms: Option<u64>,
    process_start_ms: u64,
) -> Map<String, Value> {
    let mut bs: Vec<&BatchInfo> = batches.iter().collect();
    bs.sort_by_key(|b| b.batch_time);
    let mut m = Map::new();
    let first = bs.iter().position(|b| b.records() > 0);
    let mut cum = 0u64;
    let mut last = None;
    for (i, b) in bs.iter().enumerate() {
        cum += b.records();
        if last.is_none() && cum >= target {
            last = Some(i);
        }
    }
    let last = last.unwrap_or(bs.len().saturating_sub(1));
    m.insert("lines".into(), json!(cum));
    if let Some(first) = first {
        let (f, l) = (bs[first], bs[last]);
        let start = f.processing_start_ms.unwrap_or(0);
        let end = l.processing_end_ms.unwrap_or(0);
        let wall_s = end.saturating_sub(start) as f64 / 1000.0;
        let from_interval_s =
            end.saturating_sub(f.batch_time.as_millis().saturating_sub(batch_ms)) as f64 / 1000.0;
        let window = &bs[first..=last];
        let n = window.len() as f64;
        let mut procs: Vec<u64> = window
            .iter()
            .map(|b| b.processing_delay_ms().unwrap_or(0))
            .collect();
        let scheds: Vec<u64> = window
            .iter()
            .map(|b| b.scheduling_delay_ms().unwrap_or(0))
            .collect();
        let sum_proc: u64 = procs.iter().sum();
        let sum_sched: u64 = scheds.iter().sum();
        procs.sort_unstable();
        m.insert("wall_s".into(), round3(wall_s));
        m.insert(
            "lines_per_s".into(),
            round3(if wall_s > 0.0 {
                cum as f64 / wall_s
            } else {
                0.0
            }),
        );
        m.insert("wall_from_first_interval_s".into(), round3(from_interval_s));
        m.insert(
            "lines_per_s_from_first_interval".into(),
            round3(if from_interval_s > 0.0 {
                cum as f64 / from_interval_s
            } else {
                0.0
            }),
        );
        m.insert("batches".into(), json!(window.len()));
        m.insert("proc_ms_mean".into(), round3(sum_proc as f64 / n));
        m.insert("proc_ms_median".into(), json!(procs[procs.len() / 2]));
        m.insert(
            "proc_ms_max".into(),
            json!(procs.last().copied().unwrap_or(0)),
        );
        m.insert("sched_delay_ms_mean".into(), round3(sum_sched as f64 / n));
        m.insert(
            "sched_delay_ms_max".into(),
            json!(scheds.iter().max().copied().unwrap_or(0)),
        );
        m.insert(
            "records_per_batch_max".into(),
            json!(window.iter().map(|b| b.records()).max().unwrap_or(0)),
        );
        m.insert(
            "first_nonempty_batch_time_epoch_ms".into(),
            json!(f.batch_time.as_millis()),
        );
        m.insert("first_nonempty_batch_start_epoch_ms".into(), json!(start));
        m.insert("last_batch_end_epoch_ms".into(), json!(end));
        m.insert(
            "process_start_to_first_nonempty_batch_start_s".into(),
            round3(start.saturating_sub(process_start_ms) as f64 / 1000.0),
        );
        m.insert(
            "batch_detail_time_records_proc_sched".into(),
            json!(
                window
                    .iter()
                    .map(|b| json!([
                        b.batch_time.as_millis(),
                        b.records(),
                        b.processing_delay_ms(),
                        b.scheduling_delay_ms()
                    ]))
                    .collect::<Vec<_>>()
            ),
        );
    }
    m.insert("batches_completed_total".into(), json!(bs.len()));
    if let Some(b0) = bs.first() {
        m.insert("first_batch_records".into(), json!(b0.records()));
        if let Some(launch) = launch_ms {
            m.insert(
                "launch_to_first_batch_start_s".into(),
                round3(b0.processing_start_ms.unwrap_or(0).saturating_sub(launch) as f64 / 1000.0),
            );
            m.insert(
                "launch_to_first_batch_end_s".into(),
                round3(b0.processing_end_ms.unwrap_or(0).saturating_sub(launch) as f64 / 1000.0),
            );
        }
    }
    m.insert(
        "lost_records".into(),
        json!(bs.iter().map(|b| b.lost_records).sum::<u64>()),
    );
    m
}
