//! Kafka → word count → sink, end to end: the fixture the Kafka tests share.
//!
//! A [`KafkaPipeline`] starts a real broker (tansu) and, when asked, a real PostgreSQL
//! (both from [`crate::servers`]), produces the word-count workload into a topic with
//! `ember gen --kafka` (which also writes the workload's expected counts), and runs real
//! `ember run wordcount --source kafka://...` processes against it: to completion, or
//! killed with `kill -9` at seeded moments ([`KafkaPipeline::kill_rounds`]) and restarted.
//!
//! The oracles are independent of the pipeline under test: the expected counts come from the
//! workload definition (`ember gen --expected`), the end offsets from the broker
//! ([`KafkaPipeline::end_offsets`]), and the results from where the sink put them, read back
//! here with plain SQL ([`read_postgres`]) or by summing the batch files ([`read_files`]),
//! not through the sink's own reader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::processes::ember_bin;
use crate::servers::{Postgres, Tansu};

/// Partitions of the topics the fixture creates (the 4), and of the word count.
pub const PARTITIONS: u32 = 4;

/// librdkafka's `fetch.wait.max.ms` for every consumer of these tests (the default is 500).
/// tansu 0.6.0 holds every fetch response for half the fetch's max wait even when it has
/// data (`tansu-storage` 0.6.0, `src/service/fetch.rs`: the loop in `fetch` sleeps
/// `remaining / 2` before it checks whether it has enough bytes), so with the default each
/// fetch takes at least 250 ms, which dominated these tests' run time (reading 5,000
/// records back took 45 s). A short wait changes no result, only the latency.
pub const FETCH_WAIT_MAX_MS: &str = "10";

/// Default seed of [`KafkaPipeline::kill_rounds`] (`EMBER_KILL_SEED` overrides it).
const KILL_SEED: u64 = 0x006b_6166_6b61;

/// What `ember run wordcount` logs once it has read its progress from the sink: where
/// [`KafkaPipeline::kill_rounds`] starts counting a kill's delay.
const STARTUP_LINE: &str = "progress stored in the sink";
/// How long a run may take to log [`STARTUP_LINE`].
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Word counts: word → count.
pub type Counts = BTreeMap<String, i64>;

/// Offsets: Kafka partition → offset (the next one to read).
pub type Offsets = BTreeMap<i32, i64>;

/// A broker (and maybe PostgreSQL) with one topic holding `lines` workload lines, and a
/// temporary directory for the expected counts, the `ember` log and `--out`.
pub struct KafkaPipeline {
    /// The broker; tests may kill and restart it.
    pub tansu: Tansu,
    /// PostgreSQL, if [`KafkaPipeline::start`] was asked for it; tests may restart it.
    pub pg: Option<Postgres>,
    /// The topic.
    pub topic: String,
    /// Workload lines in the topic.
    pub lines: u64,
    /// Lines per Kafka record (`ember gen --lines-per-record`).
    pub lines_per_record: u32,
    dir: tempfile::TempDir,
}

/// How [`KafkaPipeline::kill_rounds`] kills.
#[derive(Clone, Copy, Debug)]
pub struct Kills {
    /// Runs killed with `kill -9` (fewer if a run finishes before its kill).
    pub rounds: u32,
    /// `--max-rate-per-partition` of the killed runs: low enough that a run is still going
    /// when it is killed, so the kills land in every phase (start-up, reading, counting,
    /// committing) and spread over the whole topic.
    pub kill_rate: u32,
    /// Each kill comes this long after the run read its progress from the sink (its start-up
    /// line, see `STARTUP_LINE`) plus a seeded delay below `spread`.
    pub min_delay: Duration,
    /// See `min_delay`.
    pub spread: Duration,
    /// `--max-rate-per-partition` of the final run, which must complete.
    pub final_rate: u32,
    /// How long the final run may take.
    pub final_timeout: Duration,
}

