//! A graceful stop once every receiver has ended runs the last batch at once, at its grid
//! time, instead of waiting for the clock to reach that time; with the manual clock, which
//! never moves unless the test moves it, a stop that waited for the grid would never return.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::{
    BatchInfo, Config, ManualClock, Receiver, ReceiverContext, ReceiverState, Str, StreamingContext,
};

/// The clock at start: the grid's zero, so the first batch time is `GRID_NEXT` (1 s batches).
const START: u64 = 5_000_000;
const GRID_NEXT: u64 = 5_001_000;

/// Stores its blocks of lines, then ends (a finite input).
struct Finite(Vec<Vec<&'static str>>);

impl Receiver for Finite {
    type Record = Str;
    fn codec(&self) -> Arc<dyn engine::BlockCodec<Str>> {
        Arc::new(engine::LinesCodec)
    }
    async fn run(self, ctx: ReceiverContext<Str>) -> engine::Result<()> {
        for block in self.0 {
            let lines: Vec<Str> = block.into_iter().map(Str::from).collect();
            ctx.store_records(&lines).await?;
        }
        Ok(())
    }
}

struct Run {
    ctx: Arc<StreamingContext>,
    clock: ManualClock,
    totals: Arc<Mutex<Vec<(Str, u64)>>>,
}

fn word_count(blocks: Vec<Vec<&'static str>>) -> Run {
    let clock = ManualClock::new(START);
    let config = Config::new(Duration::from_millis(1_000));
    let ctx = StreamingContext::with_clock(config, Arc::new(clock.clone())).unwrap();
    let lines = ctx.receiver_stream("finite", Finite(blocks)).unwrap();
    let totals = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&totals);
    lines
        .flat_map(|l| l.split(' '))
        .map(|w| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .foreach_batch(move |data, _| sink.lock().unwrap().extend(data.to_vec()));
    Run {
        ctx: Arc::new(ctx),
        clock,
        totals,
    }
}

fn wait_for_receivers_to_end(ctx: &StreamingContext) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctx
        .receivers()
        .iter()
        .all(|r| r.state == ReceiverState::Stopped)
    {
        assert!(Instant::now() < deadline, "{:?}", ctx.receivers());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `ctx.stop(true)` on another thread; `None` if it has not returned within 30 s.
fn stop_gracefully(run: &Run) -> Option<engine::Result<()>> {
    let (tx, rx) = mpsc::channel();
    let ctx = Arc::clone(&run.ctx);
    std::thread::spawn(move || tx.send(ctx.stop(true)).unwrap());
    let result = rx.recv_timeout(Duration::from_secs(30)).ok();
    if result.is_none() {
        // Let the stuck stop finish before the test fails.
        run.clock.advance(10_000);
    }
    result
}

fn non_empty(batches: &[BatchInfo]) -> Vec<(u64, u64)> {
    batches
        .iter()
        .filter(|b| b.records() > 0)
        .map(|b| (b.batch_time.as_millis(), b.records()))
        .collect()
}

#[test]
fn a_graceful_stop_after_the_input_ended_runs_the_last_batch_without_waiting_for_the_clock() {
    let run = word_count(vec![vec!["a b", "b c"], vec!["c c d"]]);
    run.ctx.start().unwrap();
    wait_for_receivers_to_end(&run.ctx);
    // The input ended, but no stop was asked for: the batch waits for its grid time.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(non_empty(&run.ctx.batches()), []);

    let stopped = stop_gracefully(&run);
    assert!(
        stopped.is_some(),
        "the graceful stop waited for the clock to reach the next batch time"
    );
    stopped.unwrap().unwrap();
    // The clock never moved: the batch ran ahead of it, at the grid point the tick would
    // have given it, with every record.
    assert_eq!(run.clock_now(), START);
    assert_eq!(non_empty(&run.ctx.batches()), [(GRID_NEXT, 3)]);
    let mut totals = run.totals.lock().unwrap().clone();
    totals.sort();
    let expected: Vec<(Str, u64)> = [("a", 1), ("b", 2), ("c", 3), ("d", 1)]
        .into_iter()
        .map(|(w, n)| (Str::from(w), n))
        .collect();
    assert_eq!(totals, expected);
}

#[test]
fn batches_of_an_ended_input_still_run_on_the_grid_until_the_stop() {
    let run = word_count(vec![vec!["x y"], vec!["y"]]);
    run.ctx.start().unwrap();
    wait_for_receivers_to_end(&run.ctx);
    // Without a stop, the clock decides: the batch runs when its time comes, as before.
    run.clock.set(GRID_NEXT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while non_empty(&run.ctx.batches()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the batch at its grid time did not run"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(non_empty(&run.ctx.batches()), [(GRID_NEXT, 2)]);
    // Nothing is left to allocate: the stop needs no further batch.
    stop_gracefully(&run)
        .expect("the graceful stop returned")
        .unwrap();
    assert_eq!(non_empty(&run.ctx.batches()), [(GRID_NEXT, 2)]);
}

impl Run {
    fn clock_now(&self) -> u64 {
        engine::Clock::now_ms(&self.clock)
    }
}
