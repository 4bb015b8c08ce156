//! `ember run wordcount`: the word count with a running total, over a socket text source,
//! until N lines have been processed; writes the sorted counts and the baseline's metrics.
//!
//! With `--checkpoint DIR|URL` the run is restartable: the context comes from
//! `StreamingContext::get_or_create_at(location, ...)` (a directory, or an object store such
//! as `s3://bucket/prefix`; `--wal` can put the data WAL elsewhere), the lines processed so far are kept in state
//! next to the counts, and a run killed at any moment and started again with the same
//! arguments recovers from DIR and carries on to N lines. With `--source ...?ack=1` and
//! `--durability wal|replicated` its final counts are exact. Under `--durability ignore`,
//! lines of lost blocks are never counted; every batch's lost records are appended to
//! `DIR/lost-records.log` (synced, on the job thread, before the batch's checkpoint), so the
//! run ends once processed plus lost lines reach N and reports the total lost.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use engine::{Durability, DurabilityConfig, StreamingContext};
use serde_json::{Value, json};
use wal::objstore::StorageUrl;

use crate::wordcount::{self, Monitor, Observed, Settings};

/// Run a pipeline.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pipeline: Pipeline,
}

#[derive(Debug, clap::Subcommand)]
enum Pipeline {
    /// Word count with a running total: socket source, flat_map, reduce_by_key,
    /// update_state_by_key. Stops (gracefully) after --lines lines have been processed, then
    /// writes `word<TAB>count` lines sorted by word to --out.
    #[command(after_help = "\
Example:
  ember gen --port 9999 --lines 2000000 &
  ember run wordcount --source tcp://127.0.0.1:9999 --lines 2000000 --out counts.tsv")]
    Wordcount(WordcountArgs),
}

#[derive(Debug, clap::Args)]
pub struct WordcountArgs {
    /// The source: tcp://HOST:PORT (lines of text), tcp://HOST:PORT?ack=1 for the
    /// acknowledged, resumable protocol of `ember gen --ack`, or kafka://HOST:PORT/topic
    /// (each record one line; with --sink).
    #[arg(long)]
    source: String,
    #[command(flatten)]
    kafka: crate::kafka::KafkaArgs,
    /// How received blocks survive a crash: ignore (in memory; losses counted), wal
    /// (--wal, synced or put before the acknowledgement) or replicated (on --executors).
    #[arg(long, value_enum, default_value_t = Mode::Ignore)]
    durability: Mode,
    /// Checkpoint location: makes the run restartable (metadata log, checkpoints, state
    /// snapshots; the WAL too under --durability wal unless --wal says otherwise). A
    /// directory, file:///path, or s3://bucket/prefix for machines whose disks do not
    /// survive them (S3 settings from AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP). Needed for wal and replicated.
    #[arg(long, value_name = "DIR|URL")]
    checkpoint: Option<String>,
    /// With --durability wal: where the data WAL lives, a directory or a storage URL
    /// (s3://bucket/prefix: one conditional PUT per group commit) [default: CHECKPOINT/wal].
    #[arg(long, value_name = "DIR|URL")]
    wal: Option<String>,
    /// With --durability replicated: the `ember executor` addresses, comma-separated.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    executors: Vec<String>,
    /// With --durability replicated: executors that must hold each block.
    #[arg(long, default_value_t = 1)]
    replication: usize,
    /// Receive at most this many lines per second (spreads a run over time, e.g. so that
    /// crash tests kill it at every phase).
    #[arg(long, value_name = "LINES_PER_S", value_parser = clap::value_parser!(u64).range(1..))]
    max_rate: Option<u64>,
    /// With --checkpoint: a checkpoint every this many batches.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every_batches: u64,
    /// Stop after this many lines have been processed.
    #[arg(long)]
    lines: u64,
    /// Where to write the counts.
    #[arg(long)]
    out: PathBuf,
    /// Also write the metrics (one JSON line, the Spark baseline's keys) here.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Batch interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_ms: u64,
    /// Partitions of the key operators [default: cores].
    #[arg(long)]
    partitions: Option<usize>,
    /// Worker threads [default: cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Block interval in milliseconds [default: 200].
    #[arg(long)]
    block_interval_ms: Option<u64>,
    /// Maximum block size in bytes [default: 1 MiB with --durability ignore, the engine's
    /// 4 MiB with a WAL or replicas].
    #[arg(long)]
    block_size_max_bytes: Option<usize>,
    /// Blocks stored but not yet through their block stages [default: workers, at least 2].
    #[arg(long)]
    receiver_queue_blocks_max: Option<usize>,
    /// Give up (exit 3) if the lines have not all been processed after this long.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// A graceful stop (on reaching --lines, on SIGTERM or SIGINT) runs every batch already
    /// generated; past this many milliseconds it becomes an immediate stop and the run
    /// fails (a restartable run, with --checkpoint or from Kafka's stored offsets, does the
    /// batches left when restarted) [default: ten batch intervals, Spark's]. Raise it where
    /// batches can fall behind the grid, so that a SIGTERM with a backlog still ends cleanly.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    graceful_stop_timeout_ms: Option<u64>,
    /// When the source closes the connection cleanly, stop instead of reconnecting: what was
    /// received is processed (a graceful stop; its last batch runs at once, at its grid
    /// time, instead of waiting for the clock), and the run fails (exit 3) if fewer than
    /// --lines lines were processed. For a source that serves its whole input over one
    /// connection, as `ember gen` does.
    #[arg(long)]
    stop_at_end_of_stream: bool,
}