impl Kills {
    /// `rounds` kills between 0.4 s (during start-up) and 2.4 s (mid-batch, mid-commit)
    /// after each run has read its progress from the sink, at 2,500 offsets per partition per second, then a final run at
    /// 25,000.
    pub fn new(rounds: u32) -> Kills {
        Kills {
            rounds,
            kill_rate: 2_500,
            min_delay: Duration::from_millis(400),
            spread: Duration::from_millis(2_000),
            final_rate: 25_000,
            final_timeout: Duration::from_secs(300),
        }
    }
}

impl KafkaPipeline {
    /// Starts tansu (and PostgreSQL if `postgres`), creates `topic` with [`PARTITIONS`]
    /// partitions and produces `lines` workload lines into it. `None` (after printing why)
    /// when a server is not installed: the test then skips itself.
    pub fn start(topic: &str, lines: u64, postgres: bool) -> Option<KafkaPipeline> {
        Self::start_batched(topic, lines, 1, postgres)
    }

    /// As [`KafkaPipeline::start`], with `lines_per_record` workload lines per Kafka record
    /// (joined by '\n'; the word count splits them again).
    pub fn start_batched(
        topic: &str,
        lines: u64,
        lines_per_record: u32,
        postgres: bool,
    ) -> Option<KafkaPipeline> {
        let tansu = Tansu::start()?;
        let pg = if postgres {
            Some(Postgres::start()?)
        } else {
            None
        };
        let pipeline = KafkaPipeline {
            tansu,
            pg,
            topic: topic.to_owned(),
            lines,
            lines_per_record: lines_per_record.max(1),
            dir: tempfile::tempdir().expect("temporary directory for the Kafka test"),
        };
        pipeline.produce();
        Some(pipeline)
    }

    /// `ember gen --kafka` the workload into the topic; it writes the expected counts too.
    fn produce(&self) {
        let started = Instant::now();
        let out = Command::new(ember_bin())
            .args([
                "gen",
                "--kafka",
                &format!("{}/{}", self.bootstrap(), self.topic),
            ])
            .args(["--partitions", &PARTITIONS.to_string()])
            .args(["--lines", &self.lines.to_string()])
            .args(["--lines-per-record", &self.lines_per_record.to_string()])
            .arg("--expected")
            .arg(self.expected_path())
            .output()
            .expect("running ember gen --kafka");
        assert!(
            out.status.success(),
            "ember gen --kafka failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "produced {} lines ({} per record) into {} in {:.1?}",
            self.lines,
            self.lines_per_record,
            self.topic,
            started.elapsed()
        );
    }

    /// Records (offsets) in the topic: what `ember run wordcount --lines` counts for a
    /// Kafka source.
    pub fn records(&self) -> u64 {
        self.lines.div_ceil(u64::from(self.lines_per_record))
    }

