//! End to end: the word count over a real TCP socket, fed by the workload generator, with
//! counts compared to the expected file produced by the Spark baseline's Java generator.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::workload::serve::{DataMode, LineServer, ServeConfig};
use engine::workload::{StreamConfig, Workload, WorkloadSpec};
use engine::{BatchData, BatchInfo, Config, Str, StreamingContext, StreamingListener};

struct StopAfter {
    lines: u64,
    seen: AtomicU64,
    stop: engine::StopHandle,
}

impl StreamingListener for StopAfter {
    fn on_batch_completed(&self, batch: &BatchInfo) {
        if self.seen.fetch_add(batch.records(), Ordering::SeqCst) + batch.records() >= self.lines {
            self.stop.request_stop(true);
        }
    }
}

/// The running word count of the benchmark, as a user writes it.
fn word_count(ctx: &StreamingContext, address: &str) -> Arc<Mutex<BatchData<(Str, u64)>>> {
    let lines = ctx.socket_text_stream(address).unwrap();
    let totals = lines
        .flat_map(|line| line.split(' '))
        .map(|word| (word, 1u64))
        .reduce_by_key(|a, b| a + b)
        .update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
            Some(total.unwrap_or(0) + new.iter().sum::<u64>())
        });
    let latest = Arc::new(Mutex::new(BatchData::empty()));
    let sink = Arc::clone(&latest);
    totals.foreach_batch(move |data, _| *sink.lock().unwrap() = data.clone());
    latest
}

fn tsv(data: &BatchData<(Str, u64)>) -> Vec<u8> {
    let mut rows: Vec<(Str, u64)> = data.to_vec();
    rows.sort();
    let mut out = Vec::new();
    for (w, c) in rows {
        out.extend_from_slice(format!("{w}\t{c}\n").as_bytes());
    }
    out
}

#[test]
fn word_count_over_a_socket_matches_the_expected_file() {
    let spec = WorkloadSpec::new(200_000, 7)
        .with_seed(7)
        .with_vocab_size(1_000)
        .with_zipf_s(0.8);
    let expected = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/expected-n200000-k7-seed7-v1000-s0.8.tsv"),
    )
    .unwrap();
    let workload = Workload::new(spec).unwrap();
    let server = LineServer::bind(
        &workload,
        ServeConfig {
            mode: DataMode::Stream(StreamConfig::default()),
            ..ServeConfig::default()
        },
        Duration::ZERO,
    )
    .unwrap();
    let address = server.local_addr().to_string();
    let serving = std::thread::spawn(move || server.serve_one().unwrap());

    let mut config = Config::new(Duration::from_millis(200));
    config.block_interval_ms = 50;
    config.block_size_max_bytes = 64 << 10; // many blocks per batch
    config.partitions = 3;
    let ctx = StreamingContext::new(config).unwrap();
    let latest = word_count(&ctx, &address);
    ctx.add_listener(Arc::new(StopAfter {
        lines: spec.lines,
        seen: AtomicU64::new(0),
        stop: ctx.stop_handle(),
    }));
    ctx.start().unwrap();
    ctx.await_termination().unwrap();
    let stats = serving.join().unwrap();
    assert_eq!(stats.gen_lines, spec.lines);

    assert_eq!(
        String::from_utf8(tsv(&latest.lock().unwrap())).unwrap(),
        String::from_utf8(expected).unwrap()
    );
    let batches = ctx.batches();
    assert_eq!(
        batches.iter().map(BatchInfo::records).sum::<u64>(),
        spec.lines
    );
    assert!(
        batches
            .iter()
            .all(|b| b.failure.is_none() && b.lost_blocks == 0)
    );
    let receivers = ctx.receivers();
    assert_eq!(receivers[0].records, spec.lines);
    assert!(
        receivers[0].blocks > 10,
        "cut into many blocks: {}",
        receivers[0].blocks
    );
    assert_eq!(receivers[0].invalid_records, 0);
}
