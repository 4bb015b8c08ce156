//! `ember run wordcount`: the word count with a running total, over a socket text source,
//! until N lines have been processed; writes the sorted counts and the baseline's metrics.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use engine::StreamingContext;
use serde_json::{Value, json};

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
    /// The source: tcp://HOST:PORT (lines of text) or kafka://HOST:PORT/topic (each record
    /// one line; with --sink).
    #[arg(long)]
    source: String,
    #[command(flatten)]
    kafka: crate::kafka::KafkaArgs,
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
    /// Maximum block size in bytes [default: 4 MiB].
    #[arg(long)]
    block_size_max_bytes: Option<usize>,
    /// Blocks stored but not yet through their block stages [default: workers, at least 2].
    #[arg(long)]
    receiver_queue_blocks_max: Option<usize>,
    /// Give up (exit 3) if the lines have not all been processed after this long.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
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
    let Some(address) = args.source.strip_prefix("tcp://") else {
        bail!("--source must be tcp://HOST:PORT, not {:?}", args.source);
    };
    let settings = Settings {
        address: address.to_owned(),
        batch_ms: args.batch_ms,
        partitions: args.partitions,
        workers: args.workers,
        block_interval_ms: args.block_interval_ms,
        block_size_max_bytes: args.block_size_max_bytes,
        receiver_queue_blocks_max: args.receiver_queue_blocks_max,
    };
    let config = settings.config();
    let (partitions, workers) = (config.partitions, config.worker_threads);
    let ctx = StreamingContext::new(config).context("invalid settings")?;
    let totals = wordcount::build(&ctx, &settings.address, engine::SocketOptions::default())?;
    let observed = Arc::new(Observed::default());
    ctx.add_listener(Arc::new(Monitor {
        lines: args.lines,
        observed: Arc::clone(&observed),
        stop: ctx.stop_handle(),
        on_batch: None,
    }));
    ctx.stop_on_signals()?;
    ctx.start()?;
    let stopped = ctx.await_termination_timeout(Some(Duration::from_secs(args.timeout_s)));
    let timed_out = matches!(stopped, Ok(false));
    if timed_out {
        tracing::error!(timeout_s = args.timeout_s, "timed out; stopping");
        ctx.stop(false).ok();
    } else {
        stopped.context("the pipeline failed")?;
    }
    let stopped_ms = engine::clock::now_epoch_ms();

    let rows = wordcount::sorted_counts(&totals.lock().unwrap_or_else(|e| e.into_inner()));
    wordcount::write_atomically(&args.out, &wordcount::tsv(&rows))?;

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
    let lines_seen = m.get("lines").and_then(Value::as_u64).unwrap_or(0);
    m.insert(
        "engine".into(),
        json!(format!("ember {}", env!("CARGO_PKG_VERSION"))),
    );
    m.insert("durability".into(), json!("ignore"));
    m.insert("wal".into(), json!(false));
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
    Ok(if timed_out || lines_seen != args.lines {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
