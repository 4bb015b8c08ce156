//! The exactly-once PostgreSQL sink: one transaction per batch partition, keyed.
//!
//! Each partition of a batch is written in one transaction that
//! 1. inserts its key `(pipeline, batch time, partition)` into `ember_batches`, together with
//!    the batch's partition count and the source offset ranges the batch covers; if the key is
//!    already there the partition was committed by an earlier run of the batch, and the
//!    transaction writes nothing else (the re-run is skipped);
//! 2. upserts the partition's `(key, value)` records into the results table, adding to the
//!    stored value (running totals, [`Upsert::Add`]) or replacing it ([`Upsert::Replace`]);
//! 3. commits. Partitions commit independently and in parallel (one connection each).
//!
//! So the results table and the offsets it reflects change together, exactly once per batch
//! partition. Batches run one at a time, so at most the newest batch can be partly committed
//! after a crash. [`PostgresSink::progress`] reads that back: the offsets of the newest
//! complete batch (where the source resumes) or the newest partial batch (which must re-run
//! first, at its original time and over exactly its recorded ranges, so the committed
//! partitions find their keys). The database alone is enough to resume.
//!
//! ```text
//! ember_batches(pipeline text, batch_time_ms bigint, partition int, partitions int,
//!               offsets text  -- JSON array of {topic, partition, from, until}
//!               records bigint, committed_at timestamptz,
//!               PRIMARY KEY (pipeline, batch_time_ms, partition))
//! <table>(key text PRIMARY KEY, value bigint)
//! ```
//!
//! # Fenced writes (consumer groups)
//!
//! With [`PostgresOptions::fenced`] (what a source in a consumer group needs), a batch is
//! written in **one** transaction for all its partitions, and the transaction is fenced on
//! the offsets stored per Kafka partition:
//!
//! ```text
//! ember_offsets(pipeline text, topic text, partition int,
//!               from_offset bigint, until_offset bigint,  -- the last range written
//!               batch_time_ms bigint, committed_at timestamptz,
//!               PRIMARY KEY (pipeline, topic, partition))
//! ```
//!
//! For each non-empty range `[from, until)` of the batch, the transaction locks the
//! partition's row (`SELECT ... FOR UPDATE`; a missing row counts as ending at `from`) and
//!
//! | stored row | verdict |
//! |---|---|
//! | ends at `from` | fresh: the row moves to `[from, until)` |
//! | is exactly `[from, until)` | already written (the same records, by a re-run or another member) |
//! | anything else | **fenced**: another consumer of the group wrote this partition past or before `from` |
//!
//! All ranges fresh: the results are upserted and the transaction commits. All already
//! written: nothing is written (a re-run). Any fenced range, or a mix: the transaction rolls
//! back and the batch fails with an error naming the topic, partition and offsets. So a
//! zombie batch (planned over a partition that was revoked meanwhile) cannot count a range
//! twice or skip one: each partition's offsets in `ember_offsets` advance only contiguously,
//! and the results change in the same transaction. [`PostgresSink::stored_offsets`] is where
//! a newly assigned partition resumes. Fenced pipelines write no `ember_batches` rows;
//! [`PostgresSink::progress`] is for assign mode.
//!
//! A lost connection (PostgreSQL restarting) is retried with back-off for up to
//! `retry_timeout`, reconnecting; a re-tried transaction is safe because of its key. SQL
//! errors that no retry can fix (a wrong table layout, permissions) fail the batch at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

pub use super::Progress;
use super::{BatchOutput, Delivery, Sink};
use crate::dstream::BatchData;
use crate::dstream::node::lock;
use crate::error::{Error, Result};
use crate::source::kafka::OffsetRange;
use crate::text::Str;
use crate::time::BatchTime;

/// How a record's value meets the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    /// `value = stored + new` (running totals from per-batch counts).
    Add,
    /// `value = new`.
    Replace,
}

/// A record the sink can store: a text key and a 64-bit value.
pub trait PostgresRow {
    /// The key.
    fn key(&self) -> &str;
    /// The value.
    fn value(&self) -> i64;
}