/// `--durability`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Ignore,
    Wal,
    Replicated,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Ignore => "ignore",
            Mode::Wal => "wal",
            Mode::Replicated => "replicated",
        }
    }
}

/// A parsed `--source`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SourceUrl {
    /// `host:port`.
    address: String,
    /// `?ack=1`: the acknowledged protocol.
    ack: bool,
}

/// Parses `tcp://HOST:PORT[?ack=0|1]`, saying exactly what is wrong.
fn parse_source(url: &str) -> anyhow::Result<SourceUrl> {
    let Some(rest) = url.strip_prefix("tcp://") else {
        bail!("--source {url:?}: expected tcp://HOST:PORT[?ack=1]");
    };
    let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
    let Some((host, port)) = address.rsplit_once(':') else {
        bail!("--source {url:?}: missing :PORT (expected tcp://HOST:PORT[?ack=1])");
    };
    if host.is_empty() {
        bail!("--source {url:?}: missing HOST (expected tcp://HOST:PORT[?ack=1])");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => bail!("--source {url:?}: port {port:?} is not a number from 1 to 65535"),
    }
    let mut ack = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ack", "1" | "true")) => ack = true,
            Some(("ack", "0" | "false")) => ack = false,
            Some(("ack", v)) => bail!("--source {url:?}: ack={v:?}, expected ack=1 or ack=0"),
            _ => bail!("--source {url:?}: unknown parameter {pair:?} (the only one is ack=1)"),
        }
    }
    Ok(SourceUrl {
        address: address.to_owned(),
        ack,
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.pipeline {
        Pipeline::Wordcount(a) => wordcount_main(a),
    }
}

fn wordcount_main(args: WordcountArgs) -> anyhow::Result<ExitCode> {
    let process_start_ms = engine::clock::now_epoch_ms();
    let launch_ms = std::env::var("EMBER_LAUNCH_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if args.source.starts_with("kafka://") {
        let settings = Settings {
            address: String::new(),
            batch_ms: args.batch_ms,
            partitions: args.partitions,
            workers: args.workers,
            block_interval_ms: args.block_interval_ms,
            block_size_max_bytes: args.block_size_max_bytes,
            receiver_queue_blocks_max: args.receiver_queue_blocks_max,
            graceful_stop_timeout_ms: args.graceful_stop_timeout_ms,
        };
        return crate::kafka::wordcount(crate::kafka::Run {
            source: args.source,
            kafka: args.kafka,
            lines: args.lines,
            out: args.out,
            config: settings.config(),
            timeout: Duration::from_secs(args.timeout_s),
        });
    }
    let source = parse_source(&args.source)?;
    check_durability_flags(&args)?;
    let storage = parse_storage_flags(&args)?;
    let settings = Settings {
        address: source.address.clone(),
        batch_ms: args.batch_ms,
        partitions: args.partitions,
        workers: args.workers,
        block_interval_ms: args.block_interval_ms,
        block_size_max_bytes: args
            .block_size_max_bytes
            .or((args.durability == Mode::Ignore)
                .then_some(wordcount::IN_MEMORY_BLOCK_SIZE_MAX_BYTES)),
        receiver_queue_blocks_max: args.receiver_queue_blocks_max,
        graceful_stop_timeout_ms: args.graceful_stop_timeout_ms,
    };
    let mut config = settings.config();
    config.receiver_max_rate_records_per_sec = args.max_rate;
    let (partitions, workers) = (config.partitions, config.worker_threads);
    let mut options = if source.ack {
        engine::SocketOptions::acknowledged()
    } else {
        engine::SocketOptions::default()
    };
    options.stop_at_end_of_stream = args.stop_at_end_of_stream;
    let (ctx, totals, lines_done) =
        open_context(&args, &storage, config, &settings.address, options)?;
    let observed = Arc::new(Observed::default());
    // The run ends on the lines in state (plus, under ignore, the lines lost), which
    // survive restarts; the monitor only collects this run's batch metrics.
    ctx.add_listener(Arc::new(Monitor {
        lines: u64::MAX,
        observed: Arc::clone(&observed),
        stop: ctx.stop_handle(),
        on_batch: None,
    }));
    let ledger = match &storage.checkpoint {
        Some(StorageUrl::Local(dir)) => Some(Arc::new(LostLedger::open(&dir.join(LOST_LEDGER))?)),
        // Refused by parse_storage_flags under ignore, the only mode that loses records.
        Some(_) | None => None,
    };
    let completion = Arc::new(Completion {
        lines: args.lines,
        lines_done: Arc::clone(&lines_done),
        ledger: ledger.clone(),
        lost_this_run: AtomicU64::new(0),
        failure: Mutex::new(None),
        stop: ctx.stop_handle(),
    });
    ctx.add_listener(Arc::clone(&completion) as Arc<dyn engine::StreamingListener>);
    if args.stop_at_end_of_stream {
        ctx.add_listener(Arc::new(wordcount::StopAtEndOfStream {
            stop: ctx.stop_handle(),
        }));
    }
    ctx.stop_on_signals()?;
    ctx.start().context("starting the pipeline")?;
    let stopped = ctx.await_termination_timeout(Some(Duration::from_secs(args.timeout_s)));
    let timed_out = matches!(stopped, Ok(false));
    if timed_out {
        tracing::error!(timeout_s = args.timeout_s, "timed out; stopping");
        ctx.stop(false).ok();
    } else {
        stopped.context("the pipeline failed")?;
    }
    let stopped_ms = engine::clock::now_epoch_ms();

    if let Some(failure) = completion
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        bail!("{failure}");
    }
    let lines_processed = lines_done.load(Ordering::SeqCst);
    let lost_records = match &ledger {
        Some(l) => l.total(),
        None => observed
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|b| b.lost_records)
            .sum(),
    };
    let complete = lines_processed + lost_records >= args.lines;
    let rows = wordcount::sorted_counts(&totals.lock().unwrap_or_else(|e| e.into_inner()));
    if complete || args.checkpoint.is_none() {
        // A restartable run writes its output only once it is complete: a partial file
        // would look like a result.
        wordcount::write_atomically(&args.out, &wordcount::tsv(&rows))?;
    }

    let batches = observed
        .batches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut m = wordcount::metrics(
        &batches,
        args.lines,
        args.batch_ms,
        launch_ms,
        process_start_ms,
    );
    let target_seen = observed.target_seen_ms.load(Ordering::SeqCst);
    let lines_seen = lines_processed;
    m.insert(
        "engine".into(),
        json!(format!("ember {}", env!("CARGO_PKG_VERSION"))),
    );
    m.insert(
        "durability".into(),
        json!(format!("{:?}", args.durability).to_lowercase()),
    );
    m.insert("wal".into(), json!(args.durability == Mode::Wal));
    m.insert("acknowledged_source".into(), json!(source.ack));
    m.insert("lines_processed".into(), json!(lines_processed));
    // Across restarts when checkpointed (the ledger), else this run's batches.
    m.insert("lost_records".into(), json!(lost_records));
    m.insert("batch_ms".into(), json!(args.batch_ms));
    m.insert("target_lines".into(), json!(args.lines));
    m.insert("partitions".into(), json!(partitions));
    m.insert("workers".into(), json!(workers));
    m.insert(
        "words_counted".into(),
        json!(rows.iter().map(|(_, c)| c).sum::<u64>()),
    );
    m.insert("distinct_words".into(), json!(rows.len()));
    m.insert("timed_out".into(), json!(timed_out));
    m.insert(
        "stop_at_end_of_stream".into(),
        json!(args.stop_at_end_of_stream),
    );
    if target_seen > 0 {
        m.insert(
            "stop_s".into(),
            json!((stopped_ms.saturating_sub(target_seen)) as f64 / 1000.0),
        );
    }
    m.insert(
        "receiver_errors".into(),
        json!(observed.receiver_errors.load(Ordering::Relaxed)),
    );
    m.insert(
        "receiver_ends_of_stream".into(),
        json!(observed.receiver_ends_of_stream.load(Ordering::Relaxed)),
    );
    m.insert("process_start_epoch_ms".into(), json!(process_start_ms));
    if let Some(launch) = launch_ms {
        m.insert(
            "launch_to_process_start_s".into(),
            json!(process_start_ms.saturating_sub(launch) as f64 / 1000.0),
        );
    }
    // Last: the peak includes writing the output.
    if let Some(rss) = wordcount::peak_rss_mb() {
        m.insert("peak_rss_mb".into(), json!(rss));
    }
    let line = Value::Object(m).to_string();
    if let Some(path) = &args.metrics {
        wordcount::write_atomically(path, format!("{line}\n").as_bytes())?;
    }
    println!("METRICS {line}");
    if let Some(signal) = ctx.stopped_by_signal() {
        // Stopped gracefully: everything received was processed and written.
        eprintln!(
            "ember: stopped by signal {signal} after {lines_seen} lines; counts written to {}",
            args.out.display()
        );
        return Ok(ExitCode::from(128 + signal as u8));
    }
    Ok(if timed_out || !complete {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Where `--checkpoint` and `--wal` point, parsed.
#[derive(Debug)]
struct Storage {
    /// `--checkpoint`.
    checkpoint: Option<StorageUrl>,
    /// Under `--durability wal`: `--wal`, or the checkpoint location's `wal/`.
    wal: Option<StorageUrl>,
}

/// Parses `--checkpoint` and `--wal` (whether the locations are reachable is checked when
/// the context opens, before any data is accepted).
fn parse_storage_flags(args: &WordcountArgs) -> anyhow::Result<Storage> {
    let parse =
        |flag: &str, url: &str| StorageUrl::parse(url).with_context(|| format!("--{flag} {url:?}"));
    let checkpoint = args
        .checkpoint
        .as_deref()
        .map(|c| parse("checkpoint", c))
        .transpose()?;
    let wal = match (&args.wal, args.durability) {
        (Some(url), Mode::Wal) => Some(parse("wal", url)?),
        (Some(_), mode) => bail!(
            "--wal is only for --durability wal (this run is --durability {})",
            mode.name()
        ),
        (None, Mode::Wal) => checkpoint.as_ref().map(|c| c.join("wal")),
        (None, _) => None,
    };
    if args.durability == Mode::Ignore
        && let Some(url) = checkpoint.as_ref().filter(|c| c.is_object_store())
    {
        bail!(
            "--durability ignore with --checkpoint {url}: ignore mode keeps its ledger of lost \
             records ({LOST_LEDGER}) in a local checkpoint directory; use a directory, or \
             --durability wal with the WAL on the object store"
        );
    }
    Ok(Storage { checkpoint, wal })
}

fn check_durability_flags(args: &WordcountArgs) -> anyhow::Result<()> {
    match args.durability {
        Mode::Wal | Mode::Replicated if args.checkpoint.is_none() => bail!(
            "--durability {} needs --checkpoint DIR|URL (where the metadata log, checkpoints{} live)",
            args.durability.name(),
            if args.durability == Mode::Wal {
                " and the WAL"
            } else {
                ""
            }
        ),
        Mode::Replicated if args.executors.is_empty() => {
            bail!("--durability replicated needs --executors ADDR,... (`ember executor` addresses)")
        }
        Mode::Replicated if args.replication == 0 || args.replication > args.executors.len() => {
            bail!(
                "--replication {} must be between 1 and the {} executors given",
                args.replication,
                args.executors.len()
            )
        }
        Mode::Ignore | Mode::Wal if !args.executors.is_empty() => {
            bail!("--executors is only for --durability replicated")
        }
        _ => Ok(()),
    }
}

/// The context, built with the restartable word count: a checkpointed one (which resumes
/// from its location) with `--checkpoint`, else a plain one.
fn open_context(
    args: &WordcountArgs,
    storage: &Storage,
    config: engine::Config,
    address: &str,
    options: engine::SocketOptions,
) -> anyhow::Result<(StreamingContext, wordcount::Totals, Arc<AtomicU64>)> {
    let Some(location) = &storage.checkpoint else {
        let ctx = StreamingContext::new(config).context("invalid settings")?;
        let (totals, lines) = wordcount::build_restartable(&ctx, address, options)?;
        return Ok((ctx, totals, lines));
    };
    let mode = match args.durability {
        Mode::Ignore => Durability::Ignore,
        Mode::Wal => Durability::wal_at_url(
            storage
                .wal
                .clone()
                .context("--durability wal without a WAL location")?,
        ),
        Mode::Replicated => Durability::Replicated {
            executors: args.executors.clone(),
            replication: args.replication,
        },
    };
    let durability = DurabilityConfig {
        checkpoint_interval_batches: args.checkpoint_every_batches,
        ..DurabilityConfig::new(mode)
    };
    let mut built = None;
    let ctx = StreamingContext::get_or_create_at(location, config, durability, |ctx| {
        built = Some(wordcount::build_restartable(ctx, address, options)?);
        Ok(())
    })
    .with_context(|| format!("opening the checkpointed pipeline at {location}"))?;
    let (totals, lines) = built.context("the pipeline was not built")?;
    Ok((ctx, totals, lines))
}

/// Where a checkpointed ignore-mode run records lost records, inside `--checkpoint DIR`.
const LOST_LEDGER: &str = "lost-records.log";

/// The lost records of every batch of a checkpointed run, across restarts: one line
/// `<batch time ms> <lost records> <lost blocks>` per batch that lost something (or
/// that had lost something in an earlier run and was recomputed), appended and synced. The
/// last line of a batch time wins: a batch recomputed after a restart may lose more than
/// its first run did, and the recomputation is what the final state holds. A torn last line
/// (a crash while appending) is ignored: its batch had not completed.
struct LostLedger {
    file: Mutex<std::fs::File>,
    path: PathBuf,
    by_batch: Mutex<std::collections::BTreeMap<u64, u64>>,
}

impl LostLedger {
    fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        let mut by_batch = std::collections::BTreeMap::new();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for (n, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let fields: Vec<u64> = std::str::from_utf8(line)
                .ok()
                .map(|l| l.split(' ').filter_map(|f| f.parse().ok()).collect())
                .unwrap_or_default();
            let [time, lost, _blocks] = fields[..] else {
                bail!(
                    "{} line {}: expected `<batch ms> <lost records> <lost blocks>`",
                    path.display(),
                    n + 1
                );
            };
            by_batch.insert(time, lost);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        if complete < text.len() {
            // Cut the torn tail so the next line starts on its own.
            file.set_len(complete as u64)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("truncating the torn tail of {}", path.display()))?;
        }
        Ok(LostLedger {
            file: Mutex::new(file),
            path: path.to_owned(),
            by_batch: Mutex::new(by_batch),
        })
    }

    /// Records a completed batch's losses (only if they differ from what is recorded).
    fn record(&self, batch: &engine::BatchInfo) -> anyhow::Result<()> {
        use std::io::Write;
        let time = batch.batch_time.as_millis();
        let mut by_batch = self.by_batch.lock().unwrap_or_else(|e| e.into_inner());
        if by_batch.get(&time).copied().unwrap_or(0) == batch.lost_records {
            return Ok(());
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(format!("{time} {} {}\n", batch.lost_records, batch.lost_blocks).as_bytes())
            .and_then(|()| file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        by_batch.insert(time, batch.lost_records);
        Ok(())
    }

    fn total(&self) -> u64 {
        self.by_batch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

/// Ends the run once the lines in state plus the lines lost reach `--lines`, and keeps the
/// lost-records ledger. Runs on the job thread after each batch's outputs, before the batch
/// is reported complete to the driver (and so before any checkpoint covering it).
struct Completion {
    lines: u64,
    lines_done: Arc<AtomicU64>,
    ledger: Option<Arc<LostLedger>>,
    lost_this_run: AtomicU64,
    failure: Mutex<Option<String>>,
    stop: engine::StopHandle,
}

impl engine::StreamingListener for Completion {
    fn on_batch_completed(&self, batch: &engine::BatchInfo) {
        if batch.failure.is_some() {
            return;
        }
        let lost = match &self.ledger {
            Some(ledger) => {
                if let Err(e) = ledger.record(batch) {
                    // Without the ledger the run cannot account for its losses: stop now,
                    // without a graceful drain, and let a restart redo this batch.
                    tracing::error!(error = %format!("{e:#}"), "cannot record lost records");
                    *self.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("{e:#}"));
                    self.stop.request_stop(false);
                    return;
                }
                ledger.total()
            }
            None => {
                self.lost_this_run
                    .fetch_add(batch.lost_records, Ordering::SeqCst)
                    + batch.lost_records
            }
        };
        let done = self.lines_done.load(Ordering::SeqCst);
        if done + lost >= self.lines {
            tracing::info!(
                lines_processed = done,
                lost_records = lost,
                "every line is accounted for; stopping"
            );
            self.stop.request_stop(true);
        }
    }
}
