//! [`ObjectClient`]: the few object-store requests Ember makes (create-only put, get,
//! ranged get, list, delete), synchronous, retried with backoff within a time bound.

use std::fmt;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// How requests are retried. Every request (one attempt) is cut after
/// `attempt_timeout`; a failed attempt that may succeed when repeated (a network error, a
/// server error, a timeout) is repeated after a backoff that doubles from
/// `backoff_initial` up to `backoff_max`, until `total_max` has passed since the first
/// attempt. Then the request fails with an error that says how many attempts were made
/// over how long, and the last failure. Errors that repeating cannot fix (not found, access
/// denied, a conditional put that lost) are returned at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest one attempt may take. Default 10 s.
    pub attempt_timeout: Duration,
    /// First backoff. Default 50 ms.
    pub backoff_initial: Duration,
    /// Largest backoff. Default 2 s.
    pub backoff_max: Duration,
    /// Longest a request may take, retries included. Default 30 s.
    pub total_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            total_max: Duration::from_secs(30),
        }
    }
}

/// Requests made so far (every attempt counts), for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// PUT attempts.
    pub puts: u64,
    /// Bytes in successful PUTs.
    pub put_bytes: u64,
    /// GET attempts (whole and ranged).
    pub gets: u64,
    /// LIST attempts (each may be several pages on S3).
    pub lists: u64,
    /// DELETE attempts.
    pub deletes: u64,
    /// Attempts that failed and were repeated.
    pub retries: u64,
    /// Create-only puts that found the object already there *with the same bytes*: an
    /// earlier attempt had succeeded but its acknowledgement was lost.
    pub lost_acks_resolved: u64,
}

#[derive(Default)]
struct Counters {
    puts: AtomicU64,
    put_bytes: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    retries: AtomicU64,
    lost_acks_resolved: AtomicU64,
}

/// One prefix of one object store, with synchronous, retried requests.
///
/// The futures of `object_store` run on a runtime shared by every client in the process
/// (two worker threads named `ember-object-io`); a calling thread blocks on a channel until
/// its request is done. So the client works from plain threads, from the WAL's writer
/// thread, and from `spawn_blocking` (it never calls `block_on`, which would panic inside
/// a runtime), and dropping it never drops a runtime in an async context.
pub struct ObjectClient {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
    retry: RetryPolicy,
    counters: Arc<Counters>,
}

impl fmt::Debug for ObjectClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectClient")
            .field("location", &self.location)
            .field("retry", &self.retry)
            .finish()
    }
}

pub(crate) fn runtime() -> io::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ember-object-io")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| io::Error::other(format!("cannot start the object-store runtime: {e}")))
}

/// Runs `future` on the shared runtime and waits for it on this thread.
fn block<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .map_err(|_| io::Error::other("object-store request task ended without a result"))
}

/// Whether repeating a failed attempt can help.
fn retryable(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

/// An object-store error as an `io::Error` of the matching kind, naming the key.
fn to_io(e: object_store::Error, what: &str) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::NotImplemented { .. } | E::NotSupported { .. } => io::ErrorKind::Unsupported,
        E::InvalidPath { .. } => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

enum Failure {
    Store(object_store::Error),
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Store(e) => write!(f, "{e}"),
            Failure::Timeout(t) => write!(f, "no answer within {t:?}"),
        }
    }
}

/// Runs `attempt` until it succeeds, fails in a way retrying cannot fix, or the policy's
/// time is up.
async fn with_retry<T, F, Fut>(
    retry: RetryPolicy,
    counters: &Counters,
    what: &str,
    mut attempt: F,
) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let started = Instant::now();
    let mut backoff = retry.backoff_initial;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let failure = match tokio::time::timeout(retry.attempt_timeout, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if !retryable(&e) => return Err(to_io(e, what)),
            Ok(Err(e)) => Failure::Store(e),
            Err(_) => Failure::Timeout(retry.attempt_timeout),
        };
        let elapsed = started.elapsed();
        if elapsed + backoff > retry.total_max {
            let kind = match failure {
                Failure::Timeout(_) => io::ErrorKind::TimedOut,
                Failure::Store(_) => io::ErrorKind::Other,
            };
            return Err(io::Error::new(
                kind,
                format!(
                    "{what}: gave up after {attempts} attempts over {:.1} s (retry limit {:?}); \
                     last failure: {failure}",
                    elapsed.as_secs_f64(),
                    retry.total_max
                ),
            ));
        }
        tracing::warn!(%what, attempt = attempts, error = %failure, backoff_ms = backoff.as_millis() as u64, "object-store request failed; retrying");
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(retry.backoff_max);
    }
}

