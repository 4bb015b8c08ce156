//! The at-least-once Kafka sink against a real broker (tansu): Kafka → word count → Kafka.
//!
//! A first context counts a topic filled by `ember gen --kafka` into an output topic. A
//! second context then re-runs one of the first run's batches at its original time over its
//! recorded offset ranges (what a restart after a `kill -9` between the sink's write and the
//! batch's completion does), so the output topic holds that batch twice. The test consumes
//! the output back, checks that every duplicated identity (`ember-pipeline`,
//! `ember-batch-time-ms`, `ember-partition`, `ember-sequence`) carries the same key and
//! value, drops the duplicates by identity, and compares the summed counts with the
//! workload's expected counts (`ember gen --expected`), an oracle independent of the sink.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use engine::scheduler::RestoredState;
use engine::sink::kafka::KafkaSink;
use engine::source::kafka::{KafkaOptions, OffsetRange};
use engine::{BatchTime, Config, ManualClock, Restore, Str, StreamingContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tests::batch_recorder::{BatchRecorder, StopWhen, offsets_read};
use tests::kafka_pipeline::{FETCH_WAIT_MAX_MS, KafkaPipeline, Offsets, create_topic};

/// Small: the point is identities and dedup, not volume. The output (one record per word
/// and batch partition, about one per input line with this workload's vocabulary) is what
/// costs time: tansu serves it at about 100 records per second here.
const LINES: u64 = 3_000;
const OUT_PARTITIONS: i32 = 2;
const BATCH_MS: u64 = 200;
const PIPELINE: &str = "wc-to-kafka";

/// The word count into the output topic. With `rerun`, only that batch is run (at its time,
/// over its ranges) and the source starts at `end` so nothing else is read.
fn run_pipeline(
    bootstrap: &str,
    end: &Offsets,
    rerun: Option<&(BatchTime, Vec<OffsetRange>)>,
) -> Vec<(BatchTime, Vec<OffsetRange>)> {
    let mut config = Config::new(Duration::from_millis(BATCH_MS));
    config.partitions = OUT_PARTITIONS as usize;
    // The re-run's clock stands still at the batch's time: the restored grid ends at that
    // batch, and on the wall clock the context would first catch up every grid point since
    // the first run (hundreds of empty 200 ms batches) before its graceful stop ended.
    let ctx = match rerun {
        None => StreamingContext::new(config),
        Some((time, _)) => {
            StreamingContext::with_clock(config, Arc::new(ManualClock::new(time.as_millis())))
        }
    }
    .unwrap();
    let mut options = KafkaOptions::new(bootstrap, "words-in");
    // A few batches, not one: 3,000 lines / 4 partitions at 500 per partition per batch.
    options.max_rate_per_partition = Some(500 * 1000 / BATCH_MS);
    options
        .client_settings
        .insert("fetch.wait.max.ms".to_owned(), FETCH_WAIT_MAX_MS.to_owned());
    let (lines, offsets) = ctx.kafka_stream(options).unwrap();
    let sink = Arc::new(KafkaSink::new(bootstrap, "counts-out", Duration::from_secs(30)).unwrap());
    lines
        .flat_map(|line: Str| line.split(' '))
        .map(|word| (word, 1u64))
        .reduce_by_key(|a, b| a + b)
        .write_to(PIPELINE, sink, Some(offsets.clone()));
    let total: i64 = end.values().sum();
    let stop_when: StopWhen = match rerun {
        None => Box::new(move |all| offsets_read(all) >= total),
        Some((time, _)) => {
            let time = *time;
            Box::new(move |all| all.iter().any(|(t, _)| *t == time))
        }
    };
    let recorder = BatchRecorder::attach(&ctx, &offsets, stop_when);
    match rerun {
        None => ctx.start().unwrap(),
        Some((time, ranges)) => {
            offsets.seek(end);
            let stream = lines.input_stream_id().unwrap();
            let alloc = offsets.allocation(stream, *time, ranges).unwrap();
            ctx.start_from(Restore {
                zero: BatchTime::from_millis(time.as_millis() - BATCH_MS),
                scheduler: RestoredState {
                    last_generated: Some(*time),
                    pending: vec![alloc],
                    unallocated: Vec::new(),
                    remembered: Vec::new(),
                },
                ..Restore::default()
            })
            .unwrap();
        }
    }
    recorder.await_stop(&ctx, Duration::from_secs(120));
    // Every batch this context ran that read something, with its ranges.
    recorder.reading_batches()
}

/// One output record: its identity headers, key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OutRecord {
    identity: (String, u64, u32, u64),
    key: String,
    value: i64,
}

