//! `ember bench wordcount`: the word-count benchmark, measured as the Spark baseline is.
//!
//! Like the baseline's `run.sh`: the generator (`ember gen`, a child process, lines
//! pre-generated) is started first and waited for; then the pipeline (`ember run
//! wordcount`, another child) is launched, and the launch time taken just before; the
//! pipeline reports its batches and its own peak RSS (the generator's memory is not
//! counted, as Spark's is not); the generator reports when it accepted the connection.
//! The counts are compared byte for byte with the generator's expected counts.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use engine::workload::process::GeneratorProcess;
use engine::workload::{
    DEFAULT_SEED, DEFAULT_VOCAB_SIZE, DEFAULT_WORDS_PER_LINE, DEFAULT_ZIPF_S, WorkloadSpec,
};
use serde_json::{Map, Value, json};

/// Run a benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// The network word count against the workload generator, with the Spark baseline's
    /// metrics: a table, or with --json one JSON line with the baseline's keys.
    #[command(after_help = "\
Examples:
  ember bench wordcount --lines 2000000 --words 10
  ember bench wordcount --lines 50000000 --json
The same workload and metrics as ../shared/anchors/spark-streaming (run.sh); see BENCHMARKS.md.")]
    Wordcount(WordcountArgs),
    /// Time from kill -9 of a WAL-mode pipeline to its first resumed batch, with a large
    /// data WAL to open (see BENCHMARKS.md).
    Recovery(crate::bench_recovery::RecoveryArgs),
    /// The broker's ceiling: one plain consumer reads a whole Kafka topic once, nothing
    /// else (prints KAFKAREAD {json}; see BENCHMARKS.md, Kafka section).
    #[command(
        after_help = "Example:\n  ember bench kafka-read --source kafka://127.0.0.1:9092/bench"
    )]
    KafkaRead(crate::bench_kafka::ReadArgs),
}

#[derive(Debug, clap::Args)]
pub struct WordcountArgs {
    /// Lines (N).
    #[arg(long)]
    lines: u64,
    /// Words per line (K).
    #[arg(long, default_value_t = DEFAULT_WORDS_PER_LINE)]
    words: u32,
    /// Generator seed.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Distinct words (V).
    #[arg(long, default_value_t = DEFAULT_VOCAB_SIZE)]
    vocab: u32,
    /// Zipf exponent.
    #[arg(long = "zipf-s", default_value_t = DEFAULT_ZIPF_S, allow_negative_numbers = true)]
    zipf_s: f64,
    /// Batch interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_ms: u64,
    /// Write the counts here (default: a temporary file, removed afterwards).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON line (the baseline's keys) instead of a table.
    #[arg(long)]
    json: bool,
    /// Partitions of the key operators [default: cores].
    #[arg(long)]
    partitions: Option<usize>,
    /// Pipeline worker threads [default: cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Maximum block size in bytes [default: 1 MiB in memory, 4 MiB with --durability wal or
    /// replicated].
    #[arg(long)]
    block_size_max_bytes: Option<usize>,
    /// Blocks stored but not yet through their block stages [default: workers, at least 2].
    #[arg(long)]
    receiver_queue_blocks_max: Option<usize>,
    /// Give up after this long.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// Stop the pipeline when the generator closes the connection (`ember run wordcount
    /// --stop-at-end-of-stream`): its last batch then runs at once instead of at its grid
    /// time. `false`: reconnect, and stop only after the batch holding line N ran at its
    /// grid time, as the Spark baseline does (see BENCHMARKS.md).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    stop_at_end_of_stream: bool,
    /// Durability mode of the pipeline's stream (ignore, wal, replicated): runs `ember run
    /// wordcount --durability MODE --checkpoint DIR` in a temporary directory. Without it
    /// the pipeline runs without a checkpoint directory (in-memory, as the Spark baseline).
    #[arg(long, value_name = "MODE")]
    durability: Option<String>,
    /// For --durability replicated: start this many `ember executor`s on 127.0.0.1.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// For --durability replicated: executors holding each block.
    #[arg(long, default_value_t = 1)]
    replication: usize,
    /// With --durability: the checkpoint location (a directory or a storage URL such as
    /// s3://bucket/prefix, settings from AWS_*) [default: a temporary directory].
    #[arg(long, value_name = "DIR|URL")]
    checkpoint: Option<String>,
    /// With --durability wal: the data WAL's location (`ember run wordcount --wal`)
    /// [default: CHECKPOINT/wal].
    #[arg(long, value_name = "DIR|URL")]
    wal: Option<String>,
    /// With --durability: a checkpoint every this many batches [default: run's, 10]. A
    /// large value keeps every WAL object (no retention), so they can be counted.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every_batches: Option<u64>,
}

/// Executors started for a replicated run; killed when dropped.
struct Executors(Vec<std::process::Child>, Vec<String>);

