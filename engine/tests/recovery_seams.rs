//! The seams the durability work builds on, exercised end to end: a metadata log sees every
//! allocation before its batch runs; a batch re-run in a new context, from blocks read back
//! from a handler and from a state snapshot, writes byte-identical files; a lost block is
//! counted, not silent.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use engine::clock::BoxFuture;
use engine::scheduler::{Allocation, RestoredState};
use engine::{
    BatchInfo, BatchTime, Block, BlockId, Config, DStream, ManualClock, MetadataLog,
    ReceivedBlockHandler, Receiver, ReceiverContext, Restore, StateSnapshot, StoredBlock, Str,
    StreamingContext, StreamingListener,
};

/// Keeps every block, forever (a stand-in for durable storage).
#[derive(Default)]
struct KeepAll {
    blocks: Mutex<HashMap<BlockId, Bytes>>,
    lose: Mutex<Vec<BlockId>>,
}

impl ReceivedBlockHandler for KeepAll {
    fn mode(&self) -> &'static str {
        "test-keep-all"
    }
    fn store(&self, block: Block) -> BoxFuture<engine::Result<StoredBlock>> {
        let stored = StoredBlock {
            id: block.id,
            records: block.records,
            len_bytes: block.bytes.len() as u64,
            locator: vec![7],
            source_offsets: block.source_offsets.clone(),
        };
        self.blocks.lock().unwrap().insert(block.id, block.bytes);
        Box::pin(async move { Ok(stored) })
    }
    fn consumed(&self, _id: BlockId) {}
    fn read(&self, stored: &StoredBlock) -> BoxFuture<engine::Result<Option<Bytes>>> {
        assert_eq!(
            stored.locator,
            vec![7],
            "the engine hands back the handler's locator"
        );
        let lost = self.lose.lock().unwrap().contains(&stored.id);
        let bytes = if lost {
            None
        } else {
            self.blocks.lock().unwrap().get(&stored.id).cloned()
        };
        Box::pin(async move { Ok(bytes) })
    }
    fn cleanup(&self, _blocks: &[StoredBlock]) -> BoxFuture<engine::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Records allocations (a metadata log's view).
#[derive(Default)]
struct Log {
    allocated: Mutex<BTreeMap<BatchTime, Allocation>>,
    events: Mutex<Vec<String>>,
}

impl MetadataLog for Log {
    fn block_stored(&self, block: &StoredBlock) -> engine::Result<()> {
        self.events
            .lock()
            .unwrap()
            .push(format!("stored {}", block.id));
        Ok(())
    }
    fn batch_allocated(&self, allocation: &Allocation) -> engine::Result<()> {
        self.events
            .lock()
            .unwrap()
            .push(format!("allocated {}", allocation.time.as_millis()));
        self.allocated
            .lock()
            .unwrap()
            .insert(allocation.time, allocation.clone());
        Ok(())
    }
    fn batch_completed(&self, time: BatchTime) -> engine::Result<()> {
        self.events
            .lock()
            .unwrap()
            .push(format!("completed {}", time.as_millis()));
        Ok(())
    }
}

/// Stores the lines it is given, one block per `store_records` call, in order; each call
/// returns only once the block is stored (the acknowledgement point).
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
                .recv_timeout(Duration::from_millis(20));
            match next {
                Ok(lines) => {
                    let n = lines.len();
                    ctx.store_records(&lines).await?;
                    self.stored.send(n).unwrap();
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

const START: u64 = 5_000_000;

struct Run {
    ctx: StreamingContext,
    clock: ManualClock,
    input: mpsc::Sender<Vec<Str>>,
    stored: mpsc::Receiver<usize>,
    done: mpsc::Receiver<BatchInfo>,
}

/// A word count with a running total, writing the totals of every batch as text files.
fn pipeline(out: &Path, handler: Arc<KeepAll>, log: Arc<Log>) -> Run {
    let mut config = Config::new(Duration::from_millis(1_000));
    config.partitions = 3;
    let clock = ManualClock::new(START);
    let ctx = StreamingContext::with_clock(config, Arc::new(clock.clone())).unwrap();
    ctx.set_default_block_handler(handler).unwrap();
    ctx.set_metadata_log(log).unwrap();
    let (lines, input, stored) = lines_stream(&ctx);
    lines
        .flat_map(|l| l.split(' '))
        .map(|w| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
            Some(total.unwrap_or(0) + new.iter().sum::<u64>())
        })
        .save_as_text_files(out.join("totals"), "txt");
    let (tx, done) = mpsc::channel();
    ctx.add_listener(Arc::new(Done(Mutex::new(tx))));
    Run {
        ctx,
        clock,
        input,
        stored,
        done,
    }
}

fn lines(text: &str) -> Vec<Str> {
    text.lines().map(Str::from).collect()
}

fn batch_files(out: &Path, k: u64) -> Vec<(String, Vec<u8>)> {
    let dir = out.join(format!("totals-{}.txt", START + k * 1_000));
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_batch_recomputed_from_stored_blocks_and_a_snapshot_writes_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (out_a, out_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let handler = Arc::new(KeepAll::default());
    let log_a = Arc::new(Log::default());
    let a = pipeline(&out_a, Arc::clone(&handler), Arc::clone(&log_a));
    a.ctx.start().unwrap();
    let inputs = [
        "the quick brown fox\njumps over the lazy dog",
        "the dog barks\nthe fox runs",
        "a b c the\nthe end",
    ];
    let mut snapshot: Vec<StateSnapshot> = Vec::new();
    for (k, text) in inputs.iter().enumerate() {
        // Two blocks per batch.
        let ls = lines(text);
        let (x, y) = ls.split_at(1);
        for part in [x.to_vec(), y.to_vec()] {
            a.input.send(part).unwrap();
            a.stored.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        a.clock.advance(1_000);
        let info = a.done.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(info.records(), ls.len() as u64);
        if k == 1 {
            // After batch 2: the state a checkpoint would hold.
            snapshot = a.ctx.state_snapshot().unwrap();
        }
    }
    a.ctx.stop(true).unwrap();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].kind, "update_state_by_key");
    assert_eq!(
        snapshot[0].state_time,
        Some(BatchTime::from_millis(START + 2_000))
    );

    // The metadata log saw each allocation before the batch completed.
    let events = log_a.events.lock().unwrap().clone();
    for k in 1..=3u64 {
        let t = START + k * 1_000;
        let alloc = events
            .iter()
            .position(|e| *e == format!("allocated {t}"))
            .unwrap();
        let done = events
            .iter()
            .position(|e| *e == format!("completed {t}"))
            .unwrap();
        assert!(alloc < done, "{events:?}");
    }
    let allocations = log_a.allocated.lock().unwrap().clone();
    let batch3 = allocations[&BatchTime::from_millis(START + 3_000)].clone();
    assert_eq!(batch3.blocks.values().flatten().count(), 2);

    // A new context (same code, so the same graph) restarts with batch 3 pending, the state
    // of batch 2, and blocks only in the handler: the block stages never ran in it.
    let log_b = Arc::new(Log::default());
    let b = pipeline(&out_b, Arc::clone(&handler), Arc::clone(&log_b));
    let next_seq = batch3
        .blocks
        .values()
        .flatten()
        .map(|s| s.id.seq + 1)
        .max()
        .unwrap();
    b.ctx
        .start_from(Restore {
            zero: BatchTime::from_millis(START),
            scheduler: RestoredState {
                last_generated: Some(BatchTime::from_millis(START + 3_000)),
                pending: vec![batch3],
                unallocated: vec![],
                remembered: vec![],
            },
            next_block_seq: [(engine::StreamId(0), next_seq)].into(),
            state: snapshot,
            resume_offsets: BTreeMap::new(),
        })
        .unwrap();
    let info = b.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        info.batch_time.as_millis(),
        START + 3_000,
        "the pending batch runs first, at its original time"
    );
    assert_eq!(info.lost_blocks, 0);
    assert_eq!(
        batch_files(&out_b, 3),
        batch_files(&out_a, 3),
        "the re-run batch wrote identical files"
    );
    let files = batch_files(&out_a, 3);
    assert_eq!(
        files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["_SUCCESS", "part-00000", "part-00001", "part-00002"]
    );
    let all: String = files
        .iter()
        .map(|(_, b)| String::from_utf8(b.clone()).unwrap())
        .collect();
    assert!(all.contains("(the,6)") && all.contains("(end,1)"), "{all}");
    b.ctx.stop(true).unwrap();

    // The same re-run with one block lost: the batch runs without it and says so.
    let out_c = tmp.path().join("c");
    let lost = allocations[&BatchTime::from_millis(START + 3_000)]
        .blocks
        .values()
        .flatten()
        .next()
        .unwrap()
        .clone();
    handler.lose.lock().unwrap().push(lost.id);
    let c = pipeline(&out_c, Arc::clone(&handler), Arc::new(Log::default()));
    c.ctx
        .start_from(Restore {
            zero: BatchTime::from_millis(START),
            scheduler: RestoredState {
                last_generated: Some(BatchTime::from_millis(START + 3_000)),
                pending: vec![allocations[&BatchTime::from_millis(START + 3_000)].clone()],
                unallocated: vec![],
                remembered: vec![],
            },
            next_block_seq: BTreeMap::new(),
            state: vec![],
            resume_offsets: BTreeMap::new(),
        })
        .unwrap();
    let info = c.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((info.lost_blocks, info.lost_records), (1, lost.records));
    assert_eq!(
        info.records(),
        2,
        "the batch's allocation still says what it should have had"
    );
    c.ctx.stop(true).unwrap();
}

#[test]
fn snapshots_of_another_graph_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let a = pipeline(
        tmp.path(),
        Arc::new(KeepAll::default()),
        Arc::new(Log::default()),
    );
    a.ctx.start().unwrap();
    a.clock.advance(1_000);
    a.done.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut snapshot = a.ctx.state_snapshot().unwrap();
    a.ctx.stop(true).unwrap();
    snapshot[0].operator = engine::OperatorId(42);
    let b = pipeline(
        tmp.path(),
        Arc::new(KeepAll::default()),
        Arc::new(Log::default()),
    );
    let err = b
        .ctx
        .start_from(Restore {
            zero: BatchTime::from_millis(START),
            state: snapshot,
            ..Restore::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no stateful operator with this id in the graph"),
        "{err}"
    );
}

/// A `Lines` receiver stream of `ctx`, with the sender that feeds it batches of lines and
/// the receiver of how many lines it stored of each.
fn lines_stream(
    ctx: &StreamingContext,
) -> (DStream<Str>, mpsc::Sender<Vec<Str>>, mpsc::Receiver<usize>) {
    let (input, rx) = mpsc::channel();
    let (stored_tx, stored) = mpsc::channel();
    let lines = ctx
        .receiver_stream(
            "lines",
            Lines {
                batches: Arc::new(Mutex::new(rx)),
                stored: stored_tx,
            },
        )
        .unwrap();
    (lines, input, stored)
}

/// A context whose only input is a `Lines` receiver that is never fed (for building graphs
/// to describe, not to run).
fn lines_only() -> (StreamingContext, DStream<Str>) {
    let ctx = StreamingContext::new(Config::new(Duration::from_secs(1))).unwrap();
    let (lines, _, _) = lines_stream(&ctx);
    (ctx, lines)
}

#[test]
fn the_graph_description_is_stable_and_names_state_types() {
    let tmp = tempfile::tempdir().unwrap();
    let describe = || {
        pipeline(
            tmp.path(),
            Arc::new(KeepAll::default()),
            Arc::new(Log::default()),
        )
        .ctx
        .describe_graph()
    };
    let a = describe();
    assert_eq!(a, describe(), "the same code describes the same graph");
    let kinds: Vec<&str> = a.iter().map(|o| o.kind.as_str()).collect();
    // The state reads reduce_by_key's output as it is: its keys are unique and partitioned
    // as the state's, so no group_by_key node is built for it (see the fallback below).
    assert_eq!(
        kinds,
        [
            "receiver_stream",
            "reduce_by_key",
            "update_state_by_key",
            "save_as_text_files"
        ]
    );
    let state = a.iter().find(|o| o.kind == "update_state_by_key").unwrap();
    let info = state.state.as_ref().unwrap();
    assert_eq!(
        (info.key_type.as_str(), info.state_type.as_str()),
        ("engine::text::Str", "u64")
    );
    assert_eq!(state.parents, [a[1].id]);
    // Golden: the id the state had when it always read a group_by_key node (main at
    // 891d734), so snapshots taken then still restore.
    assert_eq!(state.id.to_string(), "2cfc9b8d5138136b");
    assert_eq!(a[1].input_stream, None);
    assert_eq!(
        a[1].parents,
        [a[0].id],
        "fused narrow operators read the input directly"
    );
    assert!(a[3].output);

    // Another narrow operator before the shuffle changes every id downstream of it, so a
    // snapshot of the old graph's state is not restored into the new one.
    let (ctx, lines) = lines_only();
    lines
        .flat_map(|l| l.split(' '))
        .filter(|w| !w.is_empty())
        .map(|w| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
            Some(total.unwrap_or(0) + new.iter().sum::<u64>())
        })
        .save_as_text_files(tmp.path().join("x"), "txt");
    let b = ctx.describe_graph();
    assert_eq!(b[0].id, a[0].id, "the input is the same");
    assert_ne!(b[2].id, a[2].id, "the state's lineage changed");

    // With another partition count than the reduce's, the state groups its input itself.
    let (ctx, lines) = lines_only();
    lines
        .flat_map(|l| l.split(' '))
        .map(|w| (w, 1u64))
        .reduce_by_key_with_partitions(|a, b| a + b, 3)
        .update_state_by_key_with(
            |new: Vec<u64>, total: Option<u64>| Some(total.unwrap_or(0) + new.iter().sum::<u64>()),
            2,
            Vec::new(),
        )
        .save_as_text_files(tmp.path().join("y"), "txt");
    let c = ctx.describe_graph();
    let kinds: Vec<&str> = c.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "receiver_stream",
            "reduce_by_key",
            "group_by_key",
            "update_state_by_key",
            "save_as_text_files"
        ]
    );
}
