//! [`Wal`]: open (recover), append, sync, read, iterate, retain, close.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};

use bytes::Bytes;
use tokio::sync::{Semaphore, oneshot};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{self, HeaderStatus};
use crate::fs::LocalDir;
use crate::index::{Index, IndexedSegment, Located};
use crate::lsn::{Lsn, SegmentId};
use crate::recovery::{self, Decision, Progress, SegmentReport, Verdict};
use crate::store::{DirSegmentStore, SegmentStore};
use crate::writer::{Queue, Request, Writer};

/// State shared by the `Wal` handle, its writer thread and its iterators.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn SegmentStore>,
    pub(crate) config: Config,
    pub(crate) location: String,
    read_only: bool,
    queue: Mutex<Queue>,
    pub(crate) queue_ready: Condvar,
    admit_count: Arc<Semaphore>,
    admit_bytes: Arc<Semaphore>,
    poison: OnceLock<Arc<Error>>,
    index: RwLock<Index>,
    /// Lsn after the last record whose sync completed (raw value; 1 = none).
    pub(crate) durable_end: AtomicU64,
    /// Lsn after the last acknowledged record.
    pub(crate) acked_end: AtomicU64,
    pub(crate) stats: StatsCounters,
    /// Set while the writer waits for followers to join a group (rule 4): only then does
    /// a new request need to wake it.
    pub(crate) group_forming: AtomicBool,
}

/// Counters kept by the writer.
#[derive(Default)]
pub(crate) struct StatsCounters {
    pub(crate) records: AtomicU64,
    pub(crate) groups: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) largest_group: AtomicU64,
    pub(crate) segments_created: AtomicU64,
}

/// What the writer has done since the log was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records acknowledged.
    pub records: u64,
    /// Groups committed (each written with one write, and synced unless `UnsafeNoSync`).
    pub groups: u64,
    /// Successful syncs of segment data.
    pub syncs: u64,
    /// Most appends in one group.
    pub largest_group: u64,
    /// Segments created.
    pub segments_created: u64,
}

impl Shared {
    pub(crate) fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn poisoned(&self) -> Option<Arc<Error>> {
        self.poison.get().cloned()
    }

    /// Records `cause` as the failure that poisons the log (the first one wins) and
    /// returns the `Poisoned` error to hand out.
    pub(crate) fn poison(&self, cause: Error) -> Error {
        let cause = Arc::clone(self.poison.get_or_init(|| Arc::new(cause)));
        tracing::error!(location = %self.location, cause = %error_chain(&cause), "WAL poisoned");
        Error::Poisoned {
            location: self.location.clone(),
            cause,
        }
    }

    fn check_poison(&self) -> Result<()> {
        match self.poisoned() {
            Some(cause) => Err(Error::Poisoned {
                location: self.location.clone(),
                cause,
            }),
            None => Ok(()),
        }
    }

