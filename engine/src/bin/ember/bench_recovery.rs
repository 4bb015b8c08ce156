//! `ember bench recovery`: time from `kill -9` of a WAL-mode pipeline to its first resumed
//! batch, with a given amount of data WAL to open.
//!
//! 1. A child (`--role fill`) runs a checkpointed word count in WAL mode whose receiver
//!    stores 4 MiB blocks of text as fast as the log takes them, with checkpoints far
//!    apart so nothing is truncated, until the data WAL holds `--wal-mib` MiB; it then
//!    prints `FILLED` and keeps running.
//! 2. The parent `kill -9`s it, notes the time, and starts a second child (`--role
//!    restart`) on the same directories, which opens everything (data WAL recovery scans
//!    every segment, metadata log replay), re-runs the first lost batch and prints
//!    `RESUMED <epoch ms>` when it completes. Repeated `--runs` times (each restart is
//!    killed in turn, so the WAL stays the same); the median is reported.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use engine::{
    BatchInfo, Config, Durability, DurabilityConfig, Receiver, ReceiverContext, Str,
    StreamingContext, StreamingListener,
};

/// Measure restart time after kill -9 with a large data WAL.
#[derive(Debug, clap::Args)]
pub struct RecoveryArgs {
    /// Data WAL to accumulate before the kill, in MiB.
    #[arg(long, default_value_t = 1024)]
    wal_mib: u64,
    /// Restarts measured (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Batch interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    batch_ms: u64,
    /// Where to keep the checkpoint and WAL directories (default: a temporary directory,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Internal: the child's role (fill | restart).
    #[arg(long, hide = true)]
    role: Option<String>,
}

const BLOCK_BYTES: usize = 4 << 20;

/// Stores the same 4 MiB block of text lines over and over (when `active`).
struct Pump {
    active: bool,
}

impl Receiver for Pump {
    type Record = Str;
    fn codec(&self) -> Arc<dyn engine::BlockCodec<Str>> {
        Arc::new(engine::LinesCodec)
    }
    async fn run(self, ctx: ReceiverContext<Str>) -> engine::Result<()> {
        let mut text = String::with_capacity(BLOCK_BYTES + 64);
        let mut i = 0u64;
        while text.len() < BLOCK_BYTES {
            i += 1;
            text.push_str(&format!(
                "w{} w{} w{} w{} w{}\n",
                i % 1000,
                i % 997,
                i % 13,
                i % 7919,
                i % 101
            ));
        }
        let lines = text.lines().count() as u64;
        let block = Bytes::from(text);
        while self.active && !ctx.is_stopped() {
            ctx.store_bytes(block.clone(), lines).await?;
        }
        ctx.stopped().await;
        Ok(())
    }
}

struct FirstBatch;
impl StreamingListener for FirstBatch {
    fn on_batch_completed(&self, b: &BatchInfo) {
        if b.failure.is_none() {
            println!(
                "RESUMED {} {} {}",
                engine::clock::now_epoch_ms(),
                b.batch_time.as_millis(),
                b.records()
            );
            // The measurement ends here; the parent kills this process.
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    }
}

fn open(dir: &Path, batch_ms: u64, active: bool) -> anyhow::Result<StreamingContext> {
    let config = Config::new(Duration::from_millis(batch_ms));
    let durability = DurabilityConfig {
        // No checkpoint during the fill, so the whole log stays to be opened.
        checkpoint_interval_batches: 1_000_000_000,
        ..DurabilityConfig::new(Durability::wal(dir.join("wal")))
    };
    let ctx = StreamingContext::get_or_create(dir.join("ckpt"), config, durability, |ctx| {
        ctx.receiver_stream("pump", Pump { active })?
            .flat_map(|l| l.split(' '))
            .map(|w| (w, 1u64))
            .reduce_by_key(|a, b| a + b)
            .foreach_batch(|_, _| {});
        Ok(())
    })?;
    Ok(ctx)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else if e.file_name().to_string_lossy().starts_with("segment-") {
                // Segments only: preallocated spares hold no records.
                e.metadata().map_or(0, |m| m.len())
            } else {
                0
            }
        })
        .sum()
}

pub fn run(args: RecoveryArgs) -> anyhow::Result<ExitCode> {
    match args.role.as_deref() {
        Some("fill") => {
            let dir = args.dir.context("--dir is required")?;
            let ctx = open(&dir, args.batch_ms, true)?;
            ctx.start()?;
            let target = args.wal_mib << 20;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if dir_bytes(&dir.join("wal")) >= target {
                    println!("FILLED");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    ctx.await_termination()?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        Some("restart") => {
            let dir = args.dir.context("--dir is required")?;
            let ctx = open(&dir, args.batch_ms, false)?;
            ctx.add_listener(Arc::new(FirstBatch));
            ctx.start()?;
            ctx.await_termination()?;
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => bail!("--role {other}: not a role"),
        None => parent(args),
    }
}

fn child(
    exe: &Path,
    dir: &Path,
    args: &RecoveryArgs,
    role: &str,
) -> anyhow::Result<std::process::Child> {
    Command::new(exe)
        .args(["bench", "recovery", "--role", role, "--dir"])
        .arg(dir)
        .args(["--wal-mib", &args.wal_mib.to_string()])
        .args(["--batch-ms", &args.batch_ms.to_string()])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the {role} child"))
}

fn wait_line(child: &mut std::process::Child, prefix: &str) -> anyhow::Result<String> {
    let out = child.stdout.as_mut().context("child stdout")?;
    let mut reader = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the child exited before printing {prefix}");
        }
        if line.starts_with(prefix) {
            return Ok(line.trim().to_owned());
        }
    }
}

fn kill9(child: &mut std::process::Child) {
    // SIGKILL: what `kill -9` sends.
    let _ = child.kill();
    let _ = child.wait();
}

fn parent(args: RecoveryArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the ember binary")?;
    let temp = args.dir.is_none();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ember-bench-recovery-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| -> anyhow::Result<()> {
        eprintln!(
            "[recovery] filling {} MiB of data WAL in {} ...",
            args.wal_mib,
            dir.display()
        );
        let mut fill = child(&exe, &dir, &args, "fill")?;
        wait_line(&mut fill, "FILLED")?;
        kill9(&mut fill);
        let wal_bytes = dir_bytes(&dir.join("wal"));
        let mut times = Vec::new();
        for run in 0..args.runs {
            // Drop the page cache's advantage? Not possible unprivileged; the log was just
            // written, so it is mostly cached, as it is after a process crash (not a reboot).
            let t0 = engine::clock::now_epoch_ms();
            let mut restart = child(&exe, &dir, &args, "restart")?;
            let line = wait_line(&mut restart, "RESUMED")?;
            kill9(&mut restart);
            let mut parts = line.split_whitespace().skip(1);
            let t1: u64 = parts
                .next()
                .and_then(|v| v.parse().ok())
                .context("RESUMED time")?;
            let batch = parts.next().unwrap_or("?").to_owned();
            let records = parts.next().unwrap_or("?").to_owned();
            let ms = t1.saturating_sub(t0);
            eprintln!(
                "[recovery] run {}: {ms} ms to the first resumed batch ({batch}, {records} records)",
                run + 1
            );
            times.push(ms);
        }
        times.sort_unstable();
        let median = times[times.len() / 2];
        println!(
            "data WAL {:.0} MiB; kill -9 to first resumed batch: median {median} ms over {} runs (min {}, max {})",
            wal_bytes as f64 / f64::from(1 << 20),
            times.len(),
            times[0],
            times[times.len() - 1]
        );
        Ok(())
    })();
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