    /// The broker's `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        self.tansu.bootstrap()
    }

    /// The test's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The workload's expected counts (`word\tcount` lines), written by `ember gen`.
    pub fn expected_path(&self) -> PathBuf {
        self.dir().join("expected.tsv")
    }

    /// The log every `ember run` of this pipeline appends its stderr to.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("ember.log")
    }

    /// What the runs logged so far: [`KafkaPipeline::log_path`], then each group member's
    /// log under its name.
    pub fn log(&self) -> String {
        let mut text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let mut members: Vec<PathBuf> = std::fs::read_dir(self.dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log") && *p != self.log_path())
                    .collect()
            })
            .unwrap_or_default();
        members.sort();
        for member in members {
            text.push_str(&format!(
                "--- {} ---\n{}",
                member.display(),
                std::fs::read_to_string(&member).unwrap_or_default()
            ));
        }
        text
    }

    /// The runs' `--out` file.
    pub fn out_path(&self) -> PathBuf {
        self.dir().join("counts.tsv")
    }

    /// The PostgreSQL server (panics if the pipeline was started without one).
    pub fn postgres(&self) -> &Postgres {
        self.pg
            .as_ref()
            .expect("KafkaPipeline::start(.., postgres: true) for a PostgreSQL test")
    }

    /// The pipeline name the PostgreSQL sink keys its batches by: `wc-<topic>`.
    pub fn pipeline(&self) -> String {
        format!("wc-{}", self.topic)
    }

    /// `--sink` for PostgreSQL: table `word_counts`, pipeline [`KafkaPipeline::pipeline`].
    pub fn postgres_sink(&self) -> String {
        format!(
            "{}?table=word_counts&pipeline={}",
            self.postgres().url(),
            self.pipeline()
        )
    }

    /// The directory the files sink writes to.
    pub fn files_dir(&self) -> PathBuf {
        self.dir().join("batches")
    }

    /// `--sink` for the files sink, into [`KafkaPipeline::files_dir`].
    pub fn files_sink(&self) -> String {
        format!("file://{}", self.files_dir().display())
    }

    /// Starts `ember run wordcount --source kafka://<broker>/<topic> --sink <sink>` over the
    /// whole topic (`--lines` [`KafkaPipeline::records`]), 200 ms batches, [`PARTITIONS`]
    /// partitions, at most `max_rate` offsets per partition per second, with `extra` flags
    /// after those; its stderr is appended to [`KafkaPipeline::log_path`].
    pub fn spawn_wordcount(&self, sink: &str, max_rate: u32, extra: &[&str]) -> Child {
        let source = format!("kafka://{}/{}", self.bootstrap(), self.topic);
        self.wordcount_command(&source, sink, max_rate, &self.log_path())
            .args(extra)
            .spawn()
            .expect("starting ember run wordcount")
    }

    /// As [`KafkaPipeline::spawn_wordcount`], as a member of consumer group `group`
    /// (`kafka://...?group=NAME`), logging to `dir()/<name>.log` (see [`KafkaPipeline::log`]),
    /// with the source's group log lines ("Kafka partitions assigned", see
    /// [`assignments`]) on. The process is killed when the returned guard drops.
    pub fn spawn_group_member(&self, name: &str, group: &str, sink: &str, max_rate: u32) -> Member {
        let source = format!("kafka://{}/{}?group={group}", self.bootstrap(), self.topic);
        let log = self.member_log_path(name);
        let child = self
            .wordcount_command(&source, sink, max_rate, &log)
            .spawn()
            .expect("starting ember run wordcount in a group");
        Member { child, log }
    }

    /// The log of group member `name` (see [`KafkaPipeline::spawn_group_member`]).
    pub fn member_log_path(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.log"))
    }

    fn wordcount_command(&self, source: &str, sink: &str, max_rate: u32, log: &Path) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening the ember log");
        let mut command = Command::new(ember_bin());
        command
            .args(["run", "wordcount", "--source", source, "--sink", sink])
            .args(["--lines", &self.records().to_string()])
            .args(["--batch-ms", "200", "--partitions", &PARTITIONS.to_string()])
            .args(["--max-rate-per-partition", &max_rate.to_string()])
            .args(["--timeout-s", "240"])
            // On a loaded 2-core machine with a slow broker a member falls behind the
            // 200 ms grid (up to `batches_queued_max` batches queue), and the default
            // graceful stop (ten intervals, 2 s) may not drain them: a SIGTERM would then
            // fail the member instead of stopping it. What these tests check is that the
            // batches drain exactly once, not how fast.
            .args(["--graceful-stop-timeout-ms", "30000"])
            .args([
                "--kafka-config",
                &format!("fetch.wait.max.ms={FETCH_WAIT_MAX_MS}"),
            ])
            .arg("--out")
            .arg(self.out_path())
            .env(
                "RUST_LOG",
                "warn,engine::sink=info,engine::source::kafka=info,ember::kafka=info",
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        command
    }

    /// Runs the word count `kills.rounds` times, killing each run with `kill -9` at a seeded
    /// moment, then once more to completion, which must succeed. Panics if fewer than half
    /// the kills happened (the test would prove too little).
    pub fn kill_rounds(&self, sink: &str, kills: Kills) {
        let seed: u64 = std::env::var("EMBER_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(KILL_SEED);
        eprintln!("kill seed {seed} (EMBER_KILL_SEED to reproduce)");
        let started = Instant::now();
        let mut rng = seed;
        let mut killed = 0;
        for round in 0..kills.rounds {
            let started_before = self.log().matches(STARTUP_LINE).count();
            let mut child = self.spawn_wordcount(sink, kills.kill_rate, &[]);
            let spread = u64::try_from(kills.spread.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            // The delay counts from the moment the run has read its progress from the sink,
            // not from the spawn: under load (other builds on 2 cores) starting the process
            // and connecting took longer than the whole window, every kill landed before
            // the first batch and the test proved little. A kill before that moment finds
            // nothing written yet.
            let startup = Instant::now() + STARTUP_TIMEOUT;
            while self.log().matches(STARTUP_LINE).count() == started_before
                && child.try_wait().expect("polling ember").is_none()
            {
                assert!(
                    Instant::now() < startup,
                    "round {round}: the run did not read its progress from the sink within \
                     {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(
                kills.min_delay + Duration::from_millis(splitmix(&mut rng) % spread),
            );
            if child.try_wait().expect("polling ember").is_some() {
                eprintln!("round {round}: finished before the kill");
                break;
            }
            child.kill().expect("kill -9 ember"); // SIGKILL
            child.wait().expect("reaping ember");
            killed += 1;
        }
        let kill_phase = started.elapsed();
        let resumed_at = self.resumed_offsets();
        let mut child = self.spawn_wordcount(sink, kills.final_rate, &[]);
        let status = wait_exit(&mut child, kills.final_timeout);
        let text = self.log();
        assert!(
            status.success(),
            "the final run failed ({status}); log:\n{text}"
        );
        eprintln!(
            "{killed} kills in {kill_phase:.1?}, the last restart resumed at {resumed_at} of {} \
             offsets; final run {:.1?}; {} restarts re-ran a partly written batch; {} partition \
             writes skipped as already committed",
            self.records(),
            started.elapsed() - kill_phase,
            text.matches("Partial {").count(),
            text.matches("already committed by an earlier run").count()
        );
        assert!(
            killed >= kills.rounds / 2,
            "only {killed} kills happened before the run completed: the test is too short to \
             prove anything"
        );
    }

    /// The offsets (summed over partitions) the newest run so far resumed from, as its log
    /// says (`progress stored in the sink ... until: N ...`): how far the runs before it got.
    /// Only for the test's report; 0 if the log does not say.
    fn resumed_offsets(&self) -> i64 {
        let log = self.log();
        let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.contains("progress stored in the sink"))
        else {
            return 0;
        };
        line.split("until: ")
            .skip(1)
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse::<i64>().ok())
            })
            .sum()
    }

    /// The workload's expected counts.
    pub fn expected_counts(&self) -> Counts {
        std::fs::read_to_string(self.expected_path())
            .expect("reading the expected counts")
            .lines()
            .map(|l| {
                let (w, c) = l.split_once('\t').expect("word\\tcount");
                (w.to_owned(), c.parse().expect("a count"))
            })
            .collect()
    }

    /// The topic's end offsets, asked from the broker.
    pub fn end_offsets(&self) -> Offsets {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "ember-test-oracle")
            .create()
            .expect("a Kafka consumer for the oracle");
        let partitions = i32::try_from(PARTITIONS).expect("partition count");
        (0..partitions)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .expect("fetching the topic's watermarks");
                (p, high)
            })
            .collect()
    }

    /// Asserts that PostgreSQL holds exactly the expected counts, and that the newest
    /// committed batch is complete and ends at the topic's end offsets.
    pub fn check_postgres(&self) {
        let (counts, stored) = read_postgres(&self.postgres().url(), &self.pipeline());
        self.check_exact("PostgreSQL", &counts);
        assert_eq!(
            stored,
            self.end_offsets(),
            "stored offsets are not the topic's end offsets"
        );
    }

    /// Asserts that the complete batch directories of the files sink sum to exactly the
    /// expected counts, and that the newest one ends at the topic's end offsets.
    pub fn check_files(&self) {
        let (counts, stored) = read_files(&self.files_dir());
        self.check_exact("the summed batch files", &counts);
        assert_eq!(
            stored,
            self.end_offsets(),
            "the newest batch's offsets are not the topic's end offsets"
        );
    }

    /// Asserts `counts` equal the expected counts, naming a few differences and the log.
    pub fn check_exact(&self, what: &str, counts: &Counts) {
        let expected = self.expected_counts();
        if *counts != expected {
            let wrong: Vec<_> = expected
                .iter()
                .filter(|(w, c)| counts.get(*w) != Some(c))
                .take(5)
                .map(|(w, c)| format!("{w}: expected {c}, stored {:?}", counts.get(w)))
                .collect();
            let extra = counts.keys().filter(|w| !expected.contains_key(*w)).count();
            panic!(
                "{what}: counts differ from the workload's ({} vs {} words, {extra} unexpected): \
                 {wrong:?}\nlog:\n{}",
                counts.len(),
                expected.len(),
                self.log()
            );
        }
    }
}

