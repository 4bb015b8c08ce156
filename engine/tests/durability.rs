//! Restart by recomputation through `StreamingContext::get_or_create`: a pipeline stopped
//! abruptly (batches pending, blocks acknowledged but unallocated) and restarted on the same
//! directories writes byte-identical per-batch output to a run that never stopped (WAL
//! mode); ignore mode counts exactly what it lost; a changed graph is refused by name.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use engine::{
    BatchInfo, Config, Durability, DurabilityConfig, ManualClock, Receiver, ReceiverContext,
    RestartPlan, Str, StreamingContext, StreamingListener,
};

/// Stores the lines it is given, one block per message; reports each store.
struct Lines {
    batches: Arc<Mutex<mpsc::Receiver<Vec<Str>>>>,
    stored: mpsc::Sender<usize>,
}

impl Receiver for Lines {
    type Record = Str;
    fn codec(&self) -> Arc<dyn engine::BlockCodec<Str>> {
        Arc::new(engine::LinesCodec)
    }
    async fn run(self, ctx: ReceiverContext<Str>) -> engine::Result<()> {
        loop {
            let next = self
                .batches
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_millis(10));
            match next {
                Ok(lines) => {
                    let n = lines.len();
                    ctx.store_records(&lines).await?;
                    let _ = self.stored.send(n);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if ctx.is_stopped() => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => tokio::task::yield_now().await,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}

struct Done(Mutex<mpsc::Sender<BatchInfo>>);
impl StreamingListener for Done {
    fn on_batch_completed(&self, b: &BatchInfo) {
        let _ = self.0.lock().unwrap().send(b.clone());
    }
}

const START: u64 = 7_000_000;
const INTERVAL: u64 = 1_000;

struct Run {
    ctx: StreamingContext,
    input: mpsc::Sender<Vec<Str>>,
    stored: mpsc::Receiver<usize>,
    done: mpsc::Receiver<BatchInfo>,
}

impl Run {
    fn feed(&self, text: &str) {
        // Two blocks per input, so batches hold several blocks.
        let ls: Vec<Str> = text.lines().map(Str::from).collect();
        let (x, y) = ls.split_at(ls.len() / 2);
        for part in [x.to_vec(), y.to_vec()] {
            self.input.send(part).unwrap();
            self.stored.recv_timeout(Duration::from_secs(20)).unwrap();
        }
    }

    fn next_done(&self) -> BatchInfo {
        self.done.recv_timeout(Duration::from_secs(20)).unwrap()
    }

    /// Waits for batch `k` (its time: `START + k * INTERVAL`) to complete; returns every
    /// completion seen on the way, that batch's last. Waiting for the batch by its time,
    /// not for "the next completion", keeps the test's next feed out of that batch even if
    /// other batches (re-runs) complete first.
    fn done_through(&self, k: u64) -> Vec<BatchInfo> {
        let time = START + k * INTERVAL;
        let mut seen = Vec::new();
        loop {
            match self.done.recv_timeout(Duration::from_secs(20)) {
                Ok(info) => {
                    let last = info.batch_time.as_millis() == time;
                    seen.push(info);
                    if last {
                        return seen;
                    }
                }
                Err(e) => panic!("batch {k} (time {time}) did not complete ({e}); saw {seen:?}"),
            }
        }
    }
}

/// The word count with a running total, writing every batch's totals as text files.
/// `variant` changes the graph (for the compatibility test).
fn open(
    dir: &Path,
    out: &Path,
    clock: &ManualClock,
    mode: Durability,
    every: u64,
    variant: bool,
) -> engine::Result<Run> {
    let mut config = Config::new(Duration::from_millis(INTERVAL));
    config.partitions = 3;
    config.worker_threads = 2;
    let (input, rx) = mpsc::channel();
    let (stored_tx, stored) = mpsc::channel();
    let (tx, done) = mpsc::channel();
    let durability = DurabilityConfig {
        checkpoint_interval_batches: every,
        ..DurabilityConfig::new(mode)
    };
    let out = out.to_path_buf();
    let ctx = StreamingContext::get_or_create_with_clock(
        dir,
        config,
        durability,
        Arc::new(clock.clone()),
        |ctx| {
            let lines = ctx.receiver_stream(
                "lines",
                Lines {
                    batches: Arc::new(Mutex::new(rx)),
                    stored: stored_tx,
                },
            )?;
            let words = lines.flat_map(|l| l.split(' '));
            let words = if variant {
                words.filter(|w| !w.is_empty())
            } else {
                words
            };
            words
                .map(|w| (w, 1u64))
                .reduce_by_key(|a, b| a + b)
                .update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
                    Some(total.unwrap_or(0) + new.iter().sum::<u64>())
                })
                .save_as_text_files(out.join("totals"), "txt");
            Ok(())
        },
    )?;
    ctx.add_listener(Arc::new(Done(Mutex::new(tx))));
    Ok(Run {
        ctx,
        input,
        stored,
        done,
    })
}

const INPUTS: [&str; 6] = [
    "the quick brown fox\njumps over the lazy dog",
    "the dog barks\nthe fox runs",
    "a b c the\nthe end",
    "one more line\nand the fox again\nand again",
    "lazy lazy dog\nbrown fox",
    "end of the\nstory end",
];

fn outputs(out: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for k in 1..=INPUTS.len() as u64 {
        let dir = out.join(format!("totals-{}.txt", START + k * INTERVAL));
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            files.insert(
                format!("{k}/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    files
}

/// Runs every input to completion without stopping.
fn reference(tmp: &Path, mode: &Durability) -> BTreeMap<String, Vec<u8>> {
    let out = tmp.join("ref-out");
    let clock = ManualClock::new(START);
    let run = open(&tmp.join("ref-ckpt"), &out, &clock, mode.clone(), 2, false).unwrap();
    run.ctx.start().unwrap();
    for (k, text) in (1..).zip(INPUTS) {
        run.feed(text);
        clock.advance(INTERVAL);
        let infos = run.done_through(k);
        // Exactly this batch completed, holding exactly the lines just fed.
        assert_eq!(infos.len(), 1, "{infos:?}");
        assert_eq!(infos[0].lost_blocks, 0);
        assert_eq!(infos[0].records(), text.lines().count() as u64, "{infos:?}");
    }
    run.ctx.stop(true).unwrap();
    outputs(&out)
}

fn wal_mode(tmp: &Path, name: &str) -> Durability {
    Durability::wal(tmp.join(name))
}

/// Runs inputs 1-3 to completion, stores 4 and 5 (acknowledged, unallocated), stops
/// without processing; restarts; runs the rest. Returns the restarted run's batch infos.
fn crash_and_restart(tmp: &Path, mode: &Durability, every: u64) -> (PathBuf, Vec<BatchInfo>) {
    let (dir, out) = (tmp.join("ckpt"), tmp.join("out"));
    let clock = ManualClock::new(START);
    {
        let run = open(&dir, &out, &clock, mode.clone(), every, false).unwrap();
        run.ctx.start().unwrap();
        for (k, text) in (1..).zip(&INPUTS[..3]) {
            run.feed(text);
            clock.advance(INTERVAL);
            run.done_through(k);
        }
        run.feed(INPUTS[3]);
        // Immediate stop: no graceful flush, nothing more recorded.
        run.ctx.stop(false).unwrap();
    }
    let plan = RestartPlan::inspect(&dir).unwrap();
    let text = plan.describe(clock.now_ms_for_tests());
    assert!(
        text.contains("unallocated blocks (go to the first new batch): 2"),
        "{text}"
    );
    // The CLI says the same, and where each re-run batch's data comes from.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["checkpoint", "inspect"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    for line in text.lines().filter(|l| !l.contains("until now")) {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    if !plan.rerun.is_empty() {
        let source = match mode {
            Durability::Wal { .. } | Durability::WalUrl { .. } => "from WAL",
            Durability::Ignore => "memory only",
            Durability::Replicated { .. } => "replica on",
        };
        assert!(stdout.contains(source), "{stdout}");
    }

    let run = open(&dir, &out, &clock, mode.clone(), every, false).unwrap();
    run.ctx.start().unwrap();
    // The batches after the checkpoint re-run first (in time order, exactly those the plan
    // named), then batch 4 takes the recovered unallocated blocks.
    clock.advance(INTERVAL);
    let mut infos = run.done_through(4);
    let reran: Vec<_> = infos[..infos.len() - 1]
        .iter()
        .map(|i| i.batch_time)
        .collect();
    let planned: Vec<_> = plan.rerun.iter().map(|a| a.time).collect();
    assert_eq!(
        reran, planned,
        "re-run batches differ from the plan: {infos:?}"
    );
    if !matches!(mode, Durability::Ignore) {
        assert_eq!(
            infos.last().unwrap().records(),
            INPUTS[3].lines().count() as u64,
            "batch 4 must hold exactly the recovered blocks: {infos:?}"
        );
    }
    for (k, text) in (5..).zip(&INPUTS[4..]) {
        run.feed(text);
        clock.advance(INTERVAL);
        let more = run.done_through(k);
        assert_eq!(more.len(), 1, "{more:?}");
        infos.extend(more);
    }
    run.ctx.stop(true).unwrap();
    (out, infos)
}

trait NowForTests {
    fn now_ms_for_tests(&self) -> u64;
}
impl NowForTests for ManualClock {
    fn now_ms_for_tests(&self) -> u64 {
        engine::Clock::now_ms(self)
    }
}

#[test]
fn wal_mode_restart_recomputes_identical_output() {
    for every in [2, 100] {
        let tmp = tempfile::tempdir().unwrap();
        let expected = reference(tmp.path(), &wal_mode(tmp.path(), "ref-wal"));
        let (out, infos) = crash_and_restart(tmp.path(), &wal_mode(tmp.path(), "wal"), every);
        assert!(
            infos
                .iter()
                .all(|i| i.lost_blocks == 0 && i.failure.is_none()),
            "{infos:?}"
        );
        let got = outputs(&out);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (name, bytes) in &expected {
            assert_eq!(
                String::from_utf8_lossy(&got[name]),
                String::from_utf8_lossy(bytes),
                "{name} (checkpoint every {every} batches)"
            );
        }
    }
}

#[allow(dead_code)] // the shared fixture; not every test file uses all of it
#[path = "../../tests/src/moto.rs"]
mod moto;

#[test]
fn wal_on_object_storage_restart_recomputes_identical_output() {
    // The data WAL in an object store (in memory, and on moto's S3 server when installed):
    // the same crash and restart as on disk, the same output.
    let mut urls = vec![(
        "memory://engine-durability/wal".to_owned(),
        wal::objstore::ObjectOptions::default(),
    )];
    if let Some(moto) = moto::Moto::shared() {
        let options = wal::objstore::ObjectOptions {
            s3: moto.s3_settings(),
            ..Default::default()
        };
        urls.push((moto.fresh_url("engine-wal"), options));
    }
    for (url, s3_options) in urls {
        let tmp = tempfile::tempdir().unwrap();
        let expected = reference(tmp.path(), &wal_mode(tmp.path(), "ref-wal"));
        let mut mode = Durability::wal_at(&url).unwrap();
        match &mut mode {
            Durability::WalUrl { options, .. } => *options = s3_options,
            other => panic!("{url}: {other:?}"),
        }
        let (out, infos) = crash_and_restart(tmp.path(), &mode, 2);
        assert!(
            infos
                .iter()
                .all(|i| i.lost_blocks == 0 && i.failure.is_none()),
            "{url}: {infos:?}"
        );
        assert_eq!(outputs(&out), expected, "{url}");
    }
}

#[test]
fn ignore_mode_restart_counts_what_it_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (_out, infos) = crash_and_restart(tmp.path(), &Durability::Ignore, 2);
    // The checkpoint after batch 2 makes batch 3 re-run from memory that is gone; the
    // blocks of input 4 were acknowledged but only in memory.
    let lost_records: u64 = infos.iter().map(|i| i.lost_records).sum();
    let expected = (INPUTS[2].lines().count() + INPUTS[3].lines().count()) as u64;
    assert_eq!(lost_records, expected, "{infos:?}");
    assert_eq!(infos.iter().map(|i| i.lost_blocks).sum::<u64>(), 4);
}

#[test]
fn an_incompatible_graph_is_refused_naming_the_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path().join("ckpt"), tmp.path().join("out"));
    let clock = ManualClock::new(START);
    let mode = wal_mode(tmp.path(), "wal");
    {
        let run = open(&dir, &out, &clock, mode.clone(), 1, false).unwrap();
        run.ctx.start().unwrap();
        run.feed(INPUTS[0]);
        clock.advance(INTERVAL);
        run.next_done();
        run.ctx.stop(true).unwrap();
    }
    let err = match open(&dir, &out, &clock, mode, 1, true) {
        Ok(_) => panic!("a changed graph must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("incompatible") || err.contains("changed"),
        "{err}"
    );
    assert!(
        err.contains("update_state_by_key") || err.contains("filter"),
        "{err}"
    );
}

/// Two in-process block servers (the same code `ember executor` runs) on 127.0.0.1.
struct Executors {
    runtime: tokio::runtime::Runtime,
    servers: Vec<blockstore::BlockServer>,
}

impl Executors {
    fn start(n: usize) -> Executors {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let servers = (0..n)
            .map(|_| {
                runtime
                    .block_on(blockstore::BlockServer::bind(
                        "127.0.0.1:0",
                        blockstore::Config::default(),
                    ))
                    .unwrap()
            })
            .collect();
        Executors { runtime, servers }
    }

