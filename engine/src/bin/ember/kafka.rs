//! Kafka in the CLI: `ember gen --kafka HOST:PORT/topic` (the workload into a topic) and
//! `ember run wordcount --source kafka://HOST:PORT/topic --sink postgres://...|file://...`.
//! With `kafka://HOST:PORT/topic?group=NAME` the source joins the consumer group NAME
//! (subscribe mode) and the PostgreSQL sink fences its writes on the stored offsets, so
//! several processes can share the topic's partitions (see [`wordcount_group`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use engine::scheduler::RestoredState;
use engine::sink::files::FileSink;
use engine::sink::postgres::{PostgresOptions, PostgresSink, Progress};
use engine::source::kafka::{KafkaOptions, StartingOffsets};
use engine::workload::{StreamConfig, Workload};
use engine::{BatchInfo, BatchTime, Config, Restore, Str, StreamingContext, StreamingListener};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// `HOST:PORT/topic` into its bootstrap address and topic (a `?query` is not part of the
/// topic: see [`source_group`]).
pub fn parse_target(target: &str) -> anyhow::Result<(String, String)> {
    let target = target.strip_prefix("kafka://").unwrap_or(target);
    let target = target.split_once('?').map_or(target, |(t, _)| t);
    match target.split_once('/') {
        Some((bootstrap, topic)) if !bootstrap.is_empty() && !topic.is_empty() => {
            Ok((bootstrap.to_owned(), topic.to_owned()))
        }
        _ => bail!("expected HOST:PORT/topic, not {target:?}"),
    }
}

/// The consumer group of `kafka://HOST:PORT/topic?group=NAME` (subscribe mode), if any;
/// other query parameters are an error.
pub fn source_group(source: &str) -> anyhow::Result<Option<String>> {
    let Some((_, query)) = source.split_once('?') else {
        return Ok(None);
    };
    let mut group = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("group", name)) if !name.is_empty() => group = Some(name.to_owned()),
            _ => bail!(
                "--source {source:?}: unknown or empty query parameter {kv:?} (a kafka:// source \
                 takes ?group=NAME)"
            ),
        }
    }
    Ok(group)
}

/// The flags `ember run wordcount` takes for a Kafka source.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Where the counts go (with a kafka:// source): `postgres://USER@HOST:PORT/DB?table=T&pipeline=NAME`
    /// (exactly-once, running totals; resumes from the offsets stored there) or
    /// `file://DIR` (each batch's counts in DIR/batch-<batch ms>/ with its offsets, rewritten
    /// identically when a batch re-runs; resumes from there too).
    #[arg(long)]
    pub sink: Option<String>,
    /// At most this many offsets per Kafka partition per second of batch interval.
    #[arg(long, default_value_t = 250_000)]
    pub max_rate_per_partition: u64,
    /// At most about this many bytes per Kafka partition per second of batch interval
    /// (estimated from the records read so far; 0: no byte cap).
    #[arg(long, default_value_t = engine::source::kafka::DEFAULT_MAX_BYTES_PER_PARTITION)]
    pub max_bytes_per_partition: u64,
    /// Where to start when the sink has no stored offsets: earliest, latest, committed.
    #[arg(long, default_value = "earliest")]
    pub starting_offsets: String,
    /// Consumer group id for committed offsets (assign mode). To share the topic's
    /// partitions with other processes in a group, use `--source kafka://HOST:PORT/topic?group=NAME`.
    #[arg(long)]
    pub group_id: Option<String>,
    /// Commit each batch's offsets to Kafka (the group id) after its outputs completed.
    #[arg(long)]
    pub commit_offsets: bool,
    /// A librdkafka consumer property, KEY=VALUE (repeatable), applied over the source's
    /// defaults (e.g. `max.partition.fetch.bytes=8388608`, or security settings).
    #[arg(long = "kafka-config", value_name = "KEY=VALUE")]
    pub kafka_config: Vec<String>,
    /// Partition ranges read from the broker ahead of their batch at once, each then
    /// counted map-side as it arrives (0: each batch reads its ranges when it runs)
    /// [default: workers, at least 2].
    #[arg(long, value_name = "BLOCKS")]
    pub prefetch_blocks_max: Option<usize>,
}

/// `--kafka-config KEY=VALUE` flags into the source's extra librdkafka settings.
fn client_settings(flags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    flags
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => bail!("--kafka-config takes KEY=VALUE, not {kv:?}"),
        })
        .collect()
}

