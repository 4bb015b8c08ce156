//! `ember wal`: inspect, verify and dump a write-ahead log, and a crash-and-recover demo.
//!
//! Every subcommand is read-only except `demo`: `inspect`, `verify` and `dump` never take
//! the log's lock and never cut a torn tail, so they are safe on a log that a running
//! process has open.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::wal::fs::{Dir, LocalDir};
use ::wal::recovery::{self, Analysis, Decision, Progress, Verdict};
use ::wal::store::{DirSegmentStore, LOCK_FILE_NAME, SegmentStore};
use ::wal::{Config, Lsn, SyncPolicy, Wal};
use anyhow::{Context, anyhow, bail};
use clap::Subcommand;

/// Exit code of `verify` (and `inspect`) when the newest segment ends in a torn tail: the
/// log is fine and opening it cuts the tail, but it is not clean.
const EXIT_TORN_TAIL: u8 = 3;

/// Inspect, verify or dump a write-ahead log directory, or run the crash demo.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: WalCommand,
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// List segments (Lsn range, records, bytes, sealed or open) and the recovery verdict.
    ///
    /// Exit status: 0 if the log is clean, 3 if it ends in a torn tail (opening it cuts
    /// the tail), 1 if recovery would refuse to open it (corruption, a missing segment).
    Inspect {
        /// The WAL directory.
        dir: PathBuf,
    },
    /// Check every record checksum of every segment.
    ///
    /// Exit status: 0 if clean; 3 if the log ends in a torn tail (the location is
    /// printed; opening the log cuts it); 1 with the segment file and byte offset if
    /// anything else is wrong. Shows a progress bar when stderr is a terminal.
    Verify {
        /// The WAL directory.
        dir: PathBuf,
    },
    /// Print records, one per line: `<lsn> <length> <bytes>`.
    Dump {
        /// The WAL directory.
        dir: PathBuf,
        /// First Lsn to print (default: the oldest record).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        from: Option<u64>,
        /// Most records to print.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// Print payloads as hexadecimal.
        #[arg(long, conflicts_with = "utf8")]
        hex: bool,
        /// Print payloads as UTF-8 text (invalid sequences shown as U+FFFD).
        #[arg(long)]
        utf8: bool,
    },
    /// Write records with group commit in a child process, kill -9 it at a random moment,
    /// recover the log and check that every acknowledged record survived.
    Demo(DemoArgs),
    /// The child process of `demo` (internal).
    #[command(hide = true)]
    DemoChild {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        writers: u64,
    },
}

/// Options of the crash-and-recover demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory for the log (default: a new temporary directory, removed afterwards).
    /// An existing log there is continued.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed for the kill moment and record contents (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent appending threads in the child.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    writers: u64,
}

/// Runs `ember wal ...`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        WalCommand::Inspect { dir } => inspect(&dir),
        WalCommand::Verify { dir } => verify(&dir),
        WalCommand::Dump {
            dir,
            from,
            limit,
            hex,
            utf8,
        } => {
            let format = if hex {
                PayloadFormat::Hex
            } else if utf8 {
                PayloadFormat::Utf8
            } else {
                PayloadFormat::Escaped
            };
            dump(&dir, from.map(Lsn::new), limit, format)
        }
        WalCommand::Demo(args) => demo(args),
        WalCommand::DemoChild { dir, seed, writers } => demo_child(&dir, seed, writers),
    }
}

/// Opens an existing WAL directory for reading, with one clear error for a missing
/// directory, a file, an unreadable directory, or a directory that is not a WAL.
fn open_store(dir: &Path) -> anyhow::Result<Arc<dyn SegmentStore>> {
    let local = LocalDir::open(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("WAL directory {} does not exist", dir.display()),
        std::io::ErrorKind::NotADirectory => anyhow!("{} is not a directory", dir.display()),
        std::io::ErrorKind::PermissionDenied => {
            anyhow!(
                "cannot read WAL directory {}: permission denied",
                dir.display()
            )
        }
        _ => anyhow::Error::new(e).context(format!("cannot open WAL directory {}", dir.display())),
    })?;
    let names = local
        .list()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    let has_segments = names
        .iter()
        .any(|n| DirSegmentStore::parse_file_name(n).is_some());
    let has_lock = names.iter().any(|n| n == LOCK_FILE_NAME);
    if !has_segments && !has_lock {
        bail!(
            "{} is not a WAL directory: it has no segment files (segment-<20 digits>.wal) and no {}",
            dir.display(),
            LOCK_FILE_NAME
        );
    }
    Ok(Arc::new(DirSegmentStore::new(Arc::new(local))))
}