    fn mode(&self, replication: usize) -> Durability {
        Durability::Replicated {
            executors: self
                .servers
                .iter()
                .map(|s| s.local_addr().to_string())
                .collect(),
            replication,
        }
    }
}

impl Drop for Executors {
    fn drop(&mut self) {
        for s in self.servers.drain(..) {
            self.runtime.block_on(s.shutdown());
        }
    }
}

#[test]
fn replicated_mode_restart_recomputes_identical_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (reference_executors, executors) = (Executors::start(2), Executors::start(2));
    let expected = reference(tmp.path(), &reference_executors.mode(1));
    let (out, infos) = crash_and_restart(tmp.path(), &executors.mode(2), 2);
    assert!(
        infos
            .iter()
            .all(|i| i.lost_blocks == 0 && i.failure.is_none()),
        "{infos:?}"
    );
    let got = outputs(&out);
    assert_eq!(got, expected);
}

#[test]
fn too_few_replicas_stop_the_receiver_naming_the_peers() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind, note, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let executors = Executors::start(1);
    let mut mode = executors.mode(2);
    if let Durability::Replicated { executors, .. } = &mut mode {
        executors.push(dead.clone());
    }
    let clock = ManualClock::new(START);
    let run = open(
        &tmp.path().join("ckpt"),
        &tmp.path().join("out"),
        &clock,
        mode,
        2,
        false,
    )
    .unwrap();
    run.ctx.start().unwrap();
    run.input.send(vec![Str::from("a b")]).unwrap();
    assert!(
        run.stored.recv_timeout(Duration::from_secs(5)).is_err(),
        "the block must not be acknowledged"
    );
    // The receiver's error stops the context by itself.
    let err = run
        .ctx
        .await_termination_timeout(Some(Duration::from_secs(30)))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&dead), "{err}");
    let received = run.ctx.receivers();
    let state = format!("{:?}", received[0].state);
    assert!(
        state.contains(&dead) && state.contains("not acknowledging"),
        "{state}"
    );
}