/// How `ember gen --kafka` produces.
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerArgs {
    /// Workload lines per Kafka record, joined by '\n' (record j holds lines j*L .. j*L+L-1
    /// and goes to partition j mod P). 1 (the default) is one line per record. Brokers that
    /// store each record separately (tansu on sqlite) ingest and serve far more lines per
    /// second with more lines per record; `ember run wordcount` splits records into lines,
    /// so the counts are the same (its --lines then counts records, which is what it counts
    /// for a Kafka source).
    #[arg(long, default_value_t = 1, requires = "kafka", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub lines_per_record: u32,
    /// A librdkafka producer property, KEY=VALUE (repeatable), applied over the defaults
    /// (idempotent, acks=all, linger.ms=20, batch.num.messages=10000, batch.size=1000000).
    #[arg(long = "producer-config", value_name = "KEY=VALUE", requires = "kafka")]
    pub producer_config: Vec<String>,
}

/// The producer's settings: ours, then `--producer-config` over them.
fn producer_config(bootstrap: &str, args: &ProducerArgs) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "120000");
    for kv in &args.producer_config {
        let Some((key, value)) = kv.split_once('=') else {
            bail!("--producer-config takes KEY=VALUE, not {kv:?}");
        };
        config.set(key.trim(), value.trim());
    }
    Ok(config)
}

/// `ember gen --kafka`: produces `lines` workload lines into `topic` (created with
/// `partitions` partitions if missing), `lines_per_record` lines per record, record j into
/// partition j mod P.
pub fn produce(
    target: &str,
    partitions: u32,
    producer_args: &ProducerArgs,
    workload: &Workload,
    lines: u64,
    config: StreamConfig,
) -> anyhow::Result<ExitCode> {
    let (bootstrap, topic) = parse_target(target)?;
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .with_context(|| format!("creating a Kafka admin client for {bootstrap}"))?;
    let created = runtime.block_on(admin.create_topics(
        &[NewTopic::new(
            &topic,
            i32::try_from(partitions)?,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ));
    match created {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, e)) => bail!("cannot create topic {t} at {bootstrap}: {e}"),
                }
            }
        }
        Err(e) => bail!("cannot reach Kafka at {bootstrap} to create topic {topic}: {e}"),
    }
    let producer: FutureProducer = producer_config(&bootstrap, producer_args)?
        .create()
        .with_context(|| format!("creating a Kafka producer for {bootstrap}"))?;
    let per_record = u64::from(producer_args.lines_per_record.max(1));
    let mut line_no: u64 = 0;
    let mut out = RecordWriter {
        producer: &producer,
        topic: &topic,
        bootstrap: &bootstrap,
        partitions: u64::from(partitions.max(1)),
        records: 0,
        pending: std::collections::VecDeque::new(),
    };
    runtime.block_on(async {
        let mut payload: Vec<u8> = Vec::new();
        let mut in_payload = 0u64;
        for chunk in workload.stream(0..lines, config) {
            for line in chunk
                .bytes()
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                if in_payload > 0 {
                    payload.push(b'\n');
                }
                payload.extend_from_slice(line);
                in_payload += 1;
                line_no += 1;
                if in_payload == per_record {
                    out.send(&payload).await?;
                    payload.clear();
                    in_payload = 0;
                }
            }
        }
        if in_payload > 0 {
            out.send(&payload).await?; // the last, partial record
        }
        out.drain().await
    })?;
    let record_no = out.records;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "GENSTATS {}",
        serde_json::json!({"lines": line_no, "records": record_no,
            "lines_per_record": per_record, "topic": topic, "partitions": partitions,
            "seconds": secs, "lines_per_s": line_no as f64 / secs.max(1e-9)})
    );
    Ok(ExitCode::SUCCESS)
}

/// Outstanding acknowledgements [`RecordWriter`] allows before it waits for the oldest:
/// memory stays bounded however long the workload is.
const MAX_PENDING_RECORDS: usize = 50_000;

/// `ember gen --kafka`'s producing side: record j goes to partition j mod P, at most
/// [`MAX_PENDING_RECORDS`] unacknowledged at a time.
struct RecordWriter<'a> {
    producer: &'a FutureProducer,
    topic: &'a str,
    bootstrap: &'a str,
    partitions: u64,
    /// Records handed to the producer so far (the next record's number).
    records: u64,
    pending: std::collections::VecDeque<rdkafka::producer::DeliveryFuture>,
}