fn analyze(
    store: &dyn SegmentStore,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<Analysis> {
    Ok(recovery::analyze(
        store,
        Config::default().index_interval_bytes,
        progress,
    )?)
}

fn verdict_exit(verdict: &Verdict) -> ExitCode {
    match verdict {
        Verdict::Clean => ExitCode::SUCCESS,
        Verdict::TornTail { .. } | Verdict::TornSegment { .. } => ExitCode::from(EXIT_TORN_TAIL),
        _ => ExitCode::FAILURE,
    }
}

fn inspect(dir: &Path) -> anyhow::Result<ExitCode> {
    let store = open_store(dir)?;
    let analysis = analyze(store.as_ref(), &mut |_| {})?;
    let mut out = String::new();
    let records: u64 = analysis.segments.iter().map(|s| s.scan.records).sum();
    let bytes: u64 = analysis.segments.iter().map(|s| s.len_bytes).sum();
    let first = analysis
        .segments
        .iter()
        .find(|s| s.scan.records > 0)
        .and_then(|s| s.scan.base_lsn);
    let last = analysis
        .segments
        .iter()
        .rev()
        .find(|s| s.scan.records > 0)
        .and_then(|s| s.scan.end_lsn());
    let range = match (first, last) {
        _ if !analysis.verdict.is_recoverable() => {
            "Lsn range unknown (damaged, see below)".to_owned()
        }
        (Some(f), Some(end)) => format!("Lsn {f}..={}", end.get() - 1),
        _ => "no records".to_owned(),
    };
    writeln!(
        out,
        "WAL {}: {} segments, {range}, {records} records, {}",
        dir.display(),
        analysis.segments.len(),
        human_bytes(bytes)
    )?;
    if !analysis.segments.is_empty() {
        writeln!(
            out,
            "{:<34} {:<6} {:>23} {:>9} {:>12}  status",
            "segment", "state", "Lsns", "records", "bytes"
        )?;
    }
    for segment in &analysis.segments {
        let file = Path::new(&segment.name)
            .file_name()
            .map_or(segment.name.clone(), |f| f.to_string_lossy().into_owned());
        let lsns = match (segment.scan.base_lsn, segment.scan.end_lsn()) {
            (Some(base), _) if segment.decision.is_failure() => format!("{base}..?"),
            (Some(base), Some(end)) if end > base => format!("{base}..={}", end.get() - 1),
            (Some(base), _) => format!("(empty, next {base})"),
            _ => "?".to_owned(),
        };
        let state = if segment.is_sealed() {
            "sealed"
        } else {
            "open"
        };
        let status = match segment.decision {
            Decision::Accept => "ok".to_owned(),
            Decision::TruncateTail => format!(
                "torn tail at byte {} ({} bytes cut on open)",
                segment.scan.valid_len,
                segment.len_bytes - segment.scan.valid_len
            ),
            Decision::DiscardSegment => "torn while being created (deleted on open)".to_owned(),
            Decision::FailCorrupt | Decision::FailMissing | Decision::FailUnsupported => {
                let at = segment
                    .scan
                    .damage
                    .map_or(String::new(), |d| format!(" at byte {}", d.offset));
                format!("BAD{at}: {}", segment.why)
            }
        };
        writeln!(
            out,
            "{file:<34} {state:<6} {lsns:>23} {:>9} {:>12}  {status}",
            segment.scan.records, segment.len_bytes
        )?;
    }
    writeln!(out, "recovery verdict: {}", analysis.verdict)?;
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(verdict_exit(&analysis.verdict))
}

fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let store = open_store(dir)?;
    let started = Instant::now();
    let mut bar = ProgressBar::new(std::io::stderr().is_terminal());
    let analysis = analyze(store.as_ref(), &mut |p| bar.update(p))?;
    bar.finish();
    let records: u64 = analysis.segments.iter().map(|s| s.scan.records).sum();
    let bytes: u64 = analysis.segments.iter().map(|s| s.len_bytes).sum();
    let elapsed = started.elapsed();
    match &analysis.verdict {
        Verdict::Clean => {
            println!(
                "verify: clean: {} segments, {records} records, {} checked in {:.2} s",
                analysis.segments.len(),
                human_bytes(bytes),
                elapsed.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        verdict @ (Verdict::TornTail { .. } | Verdict::TornSegment { .. }) => {
            println!("verify: {verdict}; {records} valid records before it");
            Ok(ExitCode::from(EXIT_TORN_TAIL))
        }
        verdict => Err(anyhow!("verify: {verdict}")),
    }
}

/// How `dump` prints payloads.
#[derive(Clone, Copy, Debug)]
enum PayloadFormat {
    /// Printable ASCII as is, everything else as `\xNN` escapes.
    Escaped,
    Hex,
    Utf8,
}

fn dump(
    dir: &Path,
    from: Option<Lsn>,
    limit: u64,
    format: PayloadFormat,
) -> anyhow::Result<ExitCode> {
    let store = open_store(dir)?;
    let wal = Wal::open_read_only(store, Config::default())?;
    if wal.recovery().verdict != Verdict::Clean {
        eprintln!("ember: note: {}", wal.recovery().verdict);
    }
    let (Some(first), Some(last)) = (wal.first_lsn(), wal.last_lsn()) else {
        eprintln!("ember: note: the log has no records");
        return Ok(ExitCode::SUCCESS);
    };
    let from = from.unwrap_or(first);
    if from < first {
        eprintln!(
            "ember: note: Lsn {from} was removed by retention; starting at the oldest record, Lsn {first}"
        );
    } else if from > last {
        eprintln!("ember: note: no records at or after Lsn {from}; the newest is Lsn {last}");
        return Ok(ExitCode::SUCCESS);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for item in wal
        .iter_from(from)?
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
    {
        let (lsn, bytes) = item?;
        let shown = match format {
            PayloadFormat::Escaped => bytes.escape_ascii().to_string(),
            PayloadFormat::Hex => {
                bytes
                    .iter()
                    .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
                        let _ = write!(s, "{b:02x}");
                        s
                    })
            }
            PayloadFormat::Utf8 => String::from_utf8_lossy(&bytes).into_owned(),
        };
        let written = writeln!(out, "{lsn} {} {shown}", bytes.len());
        if let Err(e) = written {
            // `ember wal dump | head` closes the pipe early; that is not an error.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A progress bar of our own: one line on stderr, redrawn at most ten times a second, only
/// when stderr is a terminal. (A dependency like indicatif would pull in terminal-handling
/// crates for what is twenty lines here.)
struct ProgressBar {
    enabled: bool,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl ProgressBar {
    fn new(enabled: bool) -> ProgressBar {
        ProgressBar {
            enabled,
            last_draw: None,
            drawn: false,
        }
    }

    fn update(&mut self, progress: Progress) {
        // Small logs finish before a bar helps; draw only for logs over 64 MiB.
        if !self.enabled || progress.total_bytes < (64 << 20) {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(now);
        let fraction = progress.done_bytes as f64 / progress.total_bytes.max(1) as f64;
        let filled = (fraction * 30.0) as usize;
        eprint!(
            "\r[{}{}] {:>3.0}% {} of {}",
            "#".repeat(filled),
            ".".repeat(30 - filled.min(30)),
            fraction * 100.0,
            human_bytes(progress.done_bytes),
            human_bytes(progress.total_bytes)
        );
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprint!("\r{}\r", " ".repeat(70));
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

// ---- The crash-and-recover demo. ----

/// The payload of record `n` of writer `w`: readable text, then filler, 64 to 2,048 bytes,
/// all determined by `(seed, w, n)` so the parent can check every byte.
fn demo_payload(seed: u64, w: u64, n: u64) -> Vec<u8> {
    let mut x =
        seed ^ w.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 64 + (next() % 1985) as usize;
    let mut out = format!("demo seed {seed} writer {w} record {n} ").into_bytes();
    while out.len() < len {
        out.push(b'a' + (next() % 26) as u8);
    }
    out.truncate(len);
    out
}

fn demo_config() -> Config {
    // Small segments so that a short demo crosses several segment boundaries.
    Config {
        segment_size_max_bytes: 4 << 20,
        record_size_max_bytes: 64 << 10,
        sync_policy: SyncPolicy::GROUP_COMMIT_DEFAULT,
        ..Config::default()
    }
}

/// The child: appends from `writers` threads until killed, printing `ACK <lsn> <w> <n>`
/// after each append resolved (is durable).
fn demo_child(dir: &Path, seed: u64, writers: u64) -> anyhow::Result<ExitCode> {
    let wal = Arc::new(Wal::open_dir(dir, demo_config())?);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || -> anyhow::Result<()> {
                // Bounded, in case nobody kills us.
                for n in 0..2_000_000u64 {
                    let lsn = wal.append_blocking(demo_payload(seed, w, n))?;
                    // One short write(2) per line: atomic on a pipe, so a kill never
                    // leaves half a line.
                    std::io::stdout()
                        .lock()
                        .write_all(format!("ACK {lsn} {w} {n}\n").as_bytes())?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow!("demo writer thread panicked"))??;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the demo: child writes, parent kills it with SIGKILL, recovers and checks.
pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("ember-wal-demo-{}-{seed}", std::process::id())),
            true,
        ),
    };
    let result = run_demo(&dir, seed, args.writers);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_demo(dir: &Path, seed: u64, writers: u64) -> anyhow::Result<ExitCode> {
    let kill_after = 2_000 + seed % 18_000;
    println!("ember wal demo (seed {seed}; re-run with --seed {seed})");
    println!("  log directory: {}", dir.display());
    let before = if dir.exists() {
        Wal::open_dir(dir, demo_config())?.last_lsn()
    } else {
        None
    };
    if let Some(last) = before {
        println!("  continuing an existing log that ends at Lsn {last}");
    }
    let exe = std::env::current_exe().context("cannot find the ember binary to start the child")?;
    let mut child = Command::new(exe)
        .args([
            "wal",
            "demo-child",
            "--seed",
            &seed.to_string(),
            "--writers",
            &writers.to_string(),
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the demo's child process")?;
    println!(
        "1. child process {} appends records from {writers} threads with group commit; each append \
         returns only once its record is fsynced",
        child.id()
    );
    let stdout = child.stdout.take().context("child has no stdout pipe")?;
    let child = Arc::new(Mutex::new(child));
    // Watchdog: if the child stops acknowledging for 30 s (it should not), kill it anyway
    // so the demo cannot hang.
    let (progress_tx, progress_rx) = mpsc::channel::<()>();
    let watchdog = {
        let child = Arc::clone(&child);
        std::thread::spawn(move || {
            loop {
                match progress_rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Disconnected) => return false,
                    Err(RecvTimeoutError::Timeout) => {
                        let _ = child.lock().map(|mut c| c.kill());
                        return true;
                    }
                }
            }
        })
    };
    let mut acked: Vec<(Lsn, u64, u64)> = Vec::new();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let mut killed_at = None;
    let started = Instant::now();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let _ = progress_tx.send(());
        let Some(fields) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ACK ")) else {
            continue;
        };
        let parts: Vec<u64> = fields.split(' ').filter_map(|f| f.parse().ok()).collect();
        let [lsn, w, n] = parts[..] else {
            bail!("unexpected line from the child: {line:?}")
        };
        acked.push((Lsn::new(lsn), w, n));
        if killed_at.is_none() && acked.len() as u64 >= kill_after {
            child
                .lock()
                .map_err(|_| anyhow!("child handle poisoned"))?
                .kill()
                .context("cannot kill the child")?; // SIGKILL
            killed_at = Some((acked.len(), started.elapsed()));
        }
    }
    drop(progress_tx);
    let timed_out = watchdog.join().unwrap_or(false);
    let status = child
        .lock()
        .map_err(|_| anyhow!("child handle poisoned"))?
        .wait()?;
    if timed_out {
        bail!("the child stopped acknowledging appends for 30 s and was killed ({status})");
    }
    let Some((acked_at_kill, elapsed)) = killed_at else {
        bail!(
            "the child exited ({status}) before the kill point; {} records acknowledged",
            acked.len()
        );
    };
    println!(
        "2. kill -9 after {acked_at_kill} acknowledged appends ({:.2} s, {:.0} appends/s); {} more \
         acknowledgements were already in the pipe",
        elapsed.as_secs_f64(),
        acked_at_kill as f64 / elapsed.as_secs_f64().max(1e-9),
        acked.len() - acked_at_kill
    );

    let wal = Wal::open_dir(dir, demo_config()).context("recovery failed")?;
    let recovery = wal.recovery();
    println!(
        "3. reopened the log: {} segment(s) scanned, every checksum verified; recovery verdict: {}",
        recovery.segments.len(),
        recovery.verdict
    );
    for action in &recovery.actions {
        println!("   recovery: {action}");
    }
    let mut missing = Vec::new();
    for &(lsn, w, n) in &acked {
        match wal.read(lsn) {
            Ok(bytes) if bytes[..] == demo_payload(seed, w, n)[..] => {}
            Ok(_) => missing.push(format!("Lsn {lsn}: different bytes")),
            Err(e) => missing.push(format!("Lsn {lsn}: {e}")),
        }
    }
    let last = wal.last_lsn().map_or(0, Lsn::get);
    let new_records = last - before.map_or(0, Lsn::get);
    if missing.is_empty() {
        println!(
            "4. all {} acknowledged records are in the log with their exact bytes; the log holds {new_records} \
             new records (written before the kill, some not yet acknowledged)",
            acked.len()
        );
        println!("result: nothing acknowledged was lost");
        Ok(ExitCode::SUCCESS)
    } else {
        for m in missing.iter().take(20) {
            eprintln!("   LOST {m}");
        }
        bail!(
            "{} of {} acknowledged records are missing or wrong after recovery",
            missing.len(),
            acked.len()
        );
    }
}
