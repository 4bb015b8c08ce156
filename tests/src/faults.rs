//! [`FaultyStore`]: an `object_store::ObjectStore` decorator that fails, delays or drops
//! puts and lists at seeded points, and loses acknowledgements (the put succeeded, the
//! client sees an error), to test what the WAL and the checkpoint store promise when the
//! object store misbehaves.
//!
//! Decisions come from a seeded generator, one draw per request, so a failing run is
//! repeated exactly with its seed (when requests are issued in the same order). Faults can
//! be switched off ([`FaultyStore::set_enabled`]) to read back what was stored, and every
//! injected fault is counted ([`FaultyStore::counts`]).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails at once; the store never sees it.
    Fail,
    /// Reaches the store after this delay.
    Delay(Duration),
    /// Lost on the way: never answered (the client's timeout must end it); the store never
    /// sees it.
    Drop,
    /// Puts only: the store performs it, then the client gets an error (a connection reset
    /// after the request was sent).
    LostAck,
}

/// Probabilities (in parts per thousand) of each fault for one kind of request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    /// [`Fault::Fail`].
    pub fail: u32,
    /// [`Fault::Delay`] (of `delay`).
    pub delay: u32,
    /// [`Fault::Drop`].
    pub drop: u32,
    /// [`Fault::LostAck`] (puts only).
    pub lost_ack: u32,
}

/// The fault plan of a [`FaultyStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The generator's seed.
    pub seed: u64,
    /// Faults of puts.
    pub puts: Rates,
    /// Faults of lists.
    pub lists: Rates,
    /// The delay of [`Fault::Delay`].
    pub delay: Duration,
    /// The first this many puts are never faulted.
    pub puts_clean_first: u64,
}

/// Faults injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests that got [`Fault::Fail`].
    pub failed: u64,
    /// Requests that got [`Fault::Delay`].
    pub delayed: u64,
    /// Requests that got [`Fault::Drop`].
    pub dropped: u64,
    /// Puts that got [`Fault::LostAck`] and did succeed in the store.
    pub lost_acks: u64,
    /// Puts seen (faulted or not).
    pub puts: u64,
    /// Lists seen.
    pub lists: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Mutex<(Plan, u64)>,
    enabled: AtomicBool,
    /// Puts fail (as [`Fault::Fail`]) from now on, whatever the plan: a store that is down.
    down: AtomicBool,
    failed: AtomicU64,
    delayed: AtomicU64,
    dropped: AtomicU64,
    lost_acks: AtomicU64,
    puts: AtomicU64,
    lists: AtomicU64,
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected fault: {what}").into(),
    }
}

impl FaultyStore {
    /// Wraps `inner` with `plan`, enabled.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: Plan) -> FaultyStore {
        FaultyStore {
            inner,
            plan: Mutex::new((plan, plan.seed | 1)),
            enabled: AtomicBool::new(true),
            down: AtomicBool::new(false),
            failed: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lost_acks: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            lists: AtomicU64::new(0),
        }
    }

    /// Switches every fault on or off (off: a plain pass-through).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Makes every put fail from now on (`true`), or stops that.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Faults injected so far.
    pub fn counts(&self) -> Counts {
        Counts {
            failed: self.failed.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            lost_acks: self.lost_acks.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
        }
    }

    /// The fault for the next request of a kind (`None`: pass through).
    fn draw(&self, put: bool) -> Option<Fault> {
        let n = if put {
            self.puts.fetch_add(1, Ordering::Relaxed)
        } else {
            self.lists.fetch_add(1, Ordering::Relaxed);
            u64::MAX
        };
        if put && self.down.load(Ordering::SeqCst) {
            return Some(Fault::Fail);
        }
        if !self.enabled.load(Ordering::SeqCst) {
            return None;
        }
        let mut guard = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        let (plan, state) = &mut *guard;
        if put && n < plan.puts_clean_first {
            return None;
        }
        // xorshift64
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let roll = (*state % 1000) as u32;
        let rates = if put { plan.puts } else { plan.lists };
        let mut edge = rates.fail;
        if roll < edge {
            return Some(Fault::Fail);
        }
        edge += rates.delay;
        if roll < edge {
            return Some(Fault::Delay(plan.delay));
        }
        edge += rates.drop;
        if roll < edge {
            return Some(Fault::Drop);
        }
        edge += rates.lost_ack;
        if put && roll < edge {
            return Some(Fault::LostAck);
        }
        None
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        match self.draw(true) {
            None => self.inner.put_opts(location, payload, opts).await,
            Some(Fault::Fail) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(injected("put failed"))
            }
            Some(Fault::Delay(d)) => {
                self.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(d).await;
                self.inner.put_opts(location, payload, opts).await
            }
            Some(Fault::Drop) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                futures::future::pending::<()>().await;
                Err(injected("unreachable"))
            }
            Some(Fault::LostAck) => {
                // Only a put that succeeded can lose its acknowledgement; a failed one
                // (say, the create-only check) reports its own error.
                self.inner.put_opts(location, payload, opts).await?;
                self.lost_acks.fetch_add(1, Ordering::Relaxed);
                Err(injected("connection reset after the put was sent"))
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.list(prefix);
        match self.draw(false) {
            None => inner,
            Some(Fault::Fail | Fault::LostAck) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                futures::stream::once(async { Err(injected("list failed")) }).boxed()
            }
            Some(Fault::Delay(d)) => {
                self.delayed.fetch_add(1, Ordering::Relaxed);
                futures::stream::once(async move {
                    tokio::time::sleep(d).await;
                    inner
                })
                .flatten()
                .boxed()
            }
            Some(Fault::Drop) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                futures::stream::pending().boxed()
            }
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