    /// A copy of an error for each of several waiters (errors are not `Clone`, because
    /// `io::Error` is not).
    pub(crate) fn replicate(&self, err: &Error) -> Error {
        match err {
            Error::Poisoned { location, cause } => Error::Poisoned {
                location: location.clone(),
                cause: Arc::clone(cause),
            },
            Error::Io {
                op,
                target,
                offset,
                source,
            } => Error::Io {
                op,
                target: target.clone(),
                offset: *offset,
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            other => Error::Io {
                op: "append to",
                target: self.location.clone(),
                offset: None,
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

/// An error followed by its sources, as one line.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug)]
pub struct RecoveryReport {
    /// The overall verdict before repair (`Clean`, `TornTail`, `TornSegment`).
    pub verdict: Verdict,
    /// One report per segment found.
    pub segments: Vec<SegmentReport>,
    /// What opening the log changed, one sentence each (empty when read-only or clean).
    pub actions: Vec<String>,
}

/// A segmented, CRC-checked write-ahead log. See the crate docs.
///
/// `Wal` is `Send + Sync`: share it (`Arc<Wal>`) between threads and tasks. Every method
/// takes `&self`. Dropping it closes the log (see [`Wal::close`]).
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// The writer's state, shared by the writer thread and leading blocking appenders.
    writer_state: Option<Arc<Mutex<Writer>>>,
    recovery: RecoveryReport,
    _lock: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("location", &self.shared.location)
            .field("read_only", &self.shared.read_only)
            .field("last_lsn", &self.last_lsn())
            .finish()
    }
}

impl Wal {
    /// Opens (creating if needed) a log in a local directory. The directory is created
    /// with its missing parents, durably. Segments are preallocated (see
    /// [`DirSegmentStore`]'s "Preallocation").
    pub fn open_dir(path: impl AsRef<Path>, config: Config) -> Result<Wal> {
        config.validate()?;
        let path = path.as_ref();
        let dir = LocalDir::create(path)
            .map_err(|e| Error::io("open WAL directory", path.display().to_string(), e))?;
        let store =
            DirSegmentStore::with_preallocation(Arc::new(dir), config.segment_size_max_bytes);
        Wal::open(Arc::new(store), config)
    }

    /// Opens a log for reading only: recovery is analysed but nothing is changed (a torn
    /// tail is left in place and simply not read), no lock is taken, and appends fail
    /// with [`Error::ReadOnly`]. Fails like [`Wal::open`] on corruption.
    pub fn open_read_only(store: Arc<dyn SegmentStore>, config: Config) -> Result<Wal> {
        Wal::open_inner(store, config, true)
    }

    /// Opens a log: takes its lock, recovers it (see the crate docs, "Recovery"), and
    /// starts its writer thread.
    ///
    /// Fails with [`Error::Corrupt`], [`Error::MissingSegment`] or
    /// [`Error::UnsupportedVersion`] if recovery refuses, [`Error::Locked`] if another
    /// writer has the log open, [`Error::InvalidConfig`] for a bad config.
    pub fn open(store: Arc<dyn SegmentStore>, config: Config) -> Result<Wal> {
        Wal::open_inner(store, config, false)
    }

    fn open_inner(store: Arc<dyn SegmentStore>, config: Config, read_only: bool) -> Result<Wal> {
        config.validate()?;
        let location = store.location();
        let lock = if read_only {
            None
        } else {
            Some(store.lock().map_err(|source| match source.kind() {
                io::ErrorKind::WouldBlock => Error::Locked {
                    location: location.clone(),
                    source,
                },
                _ => Error::io("lock", location.clone(), source),
            })?)
        };

        let analysis = recovery::analyze(
            store.as_ref(),
            config.index_interval_bytes,
            &mut |_: Progress| {},
        )?;
        if let Some(err) = analysis.verdict.to_error() {
            return Err(err);
        }
        let mut actions = Vec::new();
        let mut index = Index::default();
        let mut next_segment_id = SegmentId::FIRST;
        let mut scanned = analysis.bytes.into_iter();
        for report in &analysis.segments {
            next_segment_id = report.id.next();
            // Empty for stores that do not keep sealed bytes (object stores).
            let mut sealed = scanned.next();
            let mut len_bytes = report.len_bytes;
            match report.decision {
                Decision::Accept => {}
                Decision::TruncateTail if read_only => len_bytes = report.scan.valid_len,
                Decision::TruncateTail => {
                    // Drop the mapping before cutting the file (see fs::mmap's safety
                    // argument), then map the cut file again.
                    drop(sealed.take());
                    store
                        .truncate(report.id, report.scan.valid_len)
                        .map_err(|e| {
                            Error::io_at(
                                "cut torn tail of segment",
                                report.name.clone(),
                                report.scan.valid_len,
                                e,
                            )
                        })?;
                    sealed = Some(
                        store
                            .read(report.id)
                            .map_err(|e| Error::io("read segment", report.name.clone(), e))?,
                    );
                    len_bytes = report.scan.valid_len;
                    actions.push(format!(
                        "cut torn tail of {} at byte {} ({} bytes)",
                        report.name,
                        report.scan.valid_len,
                        report.len_bytes - report.scan.valid_len
                    ));
                    tracing::warn!(segment = %report.name, offset = report.scan.valid_len, "cut torn WAL tail");
                }
                Decision::DiscardSegment => {
                    next_segment_id = report.id;
                    if !read_only {
                        drop(sealed.take());
                        store.delete(report.id).map_err(|e| {
                            Error::io("delete torn segment", report.name.clone(), e)
                        })?;
                        actions.push(format!(
                            "deleted torn newest segment {} ({} bytes, no valid header)",
                            report.name, report.len_bytes
                        ));
                        tracing::warn!(segment = %report.name, "deleted torn WAL segment");
                    }
                    continue;
                }
                Decision::FailCorrupt | Decision::FailMissing | Decision::FailUnsupported => {
                    unreachable!("a failing verdict returned above")
                }
            }
            let HeaderStatus::Valid(header) = report.scan.header else {
                unreachable!("accepted segments have a valid header")
            };
            let base = header.base_lsn;
            let end = report.scan.end_lsn().unwrap_or(base);
            let mut sparse = report.scan.sparse_index.clone();
            sparse.shrink_to_fit();
            index.segments.push_back(IndexedSegment {
                id: report.id,
                base_lsn: base,
                end_lsn: end,
                len_bytes,
                sparse,
                sealed: sealed.filter(|_| store.keeps_sealed_bytes()),
                closed: true,
                header_durable: true,
            });
        }
        let next_lsn = index.end_lsn().unwrap_or(Lsn::FIRST);
        let recovery = RecoveryReport {
            verdict: analysis.verdict,
            segments: analysis.segments,
            actions,
        };

        let shared = Arc::new(Shared {
            store,
            location,
            read_only,
            queue: Mutex::new(Queue::default()),
            queue_ready: Condvar::new(),
            admit_count: Arc::new(Semaphore::new(config.appends_in_flight_max as usize)),
            admit_bytes: Arc::new(Semaphore::new(config.append_bytes_in_flight_max as usize)),
            poison: OnceLock::new(),
            index: RwLock::new(index),
            durable_end: AtomicU64::new(next_lsn.get()),
            acked_end: AtomicU64::new(next_lsn.get()),
            stats: StatsCounters::default(),
            group_forming: AtomicBool::new(false),
            config,
        });
        let (writer, writer_state) = if read_only {
            (None, None)
        } else {
            let state = Arc::new(Mutex::new(Writer::new(
                Arc::clone(&shared),
                next_lsn,
                next_segment_id,
            )));
            let (thread_state, thread_shared) = (Arc::clone(&state), Arc::clone(&shared));
            let handle = thread::Builder::new()
                .name("wal-writer".to_owned())
                .spawn(move || Writer::run_thread(thread_state, thread_shared))
                .map_err(|e| Error::io("start writer thread for", shared.location.clone(), e))?;
            (Some(handle), Some(state))
        };
        Ok(Wal {
            shared,
            writer,
            writer_state,
            recovery,
            _lock: lock,
        })
    }

    /// Appends one record and resolves with its Lsn once it is durable under the
    /// configured [`crate::SyncPolicy`].
    ///
    /// Waits (asynchronously) while `appends_in_flight_max` or
    /// `append_bytes_in_flight_max` is reached. Needs no particular runtime. Dropping
    /// the future after the record was queued does not withdraw it: it may still be
    /// written, under an Lsn the caller never learns.
    pub async fn append(&self, record: impl Into<Bytes>) -> Result<Lsn> {
        let (request, resolved) = self.admit(record.into()).await?;
        self.enqueue(request, true)?;
        resolved.await.map_err(|_| self.closed())?
    }

    /// Checks and admits an append (rule 1 of the protocol): waits for permits, hashes a
    /// large payload, and returns the request to queue and the channel of its outcome.
    async fn admit(&self, payload: Bytes) -> Result<(Request, oneshot::Receiver<Result<Lsn>>)> {
        let shared = &self.shared;
        self.check_writable()?;
        let len_bytes = payload.len() as u64;
        if len_bytes > shared.config.record_size_max_bytes {
            return Err(Error::RecordTooLarge {
                len_bytes,
                max_bytes: shared.config.record_size_max_bytes,
            });
        }
        let frame_len = format::frame_len(payload.len());
        let count = Arc::clone(&shared.admit_count)
            .acquire_owned()
            .await
            .map_err(|_| self.closed())?;
        // `validate` keeps a frame far below u32::MAX (record_size_max_bytes <= 1 GiB).
        let bytes = Arc::clone(&shared.admit_bytes)
            .acquire_many_owned(frame_len as u32)
            .await
            .map_err(|_| self.closed())?;
        // Hash large payloads here, on the appending thread, in parallel with other
        // appenders; the writer only combines this with the frame header's CRC.
        let payload_crc = (payload.len() >= crate::writer::VECTORED_PAYLOAD_MIN_BYTES).then(|| {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&payload);
            hasher
        });
        let (done, resolved) = oneshot::channel();
        Ok((
            Request::Append {
                payload,
                payload_crc,
                done,
                _permits: (count, bytes),
            },
            resolved,
        ))
    }

    fn closed(&self) -> Error {
        Error::Closed {
            location: self.shared.location.clone(),
        }
    }

    /// [`Wal::append`] for plain threads: blocks the calling thread until the record is
    /// durable. If no commit is under way, the calling thread writes and syncs the group
    /// itself (see rule 12 in [`crate::writer`]), which saves two thread handoffs. Do not
    /// call it on an async runtime's worker thread.
    pub fn append_blocking(&self, record: impl Into<Bytes>) -> Result<Lsn> {
        let (request, resolved) = block_on(self.admit(record.into()))?;
        self.enqueue(request, false)?;
        self.lead_or_wake();
        block_on(resolved).map_err(|_| self.closed())?
    }

    /// Rule 12: commits the next group on this thread if the writer is free. If it is
    /// not, whoever holds it (the writer thread or another leader) looks at the queue
    /// again after letting go, so this request is not forgotten and nobody needs waking.
    fn lead_or_wake(&self) {
        let Some(writer) = &self.writer_state else {
            return;
        };
        let Ok(mut writer) = writer.try_lock() else {
            if self.shared.group_forming.load(Ordering::Acquire) {
                // The holder is waiting for followers: this request may complete its group.
                self.shared.queue_ready.notify_one();
            }
            return;
        };
        writer.commit_next();
        drop(writer);
        // Requests that arrived while this thread committed: hand them to the writer
        // thread rather than keep this appender from returning.
        if !self.shared.lock_queue().requests.is_empty() {
            self.shared.queue_ready.notify_one();
        }
    }

    /// Resolves once every record appended before this call is durable; returns the
    /// newest durable Lsn. Needed only with [`crate::SyncPolicy::UnsafeNoSync`].
    pub async fn sync(&self) -> Result<Option<Lsn>> {
        self.check_writable()?;
        let (done, resolved) = oneshot::channel();
        self.enqueue(Request::Sync { done }, true)?;
        resolved.await.map_err(|_| self.closed())?
    }

    /// [`Wal::sync`] for plain threads.
    pub fn sync_blocking(&self) -> Result<Option<Lsn>> {
        block_on(self.sync())
    }

    /// Queues a request; `wake` notifies the writer thread (a blocking appender first
    /// tries to commit the group itself).
    fn enqueue(&self, request: Request, wake: bool) -> Result<()> {
        let mut queue = self.shared.lock_queue();
        if queue.closed {
            return Err(Error::Closed {
                location: self.shared.location.clone(),
            });
        }
        queue.bytes += request.frame_len();
        queue.requests.push_back(request);
        drop(queue);
        if wake {
            self.shared.queue_ready.notify_one();
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.shared.check_poison()?;
        if self.shared.read_only {
            return Err(Error::ReadOnly {
                location: self.shared.location.clone(),
            });
        }
        Ok(())
    }

    /// Reads the record at `lsn`: a binary search over segments, then over the
    /// segment's sparse offset index, then a scan of at most `index_interval_bytes` plus
    /// one record. Every record read is checksum-verified. Sealed segments are read
    /// through a memory map, so the returned bytes are a zero-copy slice of it.
    pub fn read(&self, lsn: Lsn) -> Result<Bytes> {
        self.shared.check_poison()?;
        read_record(&self.shared, lsn)
    }

    /// An iterator over `(Lsn, record)` from `from` (or from the oldest record if `from`
    /// is older) to the newest acknowledged record, following appends made meanwhile.
    pub fn iter_from(&self, from: Lsn) -> Result<Iter> {
        self.shared.check_poison()?;
        let first = self.shared.read_index().first_lsn();
        let start = match first {
            Some(first) => from.max(first),
            // No records yet: start where the next record will be.
            None => from.max(self.next_lsn()),
        };
        Ok(Iter {
            shared: Arc::clone(&self.shared),
            next: start,
            chunk: None,
            failed: false,
        })
    }

    /// Lsn of the oldest record present.
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.shared.read_index().first_lsn()
    }

    /// Lsn of the newest acknowledged record (durable, unless the policy is
    /// `UnsafeNoSync`).
    pub fn last_lsn(&self) -> Option<Lsn> {
        let end = self.shared.acked_end.load(Ordering::Acquire);
        (end > 1 && self.first_lsn().is_some()).then(|| Lsn::new(end - 1))
    }

    /// The Lsn the next append will get, if no append is in flight.
    pub fn next_lsn(&self) -> Lsn {
        Lsn::new(self.shared.acked_end.load(Ordering::Acquire))
    }

    /// Lsn of the newest record known to be durable.
    pub fn durable_lsn(&self) -> Option<Lsn> {
        let end = self.shared.durable_end.load(Ordering::Acquire);
        (end > 1 && self.first_lsn().is_some()).then(|| Lsn::new(end - 1))
    }

    /// Retention: deletes, oldest first, every sealed segment whose records are all older
    /// than `lsn`. Never deletes the newest segment, nor a segment without a successor
    /// whose header is durable: some segment must always carry the log's next Lsn
    /// through a crash, so Lsns are never reused.
    /// Returns the number of segments deleted. Each deletion is durable before the next
    /// starts, so a crash leaves a contiguous log. A failed deletion poisons the log
    /// (its directory fsync may have failed).
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        self.check_writable()?;
        static RETENTION: Mutex<()> = Mutex::new(());
        // One retention at a time per process: two concurrent callers deleting different
        // segments could complete out of order and leave a hole after a crash.
        let _serial = RETENTION.lock().unwrap_or_else(|p| p.into_inner());
        let mut deleted = 0;
        loop {
            let victim = {
                let mut index = self.shared.write_index();
                // A later segment must carry the log's Lsns forward durably (its header),
                // or a crash could leave no segment at all and the Lsns would restart.
                let successor_durable = index.segments.iter().skip(1).any(|s| s.header_durable);
                let deletable = successor_durable
                    && index
                        .segments
                        .front()
                        .is_some_and(|s| s.closed && s.end_lsn <= lsn);
                if !deletable {
                    break;
                }
                index.segments.pop_front()
            };
            let Some(victim) = victim else { break };
            let id = victim.id;
            // Drop our mapping before the file goes; readers holding slices keep theirs.
            drop(victim);
            self.shared.store.delete(id).map_err(|e| {
                self.shared.poison(Error::io(
                    "delete segment",
                    self.shared.store.segment_name(id),
                    e,
                ))
            })?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Counters of the writer's work since the log was opened.
    pub fn stats(&self) -> WalStats {
        let s = &self.shared.stats;
        WalStats {
            records: s.records.load(Ordering::Relaxed),
            groups: s.groups.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            largest_group: s.largest_group.load(Ordering::Relaxed),
            segments_created: s.segments_created.load(Ordering::Relaxed),
        }
    }

    /// What recovery found and did when the log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Where the log lives.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// The config the log was opened with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Closes the log: refuses new appends, lets every queued append finish, syncs, and
    /// stops the writer thread. Returns the poisoning error if the log is poisoned.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        self.shared.check_poison()
    }

    fn shutdown(&mut self) {
        {
            let mut queue = self.shared.lock_queue();
            queue.closed = true;
        }
        self.shared.queue_ready.notify_all();
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!(location = %self.shared.location, "WAL writer thread panicked");
        }
        self.shared.admit_count.close();
        self.shared.admit_bytes.close();
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn read_record(shared: &Shared, lsn: Lsn) -> Result<Bytes> {
    let index = shared.read_index();
    let segment = match index.locate(lsn) {
        Located::Found(segment) => segment,
        Located::Truncated { first } => return Err(Error::LsnTruncated { lsn, first }),
        Located::NotWritten { last } => return Err(Error::LsnNotWritten { lsn, last }),
    };
    let (start_lsn, start, end) = segment.range_for(lsn);
    let id = segment.id;
    let bytes = match &segment.sealed {
        Some(sealed) => sealed.slice(start as usize..end as usize),
        None => {
            drop(index);
            shared
                .store
                .read_at(id, start, (end - start) as usize)
                .map_err(|e| {
                    Error::io_at("read segment", shared.store.segment_name(id), start, e)
                })?
        }
    };
    let mut pos = 0usize;
    let mut expected = start_lsn;
    loop {
        let record = format::decode_record(&bytes[pos..], id).map_err(|e| Error::Corrupt {
            segment: shared.store.segment_name(id),
            offset: start + pos as u64,
            lsn: Some(expected),
            reason: e.to_string(),
        })?;
        if record.lsn != expected {
            return Err(Error::Corrupt {
                segment: shared.store.segment_name(id),
                offset: start + pos as u64,
                lsn: Some(expected),
                reason: format!("record has Lsn {} where Lsn {expected} belongs", record.lsn),
            });
        }
        if record.lsn == lsn {
            let payload_start = pos + format::RECORD_HEADER_LEN;
            return Ok(bytes.slice(payload_start..payload_start + record.payload.len()));
        }
        pos += record.frame_len;
        expected = expected.next();
    }
}

/// Iterator over `(Lsn, record)`; see [`Wal::iter_from`]. Yields an error (and then
/// ends) on a record that fails verification or a read that fails.
pub struct Iter {
    shared: Arc<Shared>,
    next: Lsn,
    chunk: Option<Chunk>,
    failed: bool,
}

impl std::fmt::Debug for Iter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter").field("next", &self.next).finish()
    }
}

/// A contiguous run of one segment's bytes, starting at a record boundary.
struct Chunk {
    id: SegmentId,
    bytes: Bytes,
    /// Segment offset of `bytes[0]`.
    base_offset: u64,
    /// Position in `bytes` of the next record, whose Lsn is `lsn`.
    pos: usize,
    lsn: Lsn,
    /// Lsn after the last acknowledged record of the segment when the chunk was loaded.
    end_lsn: Lsn,
    /// True if `bytes` stops before the segment's acknowledged end (a bounded read of the
    /// segment being written), so a frame cut at the end of `bytes` is not damage.
    partial: bool,
}

/// Largest read of the segment being written, per refill.
const ITER_READ_BYTES: u64 = 1 << 20;

impl Iter {
    /// Loads the chunk holding `self.next` (positioned at the closest indexed record
    /// before it), or, with `resume`, continues the current chunk's segment at its
    /// position.
    fn load_chunk(&self, resume: Option<(u64, Lsn)>) -> Result<Option<Chunk>> {
        let index = self.shared.read_index();
        let segment = match index.locate(resume.map_or(self.next, |(_, lsn)| lsn)) {
            Located::Found(segment) => segment,
            Located::Truncated { first } => {
                return Err(Error::LsnTruncated {
                    lsn: self.next,
                    first,
                });
            }
            Located::NotWritten { .. } => return Ok(None),
        };
        let (start, start_lsn) = match resume {
            Some((offset, lsn)) => (offset, lsn),
            None => {
                let (lsn, offset, _) = segment.range_for(self.next);
                (offset, lsn)
            }
        };
        let (id, end_lsn, len_bytes) = (segment.id, segment.end_lsn, segment.len_bytes);
        if let Some(sealed) = &segment.sealed {
            let bytes = sealed.slice(start as usize..len_bytes as usize);
            return Ok(Some(Chunk {
                id,
                bytes,
                base_offset: start,
                pos: 0,
                lsn: start_lsn,
                end_lsn,
                partial: false,
            }));
        }
        drop(index);
        let name = || self.shared.store.segment_name(id);
        let mut want = (len_bytes - start).min(ITER_READ_BYTES);
        let mut bytes = self
            .shared
            .store
            .read_at(id, start, want as usize)
            .map_err(|e| Error::io_at("read segment", name(), start, e))?;
        if let Err(format::DecodeError::LengthPastEnd { len, .. }) =
            format::decode_record(&bytes, id)
        {
            // The first record is longer than one read: read exactly up to its end.
            let frame = format::frame_len(len as usize).min(len_bytes - start);
            if frame > want {
                want = frame;
                bytes = self
                    .shared
                    .store
                    .read_at(id, start, want as usize)
                    .map_err(|e| Error::io_at("read segment", name(), start, e))?;
            }
        }
        let partial = start + want < len_bytes;
        Ok(Some(Chunk {
            id,
            bytes,
            base_offset: start,
            pos: 0,
            lsn: start_lsn,
            end_lsn,
            partial,
        }))
    }