impl PostgresRow for (Str, u64) {
    fn key(&self) -> &str {
        &self.0
    }
    fn value(&self) -> i64 {
        i64::try_from(self.1).unwrap_or(i64::MAX)
    }
}

impl PostgresRow for (String, u64) {
    fn key(&self) -> &str {
        &self.0
    }
    fn value(&self) -> i64 {
        i64::try_from(self.1).unwrap_or(i64::MAX)
    }
}

impl PostgresRow for (String, i64) {
    fn key(&self) -> &str {
        &self.0
    }
    fn value(&self) -> i64 {
        self.1
    }
}

/// The sink's settings.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// A tokio-postgres connection string (`postgres://user@host:port/db` or key=value).
    pub connection: String,
    /// The results table (created if missing: `key text primary key, value bigint`).
    pub table: String,
    /// How values meet stored ones.
    pub upsert: Upsert,
    /// How long to keep retrying a lost connection before the batch fails.
    pub retry_timeout: Duration,
    /// One transaction per batch, fenced on the offsets stored per Kafka partition (see
    /// "Fenced writes" in the module docs): for sources in a consumer group.
    pub fenced: bool,
}

impl PostgresOptions {
    /// Running totals (`Upsert::Add`) into `table`, retrying a lost connection for 60 s.
    pub fn new(connection: impl Into<String>, table: impl Into<String>) -> Self {
        PostgresOptions {
            connection: connection.into(),
            table: table.into(),
            upsert: Upsert::Add,
            retry_timeout: Duration::from_secs(60),
            fenced: false,
        }
    }
}

/// The exactly-once PostgreSQL sink (see the module docs).
pub struct PostgresSink {
    options: PostgresOptions,
    /// `host:port/db`, for errors (never the password).
    address: String,
    runtime: tokio::runtime::Runtime,
    /// Idle connections.
    clients: Mutex<Vec<Client>>,
    upsert_sql: String,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("address", &self.address)
            .field("table", &self.options.table)
            .finish_non_exhaustive()
    }
}

fn sink_error(address: &str, message: impl std::fmt::Display) -> Error {
    Error::Sink {
        sink: format!("postgres {address}"),
        message: message.to_string(),
    }
}

type TxFuture<'a, R> = std::pin::Pin<
    Box<dyn Future<Output = std::result::Result<R, tokio_postgres::Error>> + Send + 'a>,
>;

/// Pins a closure's signature to "borrows the client for as long as its future lives".
fn tx_fn<R, F>(f: F) -> F
where
    F: for<'a> Fn(&'a mut Client) -> TxFuture<'a, R>,
{
    f
}

/// The error with the server's SQLSTATE and message (tokio-postgres shows only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Whether another attempt (after reconnecting) can succeed.
fn transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // I/O, closed connection, timeout
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                ]
                .contains(code)
        }
    }
}

fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