impl RecordWriter<'_> {
    /// Hands one record to the producer, waiting for acknowledgements while its queue is
    /// full or too many are outstanding.
    async fn send(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let partition = i32::try_from(self.records % self.partitions)?;
        let mut record = FutureRecord::<(), [u8]>::to(self.topic)
            .partition(partition)
            .payload(payload);
        loop {
            if self.pending.len() >= MAX_PENDING_RECORDS {
                ack(self.pending.pop_front(), self.bootstrap).await?;
            }
            match self.producer.send_result(record) {
                Ok(d) => {
                    self.pending.push_back(d);
                    self.records += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if self.pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        ack(self.pending.pop_front(), self.bootstrap).await?;
                    }
                }
                Err((e, _)) => bail!(
                    "cannot produce to {} at {}: {e}",
                    self.topic,
                    self.bootstrap
                ),
            }
        }
    }

    /// Waits for every outstanding acknowledgement.
    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(d) = self.pending.pop_front() {
            ack(Some(d), self.bootstrap).await?;
        }
        Ok(())
    }
}

async fn ack(d: Option<rdkafka::producer::DeliveryFuture>, bootstrap: &str) -> anyhow::Result<()> {
    match d {
        None => Ok(()),
        Some(d) => match d.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => bail!("a record was not acknowledged by {bootstrap}: {e}"),
            Err(_) => bail!("the producer was dropped"),
        },
    }
}

/// The word count's settings that `run wordcount` passes on.
pub struct Run {
    pub source: String,
    pub kafka: KafkaArgs,
    pub lines: u64,
    pub out: PathBuf,
    pub config: Config,
    pub timeout: Duration,
}

/// Stops gracefully once the completed batches reach `lines` offsets in total.
struct UntilOffsets {
    offsets: engine::source::kafka::KafkaOffsets,
    done: Mutex<BTreeMap<i32, i64>>,
    lines: u64,
    stop: engine::StopHandle,
    commit: bool,
}

impl StreamingListener for UntilOffsets {
    fn on_batch_completed(&self, batch: &BatchInfo) {
        if self.commit
            && let Err(e) = self.offsets.commit(batch.batch_time)
        {
            tracing::warn!(error = %e, "offset commit failed (the sink's stored offsets are what counts)");
        }
        let Some(ranges) = self.offsets.offset_ranges(batch.batch_time) else {
            return;
        };
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        for r in ranges {
            let at = done.entry(r.partition).or_insert(0);
            *at = (*at).max(r.until);
        }
        let total: i64 = done.values().sum();
        if u64::try_from(total).unwrap_or(0) >= self.lines {
            self.stop.request_stop(true);
        }
    }
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

fn strip_params(url: &str, names: &[&str]) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !names.iter().any(|n| kv.split('=').next() == Some(*n)))
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

enum Output {
    Postgres {
        sink: Arc<PostgresSink>,
        connection: String,
        table: String,
    },
    Files(Arc<FileSink>),
}

/// The word count over Kafka records, in assign and in group mode: a record holds one line,
/// or several joined by '\n' (`ember gen --lines-per-record`), so records are split into
/// lines, then words.
fn word_counts(records: &engine::DStream<Str>) -> engine::DStream<(Str, u64)> {
    records
        .flat_map(|record: Str| record.split('\n').flat_map(|line| line.split(' ')))
        .map(|word| (word, 1u64))
        .reduce_by_key(|a, b| a + b)
}

/// The engine settings of a Kafka run: the word count's, and `--prefetch-blocks-max`.
fn engine_config(run: &Run) -> Config {
    let mut config = run.config.clone();
    if let Some(n) = run.kafka.prefetch_blocks_max {
        config.direct_prefetch_blocks_max = n;
    }
    config
}