    fn next_record(&mut self) -> Result<Option<(Lsn, Bytes)>> {
        loop {
            if self.next.get() >= self.shared.acked_end.load(Ordering::Acquire) {
                return Ok(None);
            }
            let exhausted = self.chunk.as_ref().is_none_or(|c| c.lsn >= c.end_lsn);
            if exhausted {
                self.chunk = self.load_chunk(None)?;
            }
            let Some(chunk) = self.chunk.as_mut() else {
                return Ok(None);
            };
            let record = match format::decode_record(&chunk.bytes[chunk.pos..], chunk.id) {
                Ok(record) => record,
                Err(
                    format::DecodeError::LengthPastEnd { .. }
                    | format::DecodeError::Truncated { .. },
                ) if chunk.partial => {
                    let resume = (chunk.base_offset + chunk.pos as u64, chunk.lsn);
                    self.chunk = self.load_chunk(Some(resume))?;
                    continue;
                }
                Err(e) => {
                    return Err(Error::Corrupt {
                        segment: self.shared.store.segment_name(chunk.id),
                        offset: chunk.base_offset + chunk.pos as u64,
                        lsn: Some(chunk.lsn),
                        reason: e.to_string(),
                    });
                }
            };
            if record.lsn != chunk.lsn {
                return Err(Error::Corrupt {
                    segment: self.shared.store.segment_name(chunk.id),
                    offset: chunk.base_offset + chunk.pos as u64,
                    lsn: Some(chunk.lsn),
                    reason: format!(
                        "record has Lsn {} where Lsn {} belongs",
                        record.lsn, chunk.lsn
                    ),
                });
            }
            let payload_start = chunk.pos + format::RECORD_HEADER_LEN;
            let payload = chunk
                .bytes
                .slice(payload_start..payload_start + record.payload.len());
            chunk.pos += record.frame_len;
            let lsn = chunk.lsn;
            chunk.lsn = chunk.lsn.next();
            if lsn < self.next {
                continue; // walking from the indexed record up to `next`
            }
            self.next = lsn.next();
            return Ok(Some((lsn, payload)));
        }
    }
}

impl Iterator for Iter {
    type Item = Result<(Lsn, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.shared.check_poison() {
            self.failed = true;
            return Some(Err(e));
        }
        match self.next_record() {
            Ok(item) => item.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Runs a future to completion on the current thread, parking it while the future waits.
/// Enough for the WAL's own futures, which are woken by the writer thread or by permits
/// being returned; no runtime needed.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}
