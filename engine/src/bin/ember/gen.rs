//! `ember gen`: the word-count workload, served on one TCP connection like Spark's baseline
//! generator, or written to a file.
//!
//! stdout carries only the protocol of `engine::workload::serve` (a `READY` line once
//! listening, a `GENSTATS {json}` line at the end; with `--ack`, `ACKSTATS {json}` instead)
//! or, with `--dump --out -`, the lines themselves; messages go to stderr.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use engine::workload::acked::{AckedConfig, AckedServer};
use engine::workload::serve::{DataMode, LineServer, ServeConfig};
use engine::workload::{
    DEFAULT_SEED, DEFAULT_VOCAB_SIZE, DEFAULT_WORDS_PER_LINE, DEFAULT_ZIPF_S, StreamConfig,
    Workload, WorkloadSpec, default_threads,
};

/// Serve the word-count benchmark workload on one TCP connection, or write its expected
/// counts or its lines.
///
/// Serving: prepares the lines (all in memory unless --stream), listens, prints
/// `READY port=P ...`, accepts one connection, sends every line as fast as the client reads,
/// half-closes, waits for the client to close, prints `GENSTATS {json}` and exits.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  ember gen --port 9999 --lines 2000000 --words 10 --expected /tmp/expected.tsv
  ember gen --port 0 --lines 50000000 --stream        # bounded memory; prints the port it got
  ember gen --lines 2000000 --expected-only --out expected.tsv
  ember gen --lines 1000 --dump --out -               # the lines themselves, on stdout
  ember gen --kafka 127.0.0.1:9092/lines --partitions 4 --lines 1000000
  ember gen --port 9999 --lines 1000000 --ack --expected expected.tsv
      # acknowledged and resumable: for `ember run wordcount --source tcp://HOST:9999?ack=1`

With --ack the generator speaks the acknowledged protocol (engine::source::ack): the receiver
says where to resume, lines are numbered by position, the receiver acknowledges lines once
they are stored durably, and after a disconnect the generator waits for the next connection.
It serves until every line is acknowledged and no connection came for --linger-s seconds,
then prints ACKSTATS {json} and exits 0. It exits non-zero with an error if a receiver asks
to resume before a line it had acknowledged (acknowledged lines were lost), or acknowledges
lines it was never sent.")]
pub struct Args {
    /// TCP port to listen on; 0 picks a free port (printed in the READY line).
    #[arg(long, required_unless_present_any = ["expected_only", "dump", "kafka"])]
    port: Option<u16>,
    /// Produce the lines into a Kafka topic instead of serving them: HOST:PORT/topic
    /// (created with --partitions partitions if missing; line i goes to partition i mod P).
    #[arg(long, value_name = "HOST:PORT/TOPIC", conflicts_with_all = ["port", "expected_only", "dump", "stream"])]
    kafka: Option<String>,
    /// Partitions of the topic --kafka creates.
    #[arg(long, default_value_t = 4, requires = "kafka", value_parser = clap::value_parser!(u32).range(1..=65535))]
    partitions: u32,
    #[command(flatten)]
    producer: crate::kafka::ProducerArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Lines to serve (N).
    #[arg(long)]
    lines: u64,
    /// Words per line (K).
    #[arg(long, default_value_t = DEFAULT_WORDS_PER_LINE)]
    words: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Distinct words (V).
    #[arg(long, default_value_t = DEFAULT_VOCAB_SIZE)]
    vocab: u32,
    /// Zipf exponent s (word of rank r has weight 1 / (r+1)^s).
    #[arg(long = "zipf-s", default_value_t = DEFAULT_ZIPF_S, allow_negative_numbers = true)]
    zipf_s: f64,
    /// When serving, also write the expected counts (word<TAB>count, sorted) to FILE
    /// before listening.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["expected_only", "dump"])]
    expected: Option<PathBuf>,
    /// Do not serve: write the expected counts to --out.
    #[arg(long, requires = "out", conflicts_with_all = ["port", "dump", "stream"])]
    expected_only: bool,
    /// Do not serve: write the lines themselves to --out.
    #[arg(long, requires = "out", conflicts_with_all = ["port", "stream"])]
    dump: bool,
    /// Output of --expected-only or --dump; `-` is stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Generate while sending, a few chunks ahead (bounded memory), instead of generating
    /// every line before listening as the baseline does.
    #[arg(long)]
    stream: bool,
    /// Generating threads [default: the number of cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Seconds to wait, after the last line, for the client to close its side.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    close_timeout_s: u64,
    /// Serve reliably: the acknowledged, resumable protocol (see below).
    #[arg(long, conflicts_with_all = ["expected_only", "dump", "stream"])]
    ack: bool,
    /// With --ack: seconds to keep listening once every line is acknowledged.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, requires = "ack")]
    linger_s: u64,
}