/// `ember run wordcount --source kafka://...`.
pub fn wordcount(run: Run) -> anyhow::Result<ExitCode> {
    if let Some(group) = source_group(&run.source)? {
        return wordcount_group(run, group);
    }
    let (bootstrap, topic) = parse_target(&run.source)?;
    let sink_url = run
        .kafka
        .sink
        .clone()
        .context("--sink postgres://... or file://DIR is needed with a kafka:// source")?;
    let interval_ms = run.config.batch_interval_ms;
    let mut options = KafkaOptions::new(bootstrap, topic.clone());
    options.max_rate_per_partition = Some(run.kafka.max_rate_per_partition);
    options.max_bytes_per_partition = Some(run.kafka.max_bytes_per_partition).filter(|&b| b > 0);
    options.group_id = run.kafka.group_id.clone();
    options.client_settings = client_settings(&run.kafka.kafka_config)?;
    options.starting_offsets = match run.kafka.starting_offsets.as_str() {
        "earliest" => StartingOffsets::Earliest,
        "latest" => StartingOffsets::Latest,
        "committed" => StartingOffsets::Committed,
        other => bail!("--starting-offsets must be earliest, latest or committed, not {other:?}"),
    };
    let pipeline =
        query_param(&sink_url, "pipeline").unwrap_or_else(|| format!("wordcount-{topic}"));
    let (output, progress) =
        if sink_url.starts_with("postgres://") || sink_url.starts_with("postgresql://") {
            let table = query_param(&sink_url, "table").unwrap_or_else(|| "word_counts".to_owned());
            let connection = strip_params(&sink_url, &["table", "pipeline"]);
            let sink = Arc::new(
                PostgresSink::connect(PostgresOptions::new(connection.clone(), table.clone()))
                    .context("opening the PostgreSQL sink")?,
            );
            let progress = sink.progress(&pipeline)?;
            if progress == Progress::Empty {
                let stored = sink.stored_offsets(&pipeline, &topic, None)?;
                if !stored.is_empty() {
                    bail!(
                        "pipeline {pipeline:?} was written by a consumer group (its offsets are in \
                         ember_offsets: {stored:?}); run it with --source kafka://...?group=NAME, \
                         or name another pipeline (&pipeline=...)"
                    );
                }
            }
            (
                Output::Postgres {
                    sink,
                    connection,
                    table,
                },
                progress,
            )
        } else if let Some(dir) = sink_url.strip_prefix("file://") {
            let sink = Arc::new(FileSink::new(strip_params(dir, &["pipeline"]))?);
            let progress = sink.progress()?;
            (Output::Files(sink), progress)
        } else {
            bail!("--sink must be postgres://... or file://DIR, not {sink_url:?}");
        };
    tracing::info!(?progress, "progress stored in the sink");
    let resume = progress.resume_offsets();
    if !resume.is_empty() {
        options.starting_offsets = StartingOffsets::Explicit(resume.clone());
    }

    let ctx = StreamingContext::new(engine_config(&run)).context("invalid settings")?;
    let (lines, offsets) = ctx.kafka_stream(options)?;
    let counts = word_counts(&lines);
    match &output {
        Output::Postgres { sink, .. } => {
            counts.write_to(&pipeline, Arc::clone(sink), Some(offsets.clone()))
        }
        Output::Files(sink) => counts.write_to(&pipeline, Arc::clone(sink), Some(offsets.clone())),
    }

    let mut restore = None;
    match &progress {
        Progress::Partial {
            time,
            partitions,
            committed,
            offsets: ranges,
        } => {
            if *partitions != 0 && *partitions != run.config.partitions {
                bail!(
                    "batch {time} was committed for {committed} of {partitions} partitions; restart with --partitions {partitions} to finish it"
                );
            }
            // Re-run the partly written batch first, at its time, over exactly its ranges.
            let stream = lines
                .input_stream_id()
                .context("the Kafka stream has no input id")?;
            let alloc = offsets.allocation(stream, *time, ranges)?;
            restore = Some(Restore {
                zero: BatchTime::from_millis(time.as_millis().saturating_sub(interval_ms)),
                scheduler: RestoredState {
                    last_generated: Some(*time),
                    pending: vec![alloc],
                    unallocated: Vec::new(),
                    remembered: Vec::new(),
                },
                ..Restore::default()
            });
        }
        Progress::Complete { time, .. } => {
            // New batch times must lie after every stored key (a clock that went back
            // would otherwise make new batches look like committed ones).
            if engine::clock::now_epoch_ms() <= time.as_millis() {
                restore = Some(Restore {
                    zero: *time,
                    ..Restore::default()
                });
            }
        }
        Progress::Empty => {}
    }
    run_until(&ctx, &offsets, &run, restore, resume)?;

    // --out: the final counts, sorted by word.
    let rows: Vec<(String, i64)> = match &output {
        Output::Postgres {
            connection, table, ..
        } => table_rows(connection, table)?,
        Output::Files(sink) => sum_batches(sink.dir())?,
    };
    write_out(rows, &run.out)?;
    Ok(ExitCode::SUCCESS)
}

