//! The word-count kill suite shared by the per-mode tests (`tests/tests/kill_wordcount_*.rs`):
//! a real `ember gen --ack` generator that lives across driver restarts, a real
//! `ember run wordcount --checkpoint DIR|s3://...` driver (its checkpoint location in a
//! temporary directory or on the moto S3 server, [`Storage`]) killed with `kill -9` at seeded moments and
//! started again with the same arguments, optionally `ember executor`s (one of which is
//! also killed and restarted), and at the end an exact comparison of the counts with the
//! generator's expected counts.
//!
//! The oracles, none of them the driver's own bookkeeping:
//! - the generator (`ember gen --ack`) fails, and says so, if any restart asked to resume
//!   before a line it had acknowledged (acknowledged lines lost) or acknowledged lines it
//!   never sent; it must exit 0 with every line acknowledged;
//! - the final counts file against the counts the generator computed from the workload
//!   definition: equal byte for byte (wal, replicated), or, under ignore, never above the
//!   expected count for any word, with exactly `lost_records * words_per_line` words
//!   missing in total, `lost_records` being what the driver reported.
//!
//! The seed decides the kill moments (and which executor dies); it is printed when a suite
//! fails, and `EMBER_KILL_SEED` reruns one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::processes::{Executor, ember_bin};

/// The durability mode under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `--durability ignore`: losses allowed, but counted exactly.
    Ignore,
    /// `--durability wal`: exact counts.
    Wal,
    /// `--durability replicated` on executors, one of which is killed too: exact counts.
    Replicated,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Ignore => "ignore",
            Mode::Wal => "wal",
            Mode::Replicated => "replicated",
        }
    }
}

/// Where the driver keeps what must survive it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Everything in a local checkpoint directory (`--checkpoint DIR`).
    Local,
    /// The checkpoint location on the moto S3 server (`--checkpoint s3://bucket/prefix`):
    /// checkpoints, the metadata log and, under `Mode::Wal`, the data WAL, with the S3
    /// settings in the driver's `AWS_*` environment. The suite is skipped (saying so) if
    /// moto is not installed.
    S3,
}

/// One suite's parameters.
#[derive(Clone, Debug)]
pub struct Suite {
    /// The mode.
    pub mode: Mode,
    /// Where the checkpoint location (and the data WAL) lives.
    pub storage: Storage,
    /// The default seed (`EMBER_KILL_SEED` overrides it).
    pub seed: u64,
    /// Lines of the workload.
    pub lines: u64,
    /// Words per line.
    pub words: u32,
    /// `kill -9`s of the driver.
    pub kills: usize,
    /// The driver's `--max-rate` (lines/s): spreads the run so kills land in every phase.
    pub max_rate: u64,
    /// Each driver run lives a seeded time in this range (ms) before its `kill -9`.
    pub kill_after_ms: std::ops::Range<u64>,
}

impl Suite {
    /// The standard scale of the per-mode suites: 500 k lines of 10 words, 20 kills, the
    /// driver capped at 20 k lines/s so the run lasts ~25 s and each driver lives
    /// 0.3-1.2 s: kills land in every phase (start-up, recovery, steady state, checkpoint)
    /// while the suite stays near 30-40 s on a loaded 2-core machine (the CI budget).
    pub fn standard(mode: Mode, storage: Storage, seed: u64) -> Suite {
        Suite {
            mode,
            storage,
            seed,
            lines: 500_000,
            words: 10,
            kills: 20,
            max_rate: 20_000,
            kill_after_ms: 300..1_200,
        }
    }

    /// [`run`], then prints what the suite saw (kills landed, losses, the generator's
    /// statistics). `None` if the suite was skipped.
    pub fn run_and_report(&self) -> Option<Outcome> {
        let outcome = run(self)?;
        eprintln!(
            "kills landed: {}, lost records: {}, generator: {}",
            outcome.kills_landed, outcome.lost_records, outcome.ack_stats
        );
        Some(outcome)
    }
}

/// What a suite saw, for the test's own extra checks.
#[derive(Debug)]
pub struct Outcome {
    /// The final run's `METRICS` JSON.
    pub metrics: String,
    /// `lost_records` from it.
    pub lost_records: u64,
    /// Driver runs killed while still running.
    pub kills_landed: usize,
    /// The generator's `ACKSTATS` line.
    pub ack_stats: String,
}

/// splitmix64: the suite's seeded choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn in_range(&mut self, r: &std::ops::Range<u64>) -> u64 {
        r.start + self.next() % (r.end - r.start).max(1)
    }
}

/// Prints the seed if the suite panics.
struct SeedReport {
    mode: Mode,
    seed: u64,
    dir: PathBuf,
}

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n*** kill suite ({:?}) failed with seed {} (rerun: EMBER_KILL_SEED={}); \
                 logs in {} (kept)\n",
                self.mode,
                self.seed,
                self.seed,
                self.dir.display()
            );
        }
    }
}