/// The output topic's records from `from` (partition -> offset; 0 where missing) to its
/// end, and the end offsets. tansu serves such records slowly (about 100 per second here:
/// it builds each fetch response record batch by record batch from sqlite), so the test
/// reads each record once: the second read starts where the first ended.
fn consume_output(bootstrap: &str, from: &Offsets) -> (Vec<OutRecord>, Offsets) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ember-test-oracle")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        // Smaller responses, so a slow broker shows progress (see read_partition).
        .set("max.partition.fetch.bytes", "65536")
        .create()
        .unwrap();
    let mut out = Vec::new();
    let mut ends = Offsets::new();
    // One partition at a time (how the engine's range reader reads tansu).
    for p in 0..OUT_PARTITIONS {
        let (low, end) = c
            .fetch_watermarks("counts-out", p, Duration::from_secs(10))
            .unwrap();
        let start = from.get(&p).copied().unwrap_or(low).max(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("counts-out", p, Offset::Offset(start))
            .unwrap();
        c.assign(&tpl).unwrap();
        read_partition(&c, p, start, end, &mut out);
        ends.insert(p, end);
    }
    (out, ends)
}

/// Reads `[low, end)` of partition `p`; fails after 60 s without a new record.
fn read_partition(c: &BaseConsumer, p: i32, low: i64, end: i64, out: &mut Vec<OutRecord>) {
    let mut next = low;
    let mut errors = Vec::new();
    let mut deadline = std::time::Instant::now() + Duration::from_secs(60);
    while next < end {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress reading partition {p} of the output topic back for 60 s: at {next} of \
             {low}..{end}; errors: {errors:?}"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
                continue;
            }
        };
        if m.partition() != p || m.offset() < next {
            continue;
        }
        next = m.offset() + 1;
        deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut h: BTreeMap<String, String> = BTreeMap::new();
        if let Some(headers) = m.headers() {
            for header in headers.iter() {
                h.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        let field = |name: &str| {
            h.get(name)
                .unwrap_or_else(|| panic!("record without header {name}: {h:?}"))
                .clone()
        };
        out.push(OutRecord {
            identity: (
                field("ember-pipeline"),
                field("ember-batch-time-ms").parse().unwrap(),
                field("ember-partition").parse().unwrap(),
                field("ember-sequence").parse().unwrap(),
            ),
            key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            value: String::from_utf8(m.payload().unwrap().to_vec())
                .unwrap()
                .parse()
                .unwrap(),
        });
    }
}

#[test]
fn a_rerun_batch_reproduces_its_records_identities_so_dedup_by_header_gives_exact_counts() {
    let Some(p) = KafkaPipeline::start("words-in", LINES, false) else {
        return;
    };
    let bootstrap = p.bootstrap();
    create_topic(&bootstrap, "counts-out", OUT_PARTITIONS);
    let end = p.end_offsets();

    let first = run_pipeline(&bootstrap, &end, None);
    assert!(
        first.len() >= 2,
        "the first run read everything in {} batch(es): no batch in the middle to re-run",
        first.len()
    );
    let (once, once_ends) = consume_output(&bootstrap, &Offsets::new());
    // Re-run a batch from the middle of the first run.
    let rerun = first[first.len() / 2].clone();
    let second = run_pipeline(&bootstrap, &end, Some(&rerun));
    assert_eq!(
        second.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![rerun.0],
        "the re-run read more than the one recorded batch"
    );
    let (again, _) = consume_output(&bootstrap, &once_ends);
    let all: Vec<OutRecord> = once.iter().chain(&again).cloned().collect();

    let batch_ms = rerun.0.as_millis();
    let first_copy = once.iter().filter(|r| r.identity.1 == batch_ms).count();
    assert!(first_copy > 0, "batch {batch_ms} produced nothing");
    assert_eq!(
        all.len() - once.len(),
        first_copy,
        "the re-run produced a different number of records than the batch's first run"
    );

    // The consumer's side: drop duplicates by identity, sum the per-batch counts. Every
    // identity of the re-run batch must come twice with the same key and value; every
    // other identity once.
    let mut by_identity: BTreeMap<(String, u64, u32, u64), (OutRecord, usize)> = BTreeMap::new();
    for r in &all {
        let entry = by_identity
            .entry(r.identity.clone())
            .or_insert_with(|| (r.clone(), 0));
        assert_eq!(
            &entry.0, r,
            "one identity, two different records: the re-run is not deterministic"
        );
        entry.1 += 1;
    }
    for (identity, (_, copies)) in &by_identity {
        let want = if identity.1 == batch_ms { 2 } else { 1 };
        assert_eq!(
            *copies, want,
            "identity {identity:?} was produced {copies} time(s)"
        );
    }
    let by_identity: BTreeMap<_, OutRecord> =
        by_identity.into_iter().map(|(k, (r, _))| (k, r)).collect();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for r in by_identity.values() {
        *totals.entry(r.key.clone()).or_default() += r.value;
    }
    p.check_exact("the deduplicated output topic", &totals);
}