#[test]
fn what_the_metadata_log_remembers_stays_bounded_by_the_retained_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path().join("ckpt"), tmp.path().join("out"));
    let clock = ManualClock::new(START);
    let run = open(&dir, &out, &clock, wal_mode(tmp.path(), "wal"), 2, false).unwrap();
    run.ctx.start().unwrap();
    for k in 0..40 {
        if k % 3 == 0 {
            run.feed(INPUTS[k % INPUTS.len()]);
        }
        clock.advance(INTERVAL);
        run.next_done();
    }
    run.ctx.stop(true).unwrap();
    drop(run);
    let plan = RestartPlan::inspect(&dir).unwrap();
    // 3 checkpoints retained, one every 2 batches: the oldest needed batch is about 6
    // batches back; everything before it is pruned from the log's view.
    let kept = plan.mirror.allocations.len();
    assert!((2..=10).contains(&kept), "{kept} allocations kept");
    assert!(plan.rerun.len() <= 2, "{:?}", plan.rerun);
}

/// A directory source after a restart: recovered batches re-read their files, new files
/// (written while down) are read once, old files are not read again.
#[test]
fn a_directory_source_resumes_after_what_its_recovered_batches_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, input) = (tmp.path().join("ckpt"), tmp.path().join("in"));
    std::fs::create_dir_all(&input).unwrap();
    let clock = ManualClock::new(engine::clock::now_epoch_ms());
    let open = |clock: &ManualClock| {
        let (tx, done) = mpsc::channel();
        let input = input.clone();
        let ctx = StreamingContext::get_or_create_with_clock(
            &dir,
            Config::new(Duration::from_millis(INTERVAL)),
            DurabilityConfig {
                checkpoint_interval_batches: 1,
                ..DurabilityConfig::default()
            },
            Arc::new(clock.clone()),
            |ctx| {
                ctx.text_file_stream(&input)?
                    .count()
                    .foreach_batch(|_, _| {});
                Ok(())
            },
        )
        .unwrap();
        ctx.add_listener(Arc::new(Done(Mutex::new(tx))));
        (ctx, done)
    };
    let read_until = |clock: &ManualClock, done: &mpsc::Receiver<BatchInfo>, want: u64| {
        let mut records = 0;
        for _ in 0..10 {
            clock.advance(INTERVAL);
            records += done
                .recv_timeout(Duration::from_secs(20))
                .unwrap()
                .records();
            if records >= want {
                break;
            }
        }
        records
    };
    let (ctx, done) = open(&clock);
    ctx.start().unwrap();
    std::fs::write(input.join("a.txt"), "1\n2\n3\n").unwrap();
    assert_eq!(read_until(&clock, &done, 3), 3);
    ctx.stop(false).unwrap();
    drop(ctx);

    std::fs::write(input.join("b.txt"), "4\n5\n").unwrap();
    let (ctx, done) = open(&clock);
    ctx.start().unwrap();
    let records = read_until(&clock, &done, 2);
    // Two more grid points: nothing is read twice.
    let extra = read_until(&clock, &done, u64::MAX);
    ctx.stop(true).unwrap();
    assert_eq!((records, extra), (2, 0), "b.txt once, a.txt not again");
}