/// Runs a suite; panics (after printing its seed) on any violated oracle. `None` (after a
/// skip message) only for [`Storage::S3`] without moto installed.
pub fn run(suite: &Suite) -> Option<Outcome> {
    let s3 = match suite.storage {
        Storage::Local => None,
        Storage::S3 => Some(crate::moto::Moto::shared()?),
    };
    let seed = std::env::var("EMBER_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(suite.seed);
    let tmp = tempfile::Builder::new()
        .prefix(&format!("ember-kill-{}-", suite.mode.flag()))
        .tempdir()
        .expect("temp dir");
    // Kept on failure (the report says where), removed on success.
    let dir = tmp.keep();
    let _report = SeedReport {
        mode: suite.mode,
        seed,
        dir: dir.clone(),
    };
    let mut rng = Rng(seed);
    eprintln!(
        "kill suite {:?}: seed {seed}, {} lines x {} words, {} kills, dir {}",
        suite.mode,
        suite.lines,
        suite.words,
        suite.kills,
        dir.display()
    );

    let expected_path = dir.join("expected.tsv");
    let mut generator = Generator::start(suite, seed, &expected_path);
    let mut executors: Vec<Executor> = match suite.mode {
        Mode::Replicated => (0..3)
            .map(|_| Executor::start("127.0.0.1:0", &[]))
            .collect(),
        _ => Vec::new(),
    };
    let out = dir.join("counts.tsv");
    let checkpoint = match s3 {
        None => dir.join("checkpoint").display().to_string(),
        Some(moto) => moto.fresh_url(&format!("kill-{}", suite.mode.flag())),
    };
    eprintln!("checkpoint location: {checkpoint}");
    let mut args: Vec<String> = vec![
        "run".into(),
        "wordcount".into(),
        "--source".into(),
        format!("tcp://{}?ack=1", generator.addr),
        "--durability".into(),
        suite.mode.flag().into(),
        "--checkpoint".into(),
        checkpoint,
        "--lines".into(),
        suite.lines.to_string(),
        "--out".into(),
        out.display().to_string(),
        "--batch-ms".into(),
        "100".into(),
        "--max-rate".into(),
        suite.max_rate.to_string(),
        "--checkpoint-every-batches".into(),
        "5".into(),
        "--timeout-s".into(),
        "300".into(),
    ];
    if suite.mode == Mode::Replicated {
        args.push("--executors".into());
        args.push(
            executors
                .iter()
                .map(|e| e.addr.clone())
                .collect::<Vec<_>>()
                .join(","),
        );
        args.push("--replication".into());
        args.push("2".into());
    }

    // The driver's S3 settings, from the environment as a user would give them.
    let env: Vec<(String, String)> = s3
        .map(|moto| {
            moto.s3_settings()
                .into_iter()
                .map(|(k, v)| (k.to_uppercase(), v))
                .collect()
        })
        .unwrap_or_default();

    let mut kills_landed = 0;
    let mut finished = None;
    for i in 0..suite.kills {
        let live_ms = rng.in_range(&suite.kill_after_ms);
        // Replicated: every fourth run also loses an executor mid-run, restarted before the
        // driver's kill (so the restarted driver finds it back).
        let executor_kill = (suite.mode == Mode::Replicated && i % 4 == 1).then(|| {
            (
                rng.next() as usize % executors.len(),
                rng.in_range(&(0..live_ms)),
            )
        });
        let mut driver = Driver::start(&args, &env, &dir, i);
        let started = Instant::now();
        if let Some((victim, at_ms)) = executor_kill {
            sleep_until(started + Duration::from_millis(at_ms));
            eprintln!("run {i}: kill -9 executor {victim} at {at_ms} ms");
            executors[victim].kill9();
            std::thread::sleep(Duration::from_millis(50));
            executors[victim].restart();
        }
        sleep_until(started + Duration::from_millis(live_ms));
        match driver.kill9() {
            Some(status) => {
                // It finished before the kill: the remaining kills have nothing to hit.
                eprintln!("run {i}: finished before its kill ({status})");
                finished = Some((i, status));
                break;
            }
            None => {
                kills_landed += 1;
                eprintln!("run {i}: kill -9 after {live_ms} ms");
            }
        }
        generator.check_alive();
    }
    if let Some((i, status)) = finished {
        assert!(
            status.success(),
            "driver run {i} failed ({status}); stderr:\n{}",
            tail(&dir.join(format!("run-{i}.err")))
        );
    }
    assert!(
        kills_landed >= suite.kills,
        "only {kills_landed} of {} kills landed before the run finished: the workload is too \
         small or the machine too fast for the kill schedule",
        suite.kills
    );

    // The final run, to completion.
    let last = suite.kills;
    let mut driver = Driver::start(&args, &env, &dir, last);
    let status = driver.wait(Duration::from_secs(240));
    let stdout = fs::read_to_string(dir.join(format!("run-{last}.out"))).unwrap_or_default();
    assert!(
        status.success(),
        "final driver run failed ({status}); generator:\n{}\nstderr:\n{}",
        generator.log(),
        tail(&dir.join(format!("run-{last}.err")))
    );
    let metrics = stdout
        .lines()
        .find_map(|l| l.strip_prefix("METRICS "))
        .expect("a METRICS line")
        .to_owned();
    let lost_records = json_u64(&metrics, "lost_records");
    let processed = json_u64(&metrics, "lines_processed");

    // The generator: every line acknowledged, no refusal, a clean exit.
    let ack_stats = generator.finish();
    let acked = json_u64(&ack_stats, "acked_lines");
    assert_eq!(acked, suite.lines, "generator: {ack_stats}");

    // The counts.
    let expected = parse_counts(&fs::read(&expected_path).expect("expected counts"));
    let actual_bytes = fs::read(&out).expect("the final counts file");
    let actual = parse_counts(&actual_bytes);
    match suite.mode {
        Mode::Wal | Mode::Replicated => {
            assert_eq!(lost_records, 0, "{metrics}");
            assert_eq!(processed, suite.lines, "{metrics}");
            if actual_bytes != fs::read(&expected_path).expect("expected counts") {
                panic!("{}", diff_counts(&expected, &actual));
            }
        }
        Mode::Ignore => {
            assert_eq!(processed + lost_records, suite.lines, "{metrics}");
            let mut missing = 0u64;
            for (word, &count) in &actual {
                let want = expected.get(word).copied().unwrap_or(0);
                assert!(
                    count <= want,
                    "{word}: counted {count}, only {want} in the input (counted twice?)"
                );
            }
            for (word, &want) in &expected {
                missing += want - actual.get(word).copied().unwrap_or(0);
            }
            assert_eq!(
                missing,
                lost_records * u64::from(suite.words),
                "reported {lost_records} lost records ({} words), but {missing} words are missing",
                lost_records * u64::from(suite.words)
            );
        }
    }
    drop(executors);
    drop(_report);
    let _ = fs::remove_dir_all(&dir);
    Some(Outcome {
        metrics,
        lost_records,
        kills_landed,
        ack_stats,
    })
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

fn json_u64(json: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    let at = json
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    json[at + needle.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

fn parse_counts(bytes: &[u8]) -> BTreeMap<String, u64> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| {
            let (w, c) = l.split_once('\t').expect("word<TAB>count");
            (w.to_owned(), c.parse().expect("a count"))
        })
        .collect()
}

fn diff_counts(expected: &BTreeMap<String, u64>, actual: &BTreeMap<String, u64>) -> String {
    let mut lines = Vec::new();
    let (mut over, mut under) = (0u64, 0u64);
    for word in expected
        .keys()
        .chain(actual.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (e, a) = (
            expected.get(word).copied().unwrap_or(0),
            actual.get(word).copied().unwrap_or(0),
        );
        if e != a {
            if a > e {
                over += a - e;
            } else {
                under += e - a;
            }
            if lines.len() < 10 {
                lines.push(format!("  {word}: expected {e}, counted {a}"));
            }
        }
    }
    format!(
        "counts differ: {under} words missing, {over} counted too often; first differences:\n{}",
        lines.join("\n")
    )
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `ember gen --ack`, alive for the whole suite.
struct Generator {
    child: Child,
    addr: String,
    stdout: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Generator {
    fn start(suite: &Suite, seed: u64, expected: &Path) -> Generator {
        let mut child = Command::new(ember_bin())
            .args([
                "gen",
                "--ack",
                "--port",
                "0",
                "--linger-s",
                "5",
                "--threads",
                "1",
            ])
            .args(["--lines", &suite.lines.to_string()])
            .args(["--words", &suite.words.to_string()])
            .args(["--seed", &seed.to_string()])
            .arg("--expected")
            .arg(expected)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ember gen --ack");
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = Arc::clone(&log);
            let mut stderr = child.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .expect("log")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("READY from ember gen --ack");
        let port = ready
            .split_whitespace()
            .find_map(|f| f.strip_prefix("port="))
            .expect("port= in READY");
        Generator {
            child,
            addr: format!("127.0.0.1:{port}"),
            stdout: rx,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// The generator exits early only when its oracle fired.
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll generator") {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "the generator exited during the suite ({status}): \n{}",
                self.log()
            );
        }
    }

    /// Waits for the generator's clean exit (it lingers a few seconds once everything is
    /// acknowledged) and returns its ACKSTATS line.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll generator") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the generator did not finish: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            status.success(),
            "generator failed ({status}):\n{}",
            self.log()
        );
        let mut stats = None;
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            if line.starts_with("ACKSTATS ") {
                stats = Some(line);
            }
        }
        stats.unwrap_or_else(|| panic!("no ACKSTATS line; log:\n{}", self.log()))
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `ember run wordcount` incarnation, its output in `run-<i>.out` / `run-<i>.err`.
struct Driver {
    child: Child,
}

impl Driver {
    fn start(args: &[String], env: &[(String, String)], dir: &Path, i: usize) -> Driver {
        let out = fs::File::create(dir.join(format!("run-{i}.out"))).expect("run log");
        let err = fs::File::create(dir.join(format!("run-{i}.err"))).expect("run log");
        let child = Command::new(ember_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ember run wordcount");
        Driver { child }
    }

    /// `kill -9`; `Some(status)` if it had already exited by itself.
    fn kill9(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().expect("poll driver") {
            return Some(status);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll driver") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the final driver run did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
