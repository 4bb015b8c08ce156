//! The Kafka source's read-ahead and byte cap against a real broker (tansu), in process.
//!
//! - Prefetch (`Config::direct_prefetch_blocks_max`): a batch's partition ranges are read as
//!   soon as the batch is planned and counted map-side as they arrive. The oracle: the
//!   running totals equal the workload's expected counts (`ember gen --expected`), every
//!   record was fetched from the broker exactly once (a batch that reads a block while its
//!   prefetch is under way must share that read, not fetch the range again), and some
//!   blocks were really read ahead.
//! - Byte cap (`KafkaOptions::max_bytes_per_partition`): with large records and no offsets
//!   cap that binds, each batch's ranges stay near the byte cap, the first batch (planned
//!   before any read, from a size sample) included, instead of one batch taking the topic.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::source::kafka::KafkaOptions;
use engine::{BatchData, Config, Str, StreamingContext};
use tests::batch_recorder::{BatchRecorder, offsets_read, reads_something};
use tests::processes::ember_bin;
use tests::servers::Tansu;

/// Small, so the file runs in seconds: 4,000 records of 10 lines, 1,000 per partition.
const LINES: u64 = 40_000;
const LINES_PER_RECORD: u32 = 10;
const PARTITIONS: i32 = 4;
const RECORDS: i64 = (LINES / LINES_PER_RECORD as u64) as i64;

fn gen_topic(bootstrap: &str, topic: &str, expected: &Path) {
    let out = Command::new(ember_bin())
        .args(["gen", "--kafka", &format!("{bootstrap}/{topic}")])
        .args(["--partitions", &PARTITIONS.to_string()])
        .args(["--lines", &LINES.to_string()])
        .args(["--lines-per-record", &LINES_PER_RECORD.to_string()])
        .arg("--expected")
        .arg(expected)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ember gen --kafka failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn expected_counts(path: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (w, c) = l.split_once('\t').unwrap();
            (w.to_owned(), c.parse().unwrap())
        })
        .collect()
}

#[test]
fn prefetched_ranges_are_fetched_once_and_counted_exactly() {
    let Some(tansu) = Tansu::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected_path = dir.path().join("expected.tsv");
    gen_topic(&tansu.bootstrap(), "prefetch", &expected_path);

    // 200 ms batches of at most 250 records per partition: 4 batches with a backlog, so
    // batches are planned (and prefetched) while earlier ones run.
    const BATCH_MS: u64 = 200;
    let mut config = Config::new(Duration::from_millis(BATCH_MS));
    config.partitions = 2;
    config.direct_prefetch_blocks_max = 2;
    let ctx = StreamingContext::new(config).unwrap();
    let mut options = KafkaOptions::new(tansu.bootstrap(), "prefetch");
    options.max_rate_per_partition = Some(250 * 1000 / BATCH_MS);
    let (records, offsets) = ctx.kafka_stream(options).unwrap();
    let totals = records
        .flat_map(|record: Str| record.split('\n').flat_map(|line| line.split(' ')))
        .map(|word| (word, 1u64))
        .reduce_by_key(|a, b| a + b)
        .update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
            Some(total.unwrap_or(0) + new.iter().sum::<u64>())
        });
    let latest: Arc<Mutex<BatchData<(Str, u64)>>> = Arc::new(Mutex::new(BatchData::empty()));
    let sink = Arc::clone(&latest);
    totals.foreach_batch(move |data, _| *sink.lock().unwrap() = data.clone());
    let recorder =
        BatchRecorder::attach(&ctx, &offsets, Box::new(|all| offsets_read(all) >= RECORDS));
    ctx.start().unwrap();
    recorder.await_stop(&ctx, Duration::from_secs(120));

    let non_empty = recorder.reading_batches().len();
    assert!(
        non_empty >= 4,
        "expected at least 4 batches, got {non_empty}"
    );
    let counted: BTreeMap<String, u64> = latest
        .lock()
        .unwrap()
        .to_vec()
        .into_iter()
        .map(|(w, c)| (w.as_str().to_owned(), c))
        .collect();
    assert!(
        counted == expected_counts(&expected_path),
        "the running totals differ from the workload's expected counts"
    );
    assert_eq!(
        offsets.records_read(),
        RECORDS as u64,
        "every record fetched from the broker exactly once"
    );
    assert!(
        offsets.blocks_prefetched() > 0,
        "no block was read ahead of its batch"
    );
}

#[test]
fn the_byte_cap_spreads_large_records_over_batches_from_the_first_one() {
    let Some(tansu) = Tansu::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    gen_topic(
        &tansu.bootstrap(),
        "sized",
        &dir.path().join("expected.tsv"),
    );

    // Records of 10 lines are about 700 bytes: 70 kB per partition per second of 500 ms
    // batches is about 50 records per batch and partition, where the offsets cap (250,000
    // per second) would take all 1,000 of each partition in the first batch.
    const BATCH_MS: u64 = 500;
    const CAP_BYTES: u64 = 70_000;
    let ctx = StreamingContext::new(Config::new(Duration::from_millis(BATCH_MS))).unwrap();
    let mut options = KafkaOptions::new(tansu.bootstrap(), "sized");
    options.max_bytes_per_partition = Some(CAP_BYTES);
    let (records, offsets) = ctx.kafka_stream(options).unwrap();
    records.count().foreach_batch(|_, _| {});
    let recorder = BatchRecorder::attach(
        &ctx,
        &offsets,
        Box::new(|all| all.iter().filter(|(_, rs)| reads_something(rs)).count() >= 3),
    );
    ctx.start().unwrap();
    recorder.await_stop(&ctx, Duration::from_secs(120));
    let planned = recorder.reading_batches();
    assert!(planned.len() >= 3, "{:?}", recorder.batches());
    for (i, (_, ranges)) in planned.iter().enumerate() {
        for r in ranges.iter() {
            let span = r.until - r.from;
            // About 50; the bounds leave room for the sampled estimate and line lengths,
            // and are far from both 1,000 (no byte cap) and a stuck 0 or 1.
            assert!(
                (10..=150).contains(&span),
                "batch {i} (first non-empty = 0) read {span} offsets of partition {}: {ranges:?}",
                r.partition
            );
        }
    }
}