impl PostgresSink {
    /// Connects (retrying for `retry_timeout`) and creates the tables if missing.
    pub fn connect(options: PostgresOptions) -> Result<Self> {
        if !valid_identifier(&options.table) {
            return Err(Error::Config {
                setting: "table",
                message: format!(
                    "{:?} is not a plain SQL identifier (letters, digits, _; at most 63)",
                    options.table
                ),
            });
        }
        let config: tokio_postgres::Config =
            options.connection.parse().map_err(|e| Error::Config {
                setting: "connection",
                message: format!("not a PostgreSQL connection string: {e}"),
            })?;
        let host = config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".to_owned());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let address = format!(
            "{host}:{port}/{}",
            config.get_dbname().unwrap_or("(default db)")
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ember-postgres")
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime {
                what: "the PostgreSQL sink's runtime",
                source,
            })?;
        let table = &options.table;
        let upsert_sql = format!(
            "INSERT INTO {table} (key, value) SELECT k, v FROM unnest($1::text[], $2::bigint[]) AS u(k, v) \
             ON CONFLICT (key) DO UPDATE SET value = {}",
            match options.upsert {
                Upsert::Add => format!("{table}.value + EXCLUDED.value"),
                Upsert::Replace => "EXCLUDED.value".to_owned(),
            }
        );
        let sink = PostgresSink {
            options,
            address,
            runtime,
            clients: Mutex::default(),
            upsert_sql,
        };
        // Serialised by an advisory lock: concurrent `CREATE TABLE IF NOT EXISTS` (several
        // members of a group starting at once) can otherwise fail on pg_type's unique index.
        let ddl = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7365626572);
             CREATE TABLE IF NOT EXISTS ember_batches (
                pipeline text NOT NULL, batch_time_ms bigint NOT NULL, partition integer NOT NULL,
                partitions integer NOT NULL, offsets text NOT NULL, records bigint NOT NULL,
                committed_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (pipeline, batch_time_ms, partition));
             CREATE TABLE IF NOT EXISTS ember_offsets (
                pipeline text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
                from_offset bigint NOT NULL, until_offset bigint NOT NULL,
                batch_time_ms bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (pipeline, topic, partition));
             CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY, value bigint NOT NULL);
             COMMIT;",
            table = sink.options.table
        );
        sink.with_client(|client| {
            let ddl = ddl.clone();
            Box::pin(async move { client.batch_execute(&ddl).await })
        })
        .map_err(|e| {
            sink_error(
                &sink.address,
                format!("cannot create the sink's tables: {e}"),
            )
        })?;
        Ok(sink)
    }

    /// Where it writes (`host:port/db`).
    pub fn address(&self) -> &str {
        &self.address
    }

    async fn connect_once(connection: &str) -> std::result::Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(connection, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Runs `f` with a connection, reconnecting and retrying transient failures until
    /// `retry_timeout`.
    fn with_client<R: Send + 'static>(
        &self,
        f: impl Fn(
            &mut Client,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = std::result::Result<R, tokio_postgres::Error>> + Send + '_>,
        >,
    ) -> std::result::Result<R, String> {
        let pooled = lock(&self.clients).pop();
        self.runtime.block_on(async {
            let mut client = pooled;
            let (r, c) = retrying(
                &self.options.connection,
                &self.address,
                self.options.retry_timeout,
                &mut client,
                &f,
            )
            .await;
            if let Some(c) = c {
                lock(&self.clients).push(c);
            }
            r
        })
    }

    /// The next offset of each partition of `topic` that `pipeline` wrote in fenced mode
    /// (`ember_offsets`), optionally only `partitions`.
    pub fn stored_offsets(
        &self,
        pipeline: &str,
        topic: &str,
        partitions: Option<&[i32]>,
    ) -> Result<std::collections::BTreeMap<i32, i64>> {
        let (pipeline, topic) = (pipeline.to_owned(), topic.to_owned());
        let rows = self
            .with_client(move |client| {
                let (pipeline, topic) = (pipeline.clone(), topic.clone());
                Box::pin(async move {
                    client
                        .query(
                            "SELECT partition, until_offset FROM ember_offsets \
                             WHERE pipeline = $1 AND topic = $2",
                            &[&pipeline, &topic],
                        )
                        .await
                })
            })
            .map_err(|e| {
                sink_error(
                    &self.address,
                    format!("cannot read the stored offsets (ember_offsets): {e}"),
                )
            })?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
            .filter(|(p, _)| partitions.is_none_or(|ps| ps.contains(p)))
            .collect())
    }

    /// [`PostgresSink::stored_offsets`] of `pipeline` as the lookup a subscribed Kafka
    /// source resumes its newly assigned partitions from.
    pub fn stored_offsets_for(
        self: &Arc<Self>,
        pipeline: &str,
    ) -> crate::source::kafka::StoredOffsets {
        let sink = Arc::clone(self);
        let pipeline = pipeline.to_owned();
        crate::source::kafka::StoredOffsets(Arc::new(move |topic, partitions| {
            sink.stored_offsets(&pipeline, topic, Some(partitions))
                .map_err(|e| e.to_string())
        }))
    }

    /// Writes a batch in one transaction fenced on `ember_offsets` (see the module docs).
    fn write_fenced<T: PostgresRow>(
        &self,
        batch: &BatchOutput,
        data: &BatchData<T>,
    ) -> std::result::Result<(), String> {
        let mut ranges: Vec<OffsetRange> = batch
            .offsets
            .iter()
            .filter(|r| r.until > r.from)
            .cloned()
            .collect();
        if ranges.is_empty() {
            if data.is_empty() {
                return Ok(());
            }
            // Without its offsets a batch cannot be fenced: refuse rather than risk a
            // double count.
            return Err(format!(
                "batch {} has results but no recorded offset ranges: a fenced write needs them",
                batch.time
            ));
        }
        // One lock order for every writer (no deadlocks between members).
        ranges.sort();
        let mut rows: Vec<(&str, i64)> = data.iter().map(|r| (r.key(), r.value())).collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let keys: Arc<Vec<String>> = Arc::new(rows.iter().map(|r| r.0.to_owned()).collect());
        let values: Arc<Vec<i64>> = Arc::new(rows.iter().map(|r| r.1).collect());
        let ranges = Arc::new(ranges);
        let pipeline = Arc::new(batch.pipeline.clone());
        let sql = Arc::new(self.upsert_sql.clone());
        let time_ms = i64::try_from(batch.time.as_millis()).unwrap_or(i64::MAX);
        let outcome = self.with_client(move |c| {
            let (keys, values, ranges, pipeline, sql) = (
                Arc::clone(&keys),
                Arc::clone(&values),
                Arc::clone(&ranges),
                Arc::clone(&pipeline),
                Arc::clone(&sql),
            );
            Box::pin(async move {
                let tx = c.transaction().await?;
                let (mut fresh, mut already) = (0usize, 0usize);
                for r in ranges.iter() {
                    // A missing row counts as ending at `from`; two members creating it
                    // at once serialise on the primary key.
                    tx.execute(
                        "INSERT INTO ember_offsets (pipeline, topic, partition, from_offset, \
                         until_offset, batch_time_ms) VALUES ($1, $2, $3, $4, $4, -1) \
                         ON CONFLICT DO NOTHING",
                        &[&*pipeline, &r.topic, &r.partition, &r.from],
                    )
                    .await?;
                    let row = tx
                        .query_one(
                            "SELECT from_offset, until_offset, batch_time_ms FROM ember_offsets \
                             WHERE pipeline = $1 AND topic = $2 AND partition = $3 FOR UPDATE",
                            &[&*pipeline, &r.topic, &r.partition],
                        )
                        .await?;
                    let (from, until, by): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                    if until == r.from {
                        tx.execute(
                            "UPDATE ember_offsets SET from_offset = $4, until_offset = $5, \
                             batch_time_ms = $6, committed_at = now() \
                             WHERE pipeline = $1 AND topic = $2 AND partition = $3",
                            &[
                                &*pipeline,
                                &r.topic,
                                &r.partition,
                                &r.from,
                                &r.until,
                                &time_ms,
                            ],
                        )
                        .await?;
                        fresh += 1;
                    } else if from == r.from && until == r.until {
                        already += 1;
                    } else {
                        tx.rollback().await?;
                        return Ok(Fenced::Refused {
                            range: r.clone(),
                            stored_from: from,
                            stored_until: until,
                            stored_by_ms: by,
                        });
                    }
                }
                if already > 0 && fresh > 0 {
                    tx.rollback().await?;
                    return Ok(Fenced::Mixed { fresh, already });
                }
                if fresh == 0 {
                    tx.rollback().await?;
                    return Ok(Fenced::AlreadyWritten);
                }
                if !keys.is_empty() {
                    tx.execute(sql.as_str(), &[&*keys, &*values]).await?;
                }
                tx.commit().await?;
                Ok(Fenced::Written)
            }) as TxFuture<'_, Fenced>
        });
        match outcome {
            Ok(Fenced::Written) => Ok(()),
            Ok(Fenced::AlreadyWritten) => {
                tracing::info!(batch = %batch.time, "every range of the batch is already written: skipped");
                Ok(())
            }
            Ok(Fenced::Refused {
                range,
                stored_from,
                stored_until,
                stored_by_ms,
            }) => {
                tracing::error!(batch = %batch.time, topic = %range.topic, partition = range.partition, from = range.from, until = range.until, stored_from, stored_until, "fenced: another consumer wrote this partition");
                Err(format!(
                    "fenced: batch {} reads offsets {}..{} of partition {} of `{}`, but \
                     PostgreSQL holds that partition's offsets at {stored_from}..{stored_until} \
                     (written by batch {stored_by_ms} ms): another consumer of the group wrote \
                     it since this batch was planned (was the partition revoked from this \
                     process?); the batch was rolled back",
                    batch.time, range.from, range.until, range.partition, range.topic
                ))
            }
            Ok(Fenced::Mixed { fresh, already }) => Err(format!(
                "fenced: batch {} covers {already} range(s) already written by another run and \
                 {fresh} not yet written; it cannot be written in part, so it was rolled back",
                batch.time
            )),
            Err(e) => Err(e),
        }
    }

    /// What the database says about `pipeline`'s progress (see the module docs).
    pub fn progress(&self, pipeline: &str) -> Result<Progress> {
        let pipeline = pipeline.to_owned();
        let row = self
            .with_client(move |client| {
                let pipeline = pipeline.clone();
                Box::pin(async move {
                    client
                        .query_opt(
                            "SELECT batch_time_ms, count(*)::bigint, max(partitions), min(offsets) \
                             FROM ember_batches WHERE pipeline = $1 \
                             GROUP BY batch_time_ms ORDER BY batch_time_ms DESC LIMIT 1",
                            &[&pipeline],
                        )
                        .await
                })
            })
            .map_err(|e| {
                sink_error(
                    &self.address,
                    format!("cannot read the stored progress: {e}"),
                )
            })?;
        let Some(row) = row else {
            return Ok(Progress::Empty);
        };
        let time_ms: i64 = row.get(0);
        let committed: i64 = row.get(1);
        let partitions: i32 = row.get(2);
        let offsets: String = row.get(3);
        let time = BatchTime::from_millis(u64::try_from(time_ms).unwrap_or(0));
        Progress::of_newest_batch(
            time,
            &offsets,
            committed >= i64::from(partitions),
            usize::try_from(partitions).unwrap_or(0),
            usize::try_from(committed).unwrap_or(0),
        )
        .map_err(|e| {
            sink_error(
                &self.address,
                format!("ember_batches row of batch {time_ms} has unreadable offsets: {e}"),
            )
        })
    }
}

