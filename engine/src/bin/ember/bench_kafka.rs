//! `ember bench kafka-read`: the broker's own ceiling for the Kafka word count.
//!
//! One plain librdkafka consumer (the same client and defaults as Ember's Kafka source,
//! no engine, no batches, no counting) assigned every partition of the topic from its low
//! watermark, reading until each partition reaches the high watermark it had at the start.
//! Each record's payload is touched (its newlines counted, so that lines can be reported
//! and the bytes are really read), nothing else. `scripts/bench-kafka` runs it beside the
//! pipelines, so the ratio of a Kafka pipeline to the socket pipeline can be read against
//! what the broker and the client alone allow on the same machine.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// The flags of `ember bench kafka-read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The topic: kafka://HOST:PORT/topic (or HOST:PORT/topic).
    #[arg(long)]
    source: String,
    /// A librdkafka consumer property, KEY=VALUE (repeatable), over the defaults.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE")]
    kafka_config: Vec<String>,
    /// Give up when no record arrived for this long.
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
}

/// Reads the whole topic once and prints `KAFKAREAD {json}` (records, bytes, lines,
/// seconds and the rates).
pub fn run(args: ReadArgs) -> anyhow::Result<ExitCode> {
    let (bootstrap, topic) = crate::kafka::parse_target(&args.source)?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "ember-bench-kafka-read")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // The same read-ahead bound and fetch wait as Ember's source readers.
        .set("queued.max.messages.kbytes", "16384")
        .set(
            engine::source::kafka::READER_FETCH_WAIT_MAX_MS.0,
            engine::source::kafka::READER_FETCH_WAIT_MAX_MS.1,
        );
    for kv in &args.kafka_config {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--kafka-config takes KEY=VALUE, not {kv:?}");
        };
        config.set(k.trim(), v.trim());
    }
    let consumer: BaseConsumer = config
        .create()
        .with_context(|| format!("creating a Kafka consumer for {bootstrap}"))?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .with_context(|| format!("cannot reach Kafka at {bootstrap}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        bail!("topic `{topic}` has no partitions at {bootstrap} (does it exist?)");
    }
    // Per partition, the offset after the last record to read.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .with_context(|| format!("reading the offsets of partition {p} of `{topic}`"))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(&topic, p, Offset::Offset(low))
                .with_context(|| format!("offset {low} of partition {p}"))?;
        }
    }
    let started = Instant::now();
    consumer
        .assign(&tpl)
        .context("assigning the topic's partitions")?;
    let (mut records, mut bytes, mut lines) = (0u64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if let Some(v) = m.payload() {
                    records += 1;
                    bytes += v.len() as u64;
                    lines += v.iter().filter(|&&b| b == b'\n').count() as u64
                        + u64::from(v.last() != Some(&b'\n'));
                }
                if ends
                    .get(&m.partition())
                    .is_some_and(|&end| m.offset() + 1 >= end)
                {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => bail!("reading `{topic}` from {bootstrap}: {e}"),
        }
        if last_progress.elapsed() > Duration::from_secs(args.idle_timeout_s) {
            bail!(
                "no record from {bootstrap} for {} s; partitions not finished: {:?}",
                args.idle_timeout_s,
                ends
            );
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "KAFKAREAD {}",
        serde_json::json!({"records": records, "bytes": bytes, "lines": lines,
            "seconds": secs, "records_per_s": records as f64 / secs,
            "mb_per_s": bytes as f64 / secs / 1e6, "lines_per_s": lines as f64 / secs})
    );
    Ok(ExitCode::SUCCESS)
}
