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
}

impl PostgresOptions {
    /// Running totals (`Upsert::Add`) into `table`, retrying a lost connection for 60 s.
    pub fn new(connection: impl Into<String>, table: impl Into<String>) -> Self {
        PostgresOptions {
            connection: connection.into(),
            table: table.into(),
            upsert: Upsert::Add,
            retry_timeout: Duration::from_secs(60),
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
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS ember_batches (
                pipeline text NOT NULL, batch_time_ms bigint NOT NULL, partition integer NOT NULL,
                partitions integer NOT NULL, offsets text NOT NULL, records bigint NOT NULL,
                committed_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (pipeline, batch_time_ms, partition));
             CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY, value bigint NOT NULL);",
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
            return (Err(format!("{address}: {error}")), client.take());
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