/// Runs `ember gen`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if args.out.is_some() && !(args.expected_only || args.dump) {
        bail!("--out is the output of --expected-only or --dump; to serve, drop --out");
    }
    let spec = WorkloadSpec {
        lines: args.lines,
        words_per_line: args.words,
        seed: args.seed,
        vocab_size: args.vocab,
        zipf_s: args.zipf_s,
    };
    let workload = Workload::new(spec)?;
    let threads = args.threads.map_or_else(default_threads, usize::from);
    let stream_config = StreamConfig {
        threads,
        ..StreamConfig::default()
    };

    if let (true, Some(out)) = (args.expected_only, &args.out) {
        let expected = workload.expected_counts(threads);
        return write_output(out, |w| expected.write_tsv(w)).map(|()| ExitCode::SUCCESS);
    }
    if let (true, Some(out)) = (args.dump, &args.out) {
        return write_output(out, |w| {
            for chunk in workload.stream(0..spec.lines, stream_config) {
                w.write_all(chunk.bytes())?;
            }
            Ok(())
        })
        .map(|()| ExitCode::SUCCESS);
    }

    if let Some(target) = &args.kafka {
        if let Some(path) = &args.expected {
            workload.expected_counts(threads).write_tsv_file(path)?;
        }
        return crate::kafka::produce(
            target,
            args.partitions,
            &args.producer,
            &workload,
            spec.lines,
            stream_config,
        );
    }

    // Serving. clap makes --port required here.
    let port = args.port.context("--port is required to serve")?;
    if let Some(path) = &args.expected {
        workload.expected_counts(threads).write_tsv_file(path)?;
    }
    if args.ack {
        crate::init_logging("info");
        let config = AckedConfig {
            addr: SocketAddr::new(args.host, port),
            stream: stream_config,
            linger: Duration::from_secs(args.linger_s),
            handshake_timeout: Duration::from_secs(10),
        };
        let server = AckedServer::bind(&workload, config, started.elapsed())?;
        announce(&server.ready().to_string())?;
        let stats = server.serve()?;
        announce(&stats.to_line())?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = ServeConfig {
        addr: SocketAddr::new(args.host, port),
        mode: if args.stream {
            DataMode::Stream(stream_config)
        } else {
            DataMode::Pregenerate(stream_config)
        },
        client_close_timeout: Duration::from_secs(args.close_timeout_s),
    };
    let server = LineServer::bind(&workload, config, started.elapsed())?;
    announce(&server.ready().to_string())?;
    let stats = server.serve_one()?;
    announce(&stats.to_line())?;
    Ok(ExitCode::SUCCESS)
}

/// One protocol line on stdout, flushed at once: a parent process is waiting for it.
fn announce(line: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// Writes `out` with `write`: to stdout for `-` (a reader that goes away early, as
/// `| head` does, is not an error), otherwise atomically to a file (a temporary file, synced,
/// renamed, then the directory synced).
fn write_output(
    out: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    if out == Path::new("-") {
        let mut stdout = BufWriter::with_capacity(1 << 20, io::stdout().lock());
        return match write(&mut stdout).and_then(|()| stdout.flush()) {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
            _ => Ok(()),
        };
    }
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = out.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> io::Result<()> {
        let mut file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut file)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, out)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", out.display()))
}
