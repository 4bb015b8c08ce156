//! The data-driven harness for operator tests: queue-stream inputs per batch, a manual
//! clock, and the outputs collected per batch.
#![allow(dead_code)]

use std::fmt::Debug;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::{BatchInfo, Config, DStream, Data, ManualClock, StreamingContext, StreamingListener};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const INTERVAL_MS: u64 = 1_000;
pub const START_MS: u64 = 1_000_000;

struct Done(Mutex<mpsc::Sender<BatchInfo>>);

impl StreamingListener for Done {
    fn on_batch_completed(&self, batch: &BatchInfo) {
        let _ = self.0.lock().unwrap().send(batch.clone());
    }
}

/// The output of one run: for every batch number (1 = the first batch), the records of
/// each partition of the output stream, if it had a batch then.
pub type Outputs<U> = Vec<(u64, Vec<Vec<U>>)>;

pub fn config() -> Config {
    let mut c = Config::new(Duration::from_millis(INTERVAL_MS));
    c.partitions = 3;
    c.worker_threads = 2;
    c
}

/// Runs `build` over a queue stream whose batch `k` (1-based) holds `inputs[k - 1]`, for
/// `batches` batches, and returns the output stream's data per batch.
pub fn run<T, U>(
    config: Config,
    inputs: Vec<Vec<T>>,
    batches: u64,
    build: impl FnOnce(&StreamingContext, DStream<T>) -> engine::Result<DStream<U>>,
) -> Outputs<U>
where
    T: Data + Serialize + DeserializeOwned,
    U: Data,
{
    let clock = ManualClock::new(START_MS);
    let ctx = StreamingContext::with_clock(config, Arc::new(clock.clone())).unwrap();
    let input = ctx.queue_stream(inputs).unwrap();
    let out = build(&ctx, input).unwrap();
    let collected: Arc<Mutex<Outputs<U>>> = Arc::default();
    let sink = Arc::clone(&collected);
    out.foreach_batch(move |data, time| {
        let k = (time.as_millis() - START_MS) / INTERVAL_MS;
        sink.lock()
            .unwrap()
            .push((k, data.partitions().map(|p| p.to_vec()).collect()));
    });
    let (tx, rx) = mpsc::channel();
    ctx.add_listener(Arc::new(Done(Mutex::new(tx))));
    ctx.start().unwrap();
    for k in 1..=batches {
        clock.advance(INTERVAL_MS);
        let done = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("batch completed");
        assert_eq!(done.batch_time.as_millis(), START_MS + k * INTERVAL_MS);
        assert_eq!(done.failure, None, "batch {k} failed");
    }
    ctx.stop(true).unwrap();
    let out = collected.lock().unwrap().clone();
    drop(ctx);
    out
}

/// Every batch's records, sorted (for operators whose order within a batch is not part of
/// their meaning).
pub fn sorted<U: Ord + Clone>(outputs: &Outputs<U>) -> Vec<(u64, Vec<U>)> {
    outputs
        .iter()
        .map(|(k, parts)| {
            let mut all: Vec<U> = parts.iter().flatten().cloned().collect();
            all.sort();
            (*k, all)
        })
        .collect()
}

/// The data-driven check: inputs per batch, expected output per batch (order within a
/// batch ignored). Also checks that a second run gives exactly the same partitions, in the
/// same order (batches are deterministic functions of their inputs).
pub fn check<T, U>(
    inputs: Vec<Vec<T>>,
    build: impl Fn(&StreamingContext, DStream<T>) -> engine::Result<DStream<U>>,
    expected: &[(u64, Vec<U>)],
) where
    T: Data + Serialize + DeserializeOwned,
    U: Data + Ord + Debug,
{
    let batches = expected
        .iter()
        .map(|(k, _)| *k)
        .max()
        .unwrap_or(0)
        .max(inputs.len() as u64);
    let first = run(config(), inputs.clone(), batches, &build);
    let got = sorted(&first);
    let want: Vec<(u64, Vec<U>)> = expected
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.sort();
            (*k, v)
        })
        .collect();
    assert_eq!(got, want);
    let second = run(config(), inputs, batches, &build);
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "a re-run must give identical partitions"
    );
}