/// What a fenced transaction decided.
enum Fenced {
    Written,
    AlreadyWritten,
    Refused {
        range: OffsetRange,
        stored_from: i64,
        stored_until: i64,
        stored_by_ms: i64,
    },
    Mixed {
        fresh: usize,
        already: usize,
    },
}

type Connection = Option<Client>;

async fn retrying<R, F>(
    connection: &str,
    address: &str,
    timeout: Duration,
    client: &mut Connection,
    f: &F,
) -> (std::result::Result<R, String>, Connection)
where
    F: Fn(
        &mut Client,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = std::result::Result<R, tokio_postgres::Error>> + Send + '_>,
    >,
{
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let error = match client.as_mut().filter(|c| !c.is_closed()) {
            Some(c) => match f(c).await {
                Ok(r) => return (Ok(r), client.take()),
                Err(e) => e,
            },
            None => match PostgresSink::connect_once(connection).await {
                Ok(c) => {
                    *client = Some(c);
                    continue;
                }
                Err(e) => e,
            },
        };
        if !transient(&error) {
            return (
                Err(format!("{address}: {}", describe(&error))),
                client.take(),
            );
        }
        *client = None;
        if start.elapsed() > timeout {
            return (
                Err(format!(
                    "PostgreSQL at {address} unreachable for {:?} ({attempt} attempts): {error}",
                    start.elapsed()
                )),
                None,
            );
        }
        tracing::warn!(%address, attempt, error = %error, "PostgreSQL unavailable; retrying");
        tokio::time::sleep(Duration::from_millis((100 * u64::from(attempt)).min(2_000))).await;
    }
}