/// Waits for `child` to exit, at most `timeout` (then kills it and panics).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("polling ember") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ember run wordcount did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `done` every 100 ms until it holds; after `timeout`, panics naming `what` with
/// the pipeline's logs.
pub fn wait_until(
    p: &KafkaPipeline,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; logs:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An `ember run wordcount` group member ([`KafkaPipeline::spawn_group_member`]), killed
/// with `kill -9` when dropped (a failing test leaves no process behind).
pub struct Member {
    /// The process.
    pub child: Child,
    /// Its log.
    pub log: PathBuf,
}

impl Member {
    /// SIGTERM: a graceful stop (the member finishes its batches and leaves the group).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// The "Kafka partitions assigned" lines of the member's log, oldest first.
    pub fn assignments(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Kafka partitions assigned"))
            .map(str::to_owned)
            .collect()
    }

    /// The partitions of the member's newest assignment (empty before the first).
    pub fn assigned(&self) -> Vec<i32> {
        self.assignments()
            .last()
            .map(|line| assigned_partitions(line))
            .unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The partitions of one "Kafka partitions assigned" log line, whose `positions` field is
/// `{P: OFFSET, ...}`.
fn assigned_partitions(line: &str) -> Vec<i32> {
    let Some(map) = line
        .split_once("positions=")
        .and_then(|(_, rest)| rest.split_once('{'))
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(map, _)| map)
    else {
        return Vec::new();
    };
    map.split(',')
        .filter_map(|entry| entry.split_once(':'))
        .filter_map(|(p, _)| p.trim().parse().ok())
        .collect()
}

/// Runs `sql` (one or more statements) against the PostgreSQL at `url`.
pub fn execute_sql(url: &str, sql: &str) {
    let rt = current_thread_runtime();
    rt.block_on(async {
        let client = connect_postgres(url).await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

/// Runs a query against the PostgreSQL at `url` and returns its rows.
pub fn query_sql(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let rt = current_thread_runtime();
    rt.block_on(async {
        let client = connect_postgres(url).await;
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    })
}

/// Connects to the PostgreSQL at `url`; the connection is driven by a task on the calling
/// runtime.
async fn connect_postgres(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to PostgreSQL");
    tokio::spawn(conn);
    client
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The `word_counts` table of the PostgreSQL at `url`.
pub fn read_counts(url: &str) -> Counts {
    query_sql(url, "SELECT key, value FROM word_counts")
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect()
}

/// What a consumer-group pipeline stored in `ember_offsets` (partition -> next offset);
/// empty before the sink created the table.
pub fn read_group_offsets(url: &str, pipeline: &str) -> Offsets {
    let rt = current_thread_runtime();
    rt.block_on(async {
        let client = connect_postgres(url).await;
        match client
            .query(
                "SELECT partition, until_offset FROM ember_offsets WHERE pipeline = $1",
                &[&pipeline],
            )
            .await
        {
            Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
            Err(_) => Offsets::new(), // not created yet
        }
    })
}

/// Creates `topic` with `partitions` partitions at `bootstrap`.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a Kafka admin client");
    let results = current_thread_runtime()
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("creating a topic");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// The `word_counts` table and the offsets of `pipeline`'s newest batch, read from the
/// PostgreSQL at `url`; asserts that newest batch committed every partition (batches run
/// one at a time, so after a completed run every batch is complete).
pub fn read_postgres(url: &str, pipeline: &str) -> (Counts, Offsets) {
    let counts = read_counts(url);
    let newest = query_sql(
        url,
        &format!(
            "SELECT partition, partitions, offsets FROM ember_batches WHERE pipeline = '{pipeline}' \
             AND batch_time_ms = (SELECT max(batch_time_ms) FROM ember_batches WHERE pipeline = '{pipeline}')"
        ),
    );
    assert!(!newest.is_empty(), "no batch stored for {pipeline}");
    let partitions: i32 = newest[0].get(1);
    assert_eq!(
        newest.len(),
        usize::try_from(partitions).expect("partition count"),
        "the newest batch is only partly committed"
    );
    let offsets: String = newest[0].get(2);
    (counts, parse_offsets(&offsets))
}

/// The files sink's results under `dir`: the sum over every complete batch directory (one
/// with `_SUCCESS`), and the newest complete batch's offsets.
pub fn read_files(dir: &Path) -> (Counts, Offsets) {
    let mut totals = Counts::new();
    let mut newest: Option<(u64, String)> = None;
    for entry in std::fs::read_dir(dir).expect("listing the files sink's directory") {
        let batch = entry.expect("a directory entry").path();
        let name = batch
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(ms) = name
            .strip_prefix("batch-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if !batch.join("_SUCCESS").exists() {
            continue;
        }
        if newest.as_ref().is_none_or(|(t, _)| ms > *t) {
            let offsets =
                std::fs::read_to_string(batch.join("_OFFSETS")).expect("reading _OFFSETS");
            newest = Some((ms, offsets));
        }
        for part in std::fs::read_dir(&batch).expect("listing a batch directory") {
            let part = part.expect("a directory entry").path();
            let is_part = part
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"));
            if !is_part {
                continue;
            }
            let text = std::fs::read_to_string(&part).expect("reading a part file");
            for line in text.lines() {
                let (word, count) = line
                    .strip_prefix('(')
                    .and_then(|l| l.strip_suffix(')'))
                    .and_then(|l| l.rsplit_once(','))
                    .unwrap_or_else(|| panic!("{}: not a (word,count) line", part.display()));
                *totals.entry(word.to_owned()).or_insert(0) +=
                    count.parse::<i64>().expect("a count");
            }
        }
    }
    let (_, offsets) = newest.expect("no complete batch directory");
    (totals, parse_offsets(&offsets))
}

/// `[{"topic":..,"partition":p,"from":f,"until":u},...]` into partition → until. Parsed by
/// hand, not with the engine's serde types, so a change there cannot hide here.
pub fn parse_offsets(offsets: &str) -> Offsets {
    let mut stored = Offsets::new();
    for range in offsets.split('{').skip(1) {
        let field = |name: &str| -> i64 {
            let key = format!("\"{name}\":");
            let at = range
                .find(&key)
                .unwrap_or_else(|| panic!("no {name} in offset range {range:?}"))
                + key.len();
            range[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect::<String>()
                .parse()
                .unwrap_or_else(|e| panic!("{name} in offset range {range:?}: {e}"))
        };
        let partition = i32::try_from(field("partition")).expect("a partition number");
        stored.insert(partition, field("until"));
    }
    stored
}

/// A tiny seeded generator (splitmix64) for kill moments.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