/// Every `(key, value)` row of `table`.
fn table_rows(connection: &str, table: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(connection, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let rows = client
            .query(&format!("SELECT key, value FROM {table}"), &[])
            .await?;
        anyhow::Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
}

/// `key<TAB>value` lines sorted by key, written atomically.
fn write_out(mut rows: Vec<(String, i64)>, out: &std::path::Path) -> anyhow::Result<()> {
    rows.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out_bytes = Vec::new();
    for (k, v) in rows {
        out_bytes.extend_from_slice(format!("{k}\t{v}\n").as_bytes());
    }
    crate::wordcount::write_atomically(out, &out_bytes)
}

/// Stops gracefully once the offsets stored for the whole group reach `lines` (every
/// member writes to the same `ember_offsets` rows, so each sees the group's progress).
struct UntilGroupOffsets {
    sink: Arc<PostgresSink>,
    pipeline: String,
    topic: String,
    lines: u64,
    stop: engine::StopHandle,
    offsets: engine::source::kafka::KafkaOffsets,
    commit: bool,
}

impl StreamingListener for UntilGroupOffsets {
    fn on_batch_completed(&self, batch: &BatchInfo) {
        if self.commit
            && let Err(e) = self.offsets.commit(batch.batch_time)
        {
            tracing::warn!(error = %e, "offset commit failed (the sink's stored offsets are what counts)");
        }
        match self.sink.stored_offsets(&self.pipeline, &self.topic, None) {
            Ok(stored) => {
                let total: i64 = stored.values().sum();
                if u64::try_from(total).unwrap_or(0) >= self.lines {
                    self.stop.request_stop(true);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the group's stored offsets"),
        }
    }
}

/// `ember run wordcount --source kafka://HOST:PORT/topic?group=NAME --sink postgres://...`:
/// the word count as one member of consumer group NAME. The source reads only the
/// partitions the group assigns to this process, each from the offsets stored in
/// PostgreSQL (`ember_offsets`, shared by every member of the pipeline), and the sink writes
/// each batch in one transaction fenced on those offsets, so a batch over a partition that
/// moved to another member meanwhile fails instead of counting twice. The run ends when the
/// stored offsets of the whole topic reach --lines; then this process leaves the group.
fn wordcount_group(run: Run, group: String) -> anyhow::Result<ExitCode> {
    let (bootstrap, topic) = parse_target(&run.source)?;
    if let Some(id) = &run.kafka.group_id
        && *id != group
    {
        bail!("--group-id {id:?} and the source's ?group={group} disagree: give one");
    }
    let sink_url = run.kafka.sink.clone().context(
        "--sink postgres://... is needed with a kafka:// source in a group (?group=NAME)",
    )?;
    if !(sink_url.starts_with("postgres://") || sink_url.starts_with("postgresql://")) {
        bail!(
            "--sink {sink_url:?}: a consumer-group source (?group={group}) needs the PostgreSQL \
             sink, whose writes are fenced on the stored offsets (a file sink cannot refuse a \
             batch over a partition that moved to another member)"
        );
    }
    let pipeline =
        query_param(&sink_url, "pipeline").unwrap_or_else(|| format!("wordcount-{topic}"));
    let table = query_param(&sink_url, "table").unwrap_or_else(|| "word_counts".to_owned());
    let connection = strip_params(&sink_url, &["table", "pipeline"]);
    let mut sink_options = PostgresOptions::new(connection.clone(), table.clone());
    sink_options.fenced = true;
    let sink =
        Arc::new(PostgresSink::connect(sink_options).context("opening the PostgreSQL sink")?);
    if sink.progress(&pipeline)? != Progress::Empty {
        bail!(
            "pipeline {pipeline:?} was written without a group (its progress is in \
             ember_batches); run it without ?group=, or name another pipeline (&pipeline=...)"
        );
    }

    let mut options = KafkaOptions::new(bootstrap, topic.clone());
    options.max_rate_per_partition = Some(run.kafka.max_rate_per_partition);
    options.max_bytes_per_partition = Some(run.kafka.max_bytes_per_partition).filter(|&b| b > 0);
    options.group_id = Some(group);
    options.subscribe = true;
    options.client_settings = client_settings(&run.kafka.kafka_config)?;
    options.stored_offsets = Some(sink.stored_offsets_for(&pipeline));
    options.starting_offsets = match run.kafka.starting_offsets.as_str() {
        "earliest" => StartingOffsets::Earliest,
        "latest" => StartingOffsets::Latest,
        "committed" => StartingOffsets::Committed,
        other => bail!("--starting-offsets must be earliest, latest or committed, not {other:?}"),
    };

    let ctx = StreamingContext::new(engine_config(&run)).context("invalid settings")?;
    let (lines, offsets) = ctx.kafka_stream(options)?;
    word_counts(&lines).write_to(&pipeline, Arc::clone(&sink), Some(offsets.clone()));
    ctx.add_listener(Arc::new(UntilGroupOffsets {
        sink: Arc::clone(&sink),
        pipeline: pipeline.clone(),
        topic: topic.clone(),
        lines: run.lines,
        stop: ctx.stop_handle(),
        offsets: offsets.clone(),
        commit: run.kafka.commit_offsets,
    }));
    ctx.stop_on_signals()?;
    let started = Instant::now();
    ctx.start()?;
    let stopped = ctx.await_termination_timeout(Some(run.timeout));
    if matches!(stopped, Ok(false)) {
        ctx.stop(false).ok();
        offsets.leave_group();
        bail!(
            "timed out after {:?} before the group's stored offsets reached {}",
            run.timeout,
            run.lines
        );
    }
    offsets.leave_group();
    stopped.context("the pipeline failed")?;
    let secs = started.elapsed().as_secs_f64();
    let read = offsets.records_read();
    println!(
        "METRICS {}",
        serde_json::json!({"records_read": read, "seconds": secs,
            "lines_per_s": read as f64 / secs.max(1e-9),
            "blocks_prefetched": offsets.blocks_prefetched(),
            "stored_offsets": sink.stored_offsets(&pipeline, &topic, None)?})
    );
    write_out(table_rows(&connection, &table)?, &run.out)?;
    Ok(ExitCode::SUCCESS)
}

/// The sum of `(word,count)` lines over every complete batch directory.
fn sum_batches(dir: &std::path::Path) -> anyhow::Result<Vec<(String, i64)>> {
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let batch = entry?.path();
        if !batch.join("_SUCCESS").exists() {
            continue;
        }
        for part in std::fs::read_dir(&batch)? {
            let part = part?.path();
            if !part
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
            {
                continue;
            }
            let text = std::fs::read_to_string(&part)
                .with_context(|| format!("reading {}", part.display()))?;
            for line in text.lines() {
                let inner = line.strip_prefix('(').and_then(|l| l.strip_suffix(')'));
                let Some((word, count)) = inner.and_then(|l| l.rsplit_once(',')) else {
                    bail!("{}: not a (word,count) line: {line:?}", part.display());
                };
                *totals.entry(word.to_owned()).or_insert(0) += count.parse::<i64>()?;
            }
        }
    }
    Ok(totals.into_iter().collect())
}

fn run_until(
    ctx: &StreamingContext,
    offsets: &engine::source::kafka::KafkaOffsets,
    run: &Run,
    restore: Option<Restore>,
    resume: BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    let already: i64 = resume.values().sum();
    ctx.add_listener(Arc::new(UntilOffsets {
        offsets: offsets.clone(),
        done: Mutex::new(resume),
        lines: run.lines,
        stop: ctx.stop_handle(),
        commit: run.kafka.commit_offsets,
    }));
    ctx.stop_on_signals()?;
    let started = Instant::now();
    if u64::try_from(already).unwrap_or(0) >= run.lines && restore.is_none() {
        eprintln!(
            "ember: the sink already holds {already} offsets (>= --lines {})",
            run.lines
        );
        return Ok(());
    }
    match restore {
        Some(r) => ctx.start_from(r)?,
        None => ctx.start()?,
    }
    let stopped = ctx.await_termination_timeout(Some(run.timeout));
    if matches!(stopped, Ok(false)) {
        ctx.stop(false).ok();
        bail!(
            "timed out after {:?} before {} offsets were processed",
            run.timeout,
            run.lines
        );
    }
    stopped.context("the pipeline failed")?;
    let secs = started.elapsed().as_secs_f64();
    let read = offsets.records_read();
    println!(
        "METRICS {}",
        serde_json::json!({"records_read": read, "seconds": secs,
            "lines_per_s": read as f64 / secs.max(1e-9), "positions": offsets.positions(),
            "blocks_prefetched": offsets.blocks_prefetched()})
    );
    Ok(())
}