impl<T: PostgresRow + Send + Sync + 'static> Sink<T> for PostgresSink {
    fn name(&self) -> String {
        format!("postgres {} table {}", self.address, self.options.table)
    }

    fn delivery(&self) -> Delivery {
        Delivery::Transactional
    }

    fn write_batch(
        &self,
        batch: &BatchOutput,
        data: &BatchData<T>,
    ) -> std::result::Result<(), String> {
        if self.options.fenced {
            return self.write_fenced(batch, data);
        }
        if batch.covers_nothing(data) {
            return Ok(()); // nothing read, nothing to write: no key either
        }
        let partitions = data.num_partitions();
        let offsets = Arc::new(batch.offsets_json()?);
        let pipeline = Arc::new(batch.pipeline.clone());
        let time_ms = i64::try_from(batch.time.as_millis()).unwrap_or(i64::MAX);
        let sql = Arc::new(self.upsert_sql.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, part) in data.partitions().enumerate() {
            // Sorted keys: concurrent writers lock rows in one order (no deadlocks).
            let mut rows: Vec<(&str, i64)> = part.iter().map(|r| (r.key(), r.value())).collect();
            rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let keys: Arc<Vec<String>> = Arc::new(rows.iter().map(|r| r.0.to_owned()).collect());
            let values: Arc<Vec<i64>> = Arc::new(rows.iter().map(|r| r.1).collect());
            let (offsets, pipeline, sql) = (
                Arc::clone(&offsets),
                Arc::clone(&pipeline),
                Arc::clone(&sql),
            );
            let mut client = lock(&self.clients).pop();
            let connection = self.options.connection.clone();
            let address = self.address.clone();
            let timeout = self.options.retry_timeout;
            let partition = i32::try_from(i).unwrap_or(i32::MAX);
            let total = i32::try_from(partitions).unwrap_or(i32::MAX);
            tasks.spawn_on(
                async move {
                    let f = tx_fn(move |c: &mut Client| {
                        let (keys, values, offsets, pipeline, sql) = (
                            Arc::clone(&keys),
                            Arc::clone(&values),
                            Arc::clone(&offsets),
                            Arc::clone(&pipeline),
                            Arc::clone(&sql),
                        );
                        Box::pin(async move {
                            let tx = c.transaction().await?;
                            let records = i64::try_from(keys.len()).unwrap_or(i64::MAX);
                            let inserted = tx
                                .execute(
                                    "INSERT INTO ember_batches \
                                     (pipeline, batch_time_ms, partition, partitions, offsets, records) \
                                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                                    &[&*pipeline, &time_ms, &partition, &total, &*offsets, &records],
                                )
                                .await?;
                            if inserted == 0 {
                                // Committed by an earlier run of this batch.
                                tx.rollback().await?;
                                return Ok(false);
                            }
                            if !keys.is_empty() {
                                tx.execute(sql.as_str(), &[&*keys, &*values]).await?;
                            }
                            tx.commit().await?;
                            Ok(true)
                        })
                            as TxFuture<'_, bool>
                    });
                    let (r, c) = retrying(&connection, &address, timeout, &mut client, &f).await;
                    (partition, r, c)
                },
                self.runtime.handle(),
            );
        }
        let results = self.runtime.block_on(async {
            let mut out = Vec::new();
            while let Some(r) = tasks.join_next().await {
                out.push(r);
            }
            out
        });
        let mut first_error = None;
        let mut skipped = 0;
        for r in results {
            match r {
                Ok((_, Ok(written), c)) => {
                    if !written {
                        skipped += 1;
                    }
                    if let Some(c) = c {
                        lock(&self.clients).push(c);
                    }
                }
                Ok((p, Err(e), c)) => {
                    if let Some(c) = c {
                        lock(&self.clients).push(c);
                    }
                    first_error
                        .get_or_insert(format!("partition {p} of batch {}: {e}", batch.time));
                }
                Err(e) => {
                    first_error.get_or_insert(format!("a writer task failed: {e}"));
                }
            }
        }
        if skipped > 0 {
            tracing::info!(batch = %batch.time, skipped, partitions, "batch partitions already committed by an earlier run: skipped");
        }
        first_error.map_or(Ok(()), Err)
    }
}