impl ObjectClient {
    /// A client for the objects under `prefix` of `store`; `location` is how messages
    /// name the prefix (a URL such as `s3://bucket/prefix`).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        location: impl Into<String>,
        retry: RetryPolicy,
    ) -> ObjectClient {
        ObjectClient {
            store,
            prefix,
            location: location.into(),
            retry,
            counters: Arc::new(Counters::default()),
        }
    }

    /// A client for `sub` under this client's prefix (same store, policy and counters).
    pub fn child(&self, sub: &str) -> ObjectClient {
        let mut prefix = self.prefix.clone();
        for part in sub.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.join(part);
        }
        ObjectClient {
            store: Arc::clone(&self.store),
            prefix,
            location: format!("{}/{}", self.location.trim_end_matches('/'), sub),
            retry: self.retry,
            counters: Arc::clone(&self.counters),
        }
    }

    /// The prefix, as a URL, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key prefix.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The full URL of an object under the prefix, for messages.
    pub fn display_name(&self, name: &str) -> String {
        format!("{}/{name}", self.location.trim_end_matches('/'))
    }

    fn path(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    /// Requests made so far.
    pub fn stats(&self) -> RequestStats {
        let c = &self.counters;
        RequestStats {
            puts: c.puts.load(Ordering::Relaxed),
            put_bytes: c.put_bytes.load(Ordering::Relaxed),
            gets: c.gets.load(Ordering::Relaxed),
            lists: c.lists.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            lost_acks_resolved: c.lost_acks_resolved.load(Ordering::Relaxed),
        }
    }

    /// One retried request as a future for the shared runtime: `attempt` makes one
    /// attempt on the store, counted in `counter` (every attempt counts); see
    /// [`RetryPolicy`] for when it is repeated. `what` names the request in errors.
    fn request<T, F, Fut>(
        &self,
        what: String,
        counter: fn(&Counters) -> &AtomicU64,
        attempt: F,
    ) -> impl Future<Output = io::Result<T>> + Send + 'static
    where
        F: Fn(Arc<dyn ObjectStore>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = object_store::Result<T>> + Send,
        T: Send,
    {
        let (store, retry, counters) = (
            Arc::clone(&self.store),
            self.retry,
            Arc::clone(&self.counters),
        );
        async move {
            with_retry(retry, &counters, &what, || {
                counter(&counters).fetch_add(1, Ordering::Relaxed);
                attempt(Arc::clone(&store))
            })
            .await
        }
    }

    /// The retried GET of the whole object `name`, as a future.
    fn get_request(&self, name: &str) -> impl Future<Output = io::Result<Bytes>> + Send + 'static {
        let path = self.path(name);
        self.request(
            format!("get {}", self.display_name(name)),
            |c| &c.gets,
            move |store| {
                let path = path.clone();
                async move { store.get(&path).await?.bytes().await }
            },
        )
    }

    /// Creates `name` with `bytes`, only if no object has that name (a create-only
    /// conditional put: `If-None-Match: *` on S3). Returns once the store acknowledged it.
    ///
    /// If the name exists already, the existing object is read back: with the same bytes
    /// it is this put's own earlier attempt whose acknowledgement was lost (or that the
    /// HTTP client repeated), and the put succeeded; with other bytes another writer owns
    /// the name and the put fails with `AlreadyExists`.
    pub fn put_create(&self, name: &str, bytes: Bytes) -> io::Result<()> {
        let what = format!("create-only put of {}", self.display_name(name));
        let path = self.path(name);
        let payload = bytes.clone();
        let put = self.request(
            what.clone(),
            |c| &c.puts,
            move |store| {
                let (path, payload) = (path.clone(), payload.clone());
                async move {
                    let options = PutOptions {
                        mode: PutMode::Create,
                        ..PutOptions::default()
                    };
                    store
                        .put_opts(&path, PutPayload::from_bytes(payload), options)
                        .await
                }
            },
        );
        let read_back = self.get_request(name);
        let counters = Arc::clone(&self.counters);
        block(async move {
            match put.await {
                Ok(_) => {
                    counters
                        .put_bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let existing = read_back.await?;
                    if existing == bytes {
                        counters.lost_acks_resolved.fetch_add(1, Ordering::Relaxed);
                        counters
                            .put_bytes
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        tracing::info!(%what, "object already there with the same bytes: an earlier attempt succeeded");
                        Ok(())
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!(
                                "{what}: the object exists with other content ({} bytes, not \
                                 {}): another writer owns this name",
                                existing.len(),
                                bytes.len()
                            ),
                        ))
                    }
                }
                Err(e) => Err(e),
            }
        })?
    }

    /// The whole object `name`.
    pub fn get(&self, name: &str) -> io::Result<Bytes> {
        block(self.get_request(name))?
    }

    /// Several whole objects, fetched concurrently (at most `names.len()` requests in
    /// flight; callers bound it).
    pub fn get_many(&self, names: &[String]) -> io::Result<Vec<Bytes>> {
        let requests: Vec<_> = names.iter().map(|name| self.get_request(name)).collect();
        block(futures::future::join_all(requests))?
            .into_iter()
            .collect()
    }

    /// Bytes `range` of object `name`.
    pub fn get_range(&self, name: &str, range: Range<u64>) -> io::Result<Bytes> {
        let what = format!(
            "get bytes {}..{} of {}",
            range.start,
            range.end,
            self.display_name(name)
        );
        let path = self.path(name);
        block(self.request(
            what,
            |c| &c.gets,
            move |store| {
                let (path, range) = (path.clone(), range.clone());
                async move { store.get_range(&path, range).await }
            },
        ))?
    }

    /// Names (relative to the prefix, without `/`) and sizes of the objects directly under
    /// the prefix, in no particular order.
    pub fn list(&self) -> io::Result<Vec<(String, u64)>> {
        let prefix = self.prefix.clone();
        let metas = block(self.request(
            format!("list {}", self.location),
            |c| &c.lists,
            move |store| {
                let prefix = prefix.clone();
                async move { store.list(Some(&prefix)).try_collect::<Vec<_>>().await }
            },
        ))??;
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            let Some(mut parts) = meta.location.prefix_match(&self.prefix) else {
                continue;
            };
            if let (Some(name), None) = (parts.next(), parts.next()) {
                out.push((name.as_ref().to_owned(), meta.size));
            }
        }
        Ok(out)
    }

    /// Deletes `name`; a missing object is not an error.
    pub fn delete(&self, name: &str) -> io::Result<()> {
        let path = self.path(name);
        let result = block(self.request(
            format!("delete {}", self.display_name(name)),
            |c| &c.deletes,
            move |store| {
                let path = path.clone();
                async move { store.delete(&path).await }
            },
        ))?;
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// One listing request, without retries, to check at start-up that the bucket exists
    /// and the credentials are accepted. The error says what failed.
    pub fn check_access(&self) -> io::Result<()> {
        let (store, prefix) = (Arc::clone(&self.store), self.prefix.clone());
        let timeout = self.retry.attempt_timeout;
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        let what = format!("list {}", self.location);
        block(async move {
            match tokio::time::timeout(timeout, store.list_with_delimiter(Some(&prefix))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(to_io(e, &what)),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: no answer within {timeout:?}"),
                )),
            }
        })?
    }
}