impl Executors {
    fn start(exe: &Path, n: usize) -> anyhow::Result<Executors> {
        use std::io::BufRead;
        let mut this = Executors(Vec::new(), Vec::new());
        for _ in 0..n {
            let mut child = Command::new(exe)
                .args(["executor", "--listen", "127.0.0.1:0"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting an executor")?;
            let mut line = String::new();
            let stdout = child.stdout.take().context("executor stdout")?;
            std::io::BufReader::new(stdout).read_line(&mut line)?;
            this.0.push(child);
            let addr = line
                .trim()
                .strip_prefix("READY ")
                .with_context(|| format!("the executor printed {line:?}, not READY ADDR"))?;
            this.1.push(addr.to_owned());
        }
        Ok(this)
    }
}

impl Drop for Executors {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.bench {
        Bench::Wordcount(a) => wordcount(a),
        Bench::Recovery(a) => crate::bench_recovery::run(a),
        Bench::KafkaRead(a) => crate::bench_kafka::run(a),
    }
}

fn wordcount(args: WordcountArgs) -> anyhow::Result<ExitCode> {
    if args.durability.is_none()
        && (args.checkpoint.is_some()
            || args.wal.is_some()
            || args.checkpoint_every_batches.is_some())
    {
        anyhow::bail!("--checkpoint, --wal and --checkpoint-every-batches need --durability MODE");
    }
    let spec = WorkloadSpec {
        lines: args.lines,
        words_per_line: args.words,
        seed: args.seed,
        vocab_size: args.vocab,
        zipf_s: args.zipf_s,
    };
    let exe = std::env::current_exe().context("locating the ember binary")?;
    let dir = std::env::temp_dir().join(format!(
        "ember-bench-{}-{}",
        std::process::id(),
        engine::clock::now_epoch_ms()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_once(&args, &spec, &exe, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (record, ok) = result?;
    if args.json {
        println!("{}", Value::Object(record));
    } else {
        print_table(&record, &args);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_once(
    args: &WordcountArgs,
    spec: &WorkloadSpec,
    exe: &Path,
    dir: &Path,
) -> anyhow::Result<(Map<String, Value>, bool)> {
    let expected_path = dir.join("expected.tsv");
    let out = args.out.clone().unwrap_or_else(|| dir.join("counts.tsv"));
    let metrics_path = dir.join("metrics.json");

    // 1. The generator: pre-generates every line (as the baseline's does), then listens.
    eprintln!(
        "[bench] generating {} lines ({} words each) ...",
        spec.lines, spec.words_per_line
    );
    let mut gen_cmd = Command::new(exe);
    gen_cmd
        .arg("gen")
        .args(spec.to_gen_args())
        .args(["--port", "0", "--expected"])
        .arg(&expected_path);
    let generator = GeneratorProcess::spawn(gen_cmd, Duration::from_secs(1_800))
        .context("starting the generator")?;
    let addr = generator.ready().addr;
    eprintln!("[bench] generator ready on {addr}; launching the pipeline");

    // 2. The pipeline, launched now (the baseline's LAUNCH_MS is taken just before spark-submit).
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let launch_ms = engine::clock::now_epoch_ms();
    let mut run_cmd = Command::new(exe);
    run_cmd
        .args(["run", "wordcount", "--source"])
        .arg(format!("tcp://{addr}"))
        .args([
            "--lines",
            &spec.lines.to_string(),
            "--batch-ms",
            &args.batch_ms.to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .arg("--metrics")
        .arg(&metrics_path)
        .args(["--timeout-s", &args.timeout_s.to_string()])
        .args(
            args.stop_at_end_of_stream
                .then_some("--stop-at-end-of-stream"),
        )
        .env("EMBER_LAUNCH_MS", launch_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (flag, v) in [
        ("--partitions", args.partitions.map(|v| v.to_string())),
        ("--workers", args.workers.map(|v| v.to_string())),
        (
            "--block-size-max-bytes",
            args.block_size_max_bytes.map(|v| v.to_string()),
        ),
        (
            "--receiver-queue-blocks-max",
            args.receiver_queue_blocks_max.map(|v| v.to_string()),
        ),
    ] {
        if let Some(v) = v {
            run_cmd.args([flag, &v]);
        }
    }
    let mut _executors = None;
    if let Some(mode) = &args.durability {
        run_cmd.args(["--durability", mode, "--checkpoint"]);
        match &args.checkpoint {
            Some(location) => run_cmd.arg(location),
            None => run_cmd.arg(dir.join("checkpoint")),
        };
        if let Some(wal) = &args.wal {
            run_cmd.args(["--wal", wal]);
        }
        if let Some(every) = args.checkpoint_every_batches {
            run_cmd.args(["--checkpoint-every-batches", &every.to_string()]);
        }
        if mode == "replicated" {
            let started = Executors::start(exe, args.executors)?;
            run_cmd
                .args(["--executors", &started.1.join(",")])
                .args(["--replication", &args.replication.to_string()]);
            _executors = Some(started);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        run_cmd.env("RUST_LOG", "warn");
    }
    let status = run_cmd.status().context("running the pipeline")?;
    let stats = generator.wait().context("waiting for the generator")?;

    let mut record: Map<String, Value> = match std::fs::read_to_string(&metrics_path) {
        Ok(text) => serde_json::from_str(text.trim())
            .with_context(|| format!("parsing {}", metrics_path.display()))?,
        Err(_) => {
            let mut m = Map::new();
            m.insert("metrics_missing".into(), json!(true));
            m
        }
    };
    let exit_code = status.code().unwrap_or(-1);
    record.insert("exit_code".into(), json!(exit_code));
    record.insert(
        "load_before".into(),
        json!(
            load_before
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    record.insert("words_per_line".into(), json!(spec.words_per_line));
    record.insert(
        "durability".into(),
        json!(args.durability.as_deref().unwrap_or("none")),
    );
    for (k, v) in serde_json::to_value(GenStats::from(&stats))?
        .as_object()
        .into_iter()
        .flatten()
    {
        record.insert(k.clone(), v.clone());
    }
    // The baseline's end-to-end figure: from the generator's accept() to the end of the
    // batch that completed line N.
    if let Some(end) = record
        .get("last_batch_end_epoch_ms")
        .and_then(Value::as_u64)
    {
        let e2e = end.saturating_sub(stats.gen_accept_epoch_ms) as f64 / 1000.0;
        let lines = record.get("lines").and_then(Value::as_u64).unwrap_or(0);
        record.insert("connect_to_last_batch_end_s".into(), json!(e2e));
        record.insert(
            "lines_per_s_connect_to_end".into(),
            json!(((lines as f64 / e2e) * 10.0).round() / 10.0),
        );
    }
    record.insert(
        "launch_to_connect_s".into(),
        json!(stats.gen_accept_epoch_ms.saturating_sub(launch_ms) as f64 / 1000.0),
    );

    let expected = std::fs::read(&expected_path)
        .with_context(|| format!("reading {}", expected_path.display()))?;
    let actual = std::fs::read(&out).unwrap_or_default();
    let matches = actual == expected;
    record.insert("counts_match_expected".into(), json!(matches));
    if !matches {
        eprintln!(
            "[bench] counts differ from the generator's expected counts ({} vs {} bytes)",
            actual.len(),
            expected.len()
        );
    }
    if exit_code != 0 {
        eprintln!("[bench] the pipeline exited with {status}");
    }
    if args.out.is_none() {
        let _ = std::fs::remove_file(&out);
    }
    Ok((record, matches && exit_code == 0))
}

#[derive(serde::Serialize)]
struct GenStats {
    gen_lines: u64,
    gen_bytes: u64,
    gen_precompute_s: f64,
    gen_accept_epoch_ms: u64,
    gen_write_s: f64,
    gen_client_close_s: f64,
    gen_write_lines_per_s: f64,
}

impl From<&engine::workload::serve::ServeStats> for GenStats {
    fn from(s: &engine::workload::serve::ServeStats) -> Self {
        GenStats {
            gen_lines: s.gen_lines,
            gen_bytes: s.gen_bytes,
            gen_precompute_s: s.gen_precompute_s,
            gen_accept_epoch_ms: s.gen_accept_epoch_ms,
            gen_write_s: s.gen_write_s,
            gen_client_close_s: s.gen_client_close_s,
            gen_write_lines_per_s: s.gen_write_lines_per_s,
        }
    }
}

fn print_table(r: &Map<String, Value>, args: &WordcountArgs) {
    let num = |k: &str| r.get(k).and_then(Value::as_f64);
    let show =
        |k: &str, unit: &str| num(k).map_or("-".to_owned(), |v| format!("{} {unit}", group(v)));
    println!(
        "word count, N = {} lines x {} words, batch {} ms",
        args.lines, args.words, args.batch_ms
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| lines/s, connect to end | {} |",
        show("lines_per_s_connect_to_end", "")
    );
    println!("| lines/s, batch window | {} |", show("lines_per_s", ""));
    println!(
        "| connect to last batch end | {} |",
        show("connect_to_last_batch_end_s", "s")
    );
    println!(
        "| launch to ingest-ready (connect) | {} |",
        show("launch_to_connect_s", "s")
    );
    println!("| non-empty batches | {} |", show("batches", ""));
    println!(
        "| processing per batch, mean / max | {} / {} |",
        show("proc_ms_mean", "ms"),
        show("proc_ms_max", "ms")
    );
    println!(
        "| scheduling delay, mean / max | {} / {} |",
        show("sched_delay_ms_mean", "ms"),
        show("sched_delay_ms_max", "ms")
    );
    println!(
        "| peak RSS (pipeline process) | {} |",
        show("peak_rss_mb", "MB")
    );
    println!(
        "| counts match expected | {} |",
        r.get("counts_match_expected")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    );
}

fn group(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in s.chars().rev().enumerate() {
            if i > 0 && i % 3 == 0 && c != '-' {
                out.push(',');
            }
            out.push(c);
        }
        out.chars().rev().collect()
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
