//! The writer: assigns Lsns, frames records, writes and syncs them, and resolves appends.
//! One writer per [`crate::Wal`], a state behind a mutex that its writer thread, or a
//! blocking appender leading a commit (rule 12), holds while committing a group. "The
//! writer" below is whoever holds it; there is never more than one.
//!
//! # The group-commit protocol
//!
//! 1. **Admission.** An append first takes one permit from `appends_in_flight_max` and
//!    frame-length permits from `append_bytes_in_flight_max`, waiting (asynchronously or
//!    blocking the thread) while they are exhausted. The permits travel with the request
//!    and are returned only when the append resolves, so accepted-but-unresolved work is
//!    bounded in count and bytes: this is the backpressure.
//! 2. **Queueing.** The request (payload, completion channel, permits) is pushed on the
//!    queue under its mutex; then the writer thread is notified, or a blocking appender
//!    tries to lead (rule 12). Nothing but the writer touches the log.
//! 3. **Lsns are assigned by the writer alone**, in queue order, when it frames a record.
//!    So Lsns are dense and strictly increasing, and a record that fails to be written
//!    gives its Lsn back: the next record gets it, and nobody ever saw it acknowledged.
//! 4. **Forming a group.** The writer takes every queued request, up to `bytes_max` of
//!    frames (at least one request). First, while fewer requests are queued than were in
//!    its previous group, it waits for more: appenders it just acknowledged are about to
//!    append again, and one sync for all of them beats two. It waits at most a quarter of
//!    the previous sync's duration, and never more than `delay_us_max`, so waiting can cost
//!    an append at most a quarter of a sync in latency; with one appender it never waits.
//!    While a sync is in progress, new requests simply queue; they form the next group.
//! 5. **Writing.** The group's frames are appended with one (vectored) write: headers and
//!    small payloads are copied into one buffer, payloads of 4 KiB or more are written
//!    from the appender's own bytes (their CRC was computed by the appending thread, in
//!    parallel, and is combined with the header's here). A record that does not fit in
//!    the active segment ends the group's current part: that part is written and synced,
//!    the segment is sealed, and a new segment is created (rule 8) before the rest is
//!    framed.
//! 6. **Syncing.** After the write, one sync (`fdatasync`) covers the whole group, for
//!    `GroupCommit` and `EveryRecord` (whose groups hold one record). `UnsafeNoSync` skips
//!    it unless a `sync()` request is in the group.
//! 7. **Resolution.** Only after the sync returned `Ok` does the writer publish the new
//!    records to readers (index, then the acknowledged Lsn) and resolve every append of
//!    the group with its Lsn, in Lsn order. So an append resolves only once its record is
//!    durable, and a reader never sees a record that a crash could take back.
//! 8. **Rotation.** A segment is sealed only after a sync covering all of it succeeded
//!    (whatever the policy) and its unused preallocated space was trimmed durably
//!    ([`crate::store::SegmentWriter::finish`]), and only then is the next segment created. So every segment
//!    but the newest is complete on disk, which is what lets recovery call damage in an
//!    older segment corruption rather than a torn write. The new segment's directory entry
//!    is made durable by its first sync, before any of its records resolves.
//! 9. **A failed write** (for example a full disk) fails that part's appends with the
//!    error, cuts the segment back to where the part started, and returns their Lsns
//!    (rule 3); the writer carries on. If the cut itself fails, rule 10 applies.
//! 10. **A failed sync poisons the log.** The writer records the first failure; it and
//!     every later call fail with [`crate::Error::Poisoned`] naming that failure. The sync
//!     is never retried: after a failed `fdatasync` the kernel may have dropped the dirty
//!     pages, and a retry could report success for bytes that are gone. Recovery is a
//!     restart, which scans the log and cuts what was not durable.
//! 11. **Shutdown.** Closing the log stops admission, lets the writer finish every queued
//!     request, syncs what is unsynced (`UnsafeNoSync`), trims the active segment's unused
//!     preallocated space (durably) and ends the thread.
//! 12. **Leading.** The writer's state sits behind a mutex. The writer thread takes it
//!     only to commit a group. A *blocking* appender, after queueing its request, tries
//!     to take it: if it is free, the appender commits the next group itself, on its own
//!     thread (rules 4 to 10 unchanged, its own request usually in that group), then wakes
//!     the writer thread if requests remain. If it is taken, the appender just waits:
//!     every holder looks at the queue again after letting go (the writer thread before it
//!     sleeps, a leader before it returns), and the request was queued before the failed
//!     attempt, so it is seen. So a lone blocking appender writes and syncs in its own
//!     thread, with no thread handoff at all. Async appenders never lead: an
//!     `fdatasync` must not block an async runtime's worker.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::config::SyncPolicy;
use crate::error::{Error, Result};
use crate::format::{self, SegmentHeader};
use crate::index::IndexedSegment;
use crate::lsn::{Lsn, SegmentId};
use crate::store::SegmentWriter;
use crate::wal::Shared;

/// Work for the writer.
pub(crate) enum Request {
    Append {
        payload: Bytes,
        /// CRC of the payload alone, computed by the appender for large payloads.
        payload_crc: Option<crc32fast::Hasher>,
        done: oneshot::Sender<Result<Lsn>>,
        /// Returned to the admission semaphores when the request is dropped (rule 1).
        _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    },
    /// Resolves once everything queued before it is durable.
    Sync {
        done: oneshot::Sender<Result<Option<Lsn>>>,
    },
}

impl Request {
    pub(crate) fn frame_len(&self) -> u64 {
        match self {
            Request::Append { payload, .. } => format::frame_len(payload.len()),
            Request::Sync { .. } => 0,
        }
    }

    fn fail(self, err: Error) {
        match self {
            Request::Append { done, .. } => {
                let _ = done.send(Err(err));
            }
            Request::Sync { done } => {
                let _ = done.send(Err(err));
            }
        }
    }
}

/// Payloads at least this large are written without copying (vectored write) and have
/// their CRC computed by the appending thread; smaller ones are cheaper to copy and hash
/// on the writer.
pub(crate) const VECTORED_PAYLOAD_MIN_BYTES: usize = 4096;

/// Locks the writer. A panic while committing would leave it in an unknown state, but
/// there is no panicking path that does not also poison the log first.
pub(crate) fn lock_writer(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queue between appenders and the writer.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) requests: VecDeque<Request>,
    /// Frame bytes queued.
    pub(crate) bytes: u64,
    /// Set when the log closes: no more requests are accepted.
    pub(crate) closed: bool,
}

struct Active {
    id: SegmentId,
    writer: Box<dyn SegmentWriter>,
    /// Offset at which the next sparse index entry is due.
    next_index_at: u64,
}

/// One run of the current part's bytes: a range of `Writer::buf`, or a payload written
/// from its own memory.
enum Piece {
    Buf { start: usize, end: usize },
    Payload(Bytes),
}

/// An append framed in the current part, waiting for the part's sync.
struct Framed {
    lsn: Lsn,
    done: oneshot::Sender<Result<Lsn>>,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Option<Active>,
    next_lsn: Lsn,
    next_segment_id: SegmentId,
    /// Headers and small payloads of the current part, not yet written.
    buf: Vec<u8>,
    /// The current part, in order: ranges of `buf` and large payloads.
    pieces: Vec<Piece>,
    /// Bytes in the current part.
    part_len: u64,
    part: Vec<Framed>,
    part_index: Vec<(Lsn, u64)>,
    /// Bytes written to the active segment since its last successful sync.
    unsynced: bool,
    last_group_len: usize,
    /// How long the last sync took: bounds the group-forming wait (rule 4).
    last_sync: Duration,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, next_lsn: Lsn, next_segment_id: SegmentId) -> Writer {
        Writer {
            shared,
            active: None,
            next_lsn,
            next_segment_id,
            buf: Vec::new(),
            pieces: Vec::new(),
            part_len: 0,
            part: Vec::new(),
            part_index: Vec::new(),
            unsynced: false,
            last_group_len: 1,
            last_sync: Duration::ZERO,
        }
    }

    /// The writer thread's body: commits groups until the log closes and its queue is
    /// drained, then the final sync (rule 11). It holds the writer only while committing,
    /// so a blocking appender can lead in between (rule 12).
    pub(crate) fn run_thread(writer: Arc<Mutex<Writer>>, shared: Arc<Shared>) {
        loop {
            {
                let mut queue = shared.lock_queue();
                while queue.requests.is_empty() && !queue.closed {
                    queue = shared
                        .queue_ready
                        .wait(queue)
                        .unwrap_or_else(|p| p.into_inner());
                }
                if queue.requests.is_empty() {
                    break; // closed and drained
                }
            }
            lock_writer(&writer).commit_next();
        }
        lock_writer(&writer).shutdown();
    }

    /// Takes one group off the queue, if any, and commits it.
    pub(crate) fn commit_next(&mut self) {
        if let Some(group) = self.take_group() {
            self.commit(group);
        }
    }

    fn shutdown(&mut self) {
        if self.shared.poisoned().is_some() {
            return;
        }
        if let Some(active) = self.active.as_mut() {
            let name = || self.shared.store.segment_name(active.id);
            let result = if self.unsynced {
                active.writer.sync()
            } else {
                Ok(())
            };
            match result.and_then(|()| active.writer.finish()) {
                Ok(()) => {
                    let end = self.next_lsn.get();
                    self.shared.durable_end.store(end, Ordering::Release);
                }
                Err(e) => {
                    let err = self.shared.poison(Error::io("sync segment", name(), e));
                    tracing::error!(error = %err, "final sync at close failed");
                }
            }
        }
    }

    /// Rule 4: takes one group off the queue (`None` if it is empty), first waiting a
    /// little for followers.
    fn take_group(&mut self) -> Option<Vec<Request>> {
        let shared = Arc::clone(&self.shared);
        let mut queue = shared.lock_queue();
        if queue.requests.is_empty() {
            return None;
        }
        let (delay, bytes_max) = match shared.config.sync_policy {
            SyncPolicy::GroupCommit {
                delay_us_max,
                bytes_max,
            } => (
                Duration::from_micros(delay_us_max).min(self.last_sync / 4),
                bytes_max,
            ),
            SyncPolicy::EveryRecord | SyncPolicy::UnsafeNoSync => (Duration::ZERO, u64::MAX),
        };
        if !delay.is_zero() {
            shared.group_forming.store(true, Ordering::Release);
            let deadline = Instant::now() + delay;
            while queue.requests.len() < self.last_group_len
                && queue.bytes < bytes_max
                && !queue.closed
            {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                queue = shared
                    .queue_ready
                    .wait_timeout(queue, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            shared.group_forming.store(false, Ordering::Release);
        }
        let mut group = Vec::new();
        let mut bytes = 0u64;
        while let Some(front) = queue.requests.front() {
            let len = front.frame_len();
            if !group.is_empty() && bytes + len > bytes_max {
                break;
            }
            bytes += len;
            if let Some(request) = queue.requests.pop_front() {
                group.push(request);
            }
        }
        queue.bytes -= bytes;
        self.last_group_len = group.len().max(1);
        let stats = &shared.stats;
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .largest_group
            .fetch_max(group.len() as u64, Ordering::Relaxed);
        Some(group)
    }

    fn commit(&mut self, group: Vec<Request>) {
        if let Some(cause) = self.shared.poisoned() {
            let location = self.shared.location.clone();
            for request in group {
                request.fail(Error::Poisoned {
                    location: location.clone(),
                    cause: Arc::clone(&cause),
                });
            }
            return;
        }
        match self.shared.config.sync_policy {
            SyncPolicy::EveryRecord => {
                for request in group {
                    self.commit_group(vec![request]);
                }
            }
            SyncPolicy::GroupCommit { .. } | SyncPolicy::UnsafeNoSync => self.commit_group(group),
        }
    }

    /// Rules 5 to 9 for one group.
    fn commit_group(&mut self, group: Vec<Request>) {
        let force_sync = !matches!(self.shared.config.sync_policy, SyncPolicy::UnsafeNoSync);
        let mut sync_waiters = Vec::new();
        let mut requests = group.into_iter();
        while let Some(request) = requests.next() {
            match request {
                Request::Sync { done } => sync_waiters.push(done),
                Request::Append {
                    payload,
                    payload_crc,
                    done,
                    _permits,
                } => {
                    let frame_len = format::frame_len(payload.len());
                    if !self.fits(frame_len) {
                        // Rule 5: finish the current part in the old segment, then rotate.
                        let rotated = self.finish_part(true).and_then(|()| self.rotate());
                        if let Err(err) = rotated {
                            let current = Request::Append {
                                payload,
                                payload_crc,
                                done,
                                _permits,
                            };
                            self.fail_all(err, current, requests, sync_waiters);
                            return;
                        }
                    }
                    self.frame(payload, payload_crc, done, _permits);
                }
            }
        }
        let sync = force_sync || !sync_waiters.is_empty();
        match self.finish_part(sync) {
            Ok(()) => {
                let durable = self.last_durable_lsn();
                for done in sync_waiters {
                    let _ = done.send(Ok(durable));
                }
            }
            Err(err) => {
                for done in sync_waiters {
                    let _ = done.send(Err(self.shared.replicate(&err)));
                }
            }
        }
    }

    /// Whether a frame fits in the active segment after what is buffered; also false when
    /// there is no active segment or the store seals segments on every sync.
    fn fits(&self, frame_len: u64) -> bool {
        match &self.active {
            None => false,
            Some(active) => {
                active.writer.size_bytes() + self.part_len + frame_len
                    <= self.shared.config.segment_size_max_bytes
            }
        }
    }

    fn frame(
        &mut self,
        payload: Bytes,
        payload_crc: Option<crc32fast::Hasher>,
        done: oneshot::Sender<Result<Lsn>>,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) {
        let Some(active) = self.active.as_mut() else {
            unreachable!("frame() is only called after fits() or rotate() made a segment active");
        };
        let offset = active.writer.size_bytes() + self.part_len;
        if offset >= active.next_index_at {
            self.part_index.push((self.next_lsn, offset));
            active.next_index_at = offset + self.shared.config.index_interval_bytes;
        }
        let crc = match &payload_crc {
            Some(payload_crc) => {
                format::record_crc_with(active.id, self.next_lsn, payload.len(), payload_crc)
            }
            None => format::record_crc(active.id, self.next_lsn, &payload),
        };
        let header = format::record_header(self.next_lsn, payload.len(), crc);
        self.push_buf(&header);
        if payload.len() >= VECTORED_PAYLOAD_MIN_BYTES {
            self.pieces.push(Piece::Payload(payload.clone()));
        } else {
            self.push_buf(&payload);
        }
        self.part_len += format::frame_len(payload.len());
        self.part.push(Framed {
            lsn: self.next_lsn,
            done,
            _permits: permits,
        });
        self.next_lsn = self.next_lsn.next();
    }

    /// Appends bytes to `buf`, extending the last piece if it is a range of `buf`.
    fn push_buf(&mut self, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        let end = self.buf.len();
        match self.pieces.last_mut() {
            Some(Piece::Buf { end: last_end, .. }) if *last_end == start => *last_end = end,
            _ => self.pieces.push(Piece::Buf { start, end }),
        }
    }

    /// Writes the buffered part, syncs it if asked, publishes and resolves it.
    fn finish_part(&mut self, sync: bool) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if self.part_len > 0 {
            let start = active.writer.size_bytes();
            let parts: Vec<&[u8]> = self
                .pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Buf { start, end } => &self.buf[*start..*end],
                    Piece::Payload(payload) => &payload[..],
                })
                .collect();
            let appended = active.writer.append(&parts);
            drop(parts);
            if let Err(e) = appended {
                // Rule 9: cut what may have been written, give the Lsns back.
                let name = shared.store.segment_name(active.id);
                let result = match active.writer.rewind(start) {
                    Ok(()) => Error::io_at("write segment", name, start, e),
                    Err(cut) => shared.poison(Error::io_at(
                        "cut back, after a failed write, segment",
                        name,
                        start,
                        cut,
                    )),
                };
                if let Some(first) = self.part.first() {
                    self.next_lsn = first.lsn;
                }
                if let Some(&(_, offset)) = self.part_index.first() {
                    active.next_index_at = offset;
                }
                self.buf.clear();
                self.pieces.clear();
                self.part_len = 0;
                self.part_index.clear();
                for framed in self.part.drain(..) {
                    let _ = framed.done.send(Err(shared.replicate(&result)));
                }
                return Err(result);
            }
            self.buf.clear();
            self.pieces.clear();
            self.part_len = 0;
            self.unsynced = true;
        }
        if sync && self.unsynced {
            let started = Instant::now();
            let synced = active.writer.sync();
            self.last_sync = started.elapsed();
            if let Err(e) = synced {
                // Rule 10: poison, never retry.
                let name = shared.store.segment_name(active.id);
                let err = shared.poison(Error::io_at(
                    "sync segment",
                    name,
                    active.writer.size_bytes(),
                    e,
                ));
                self.part_index.clear();
                for framed in self.part.drain(..) {
                    let _ = framed.done.send(Err(shared.replicate(&err)));
                }
                return Err(err);
            }
            self.unsynced = false;
            shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.publish();
        let mut sealed = Ok(());
        if !self.unsynced {
            shared
                .durable_end
                .store(self.next_lsn.get(), Ordering::Release);
            if shared.store.seals_on_sync() {
                // The records are durable whatever sealing does; it only decides whether
                // the log can go on.
                sealed = self.seal_active();
            }
        }
        // Rule 7: resolve only after publishing.
        shared
            .stats
            .records
            .fetch_add(self.part.len() as u64, Ordering::Relaxed);
        for framed in self.part.drain(..) {
            let _ = framed.done.send(Ok(framed.lsn));
        }
        sealed
    }

    /// Makes the written records visible to readers.
    fn publish(&mut self) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let mut index = self.shared.write_index();
        if let Some(segment) = index.segments.back_mut() {
            assert_eq!(
                segment.id, active.id,
                "the active segment is the newest in the index"
            );
            segment.end_lsn = self.next_lsn;
            segment.len_bytes = active.writer.size_bytes();
            segment.sparse.append(&mut self.part_index);
            segment.header_durable |= !self.unsynced;
        }
        drop(index);
        self.shared
            .acked_end
            .store(self.next_lsn.get(), Ordering::Release);
    }

    /// Rule 8: seal the active segment (after a sync covering all of it) and create the
    /// next one.
    fn rotate(&mut self) -> Result<()> {
        if self.active.is_some() {
            if self.unsynced {
                self.finish_part(true)?;
            }
            self.seal_active()?;
        }
        let id = self.next_segment_id;
        let header = SegmentHeader {
            segment_id: id,
            base_lsn: self.next_lsn,
        }
        .encode();
        let writer = self
            .shared
            .store
            .create(id, &header)
            .map_err(|e| Error::io("create segment", self.shared.store.segment_name(id), e))?;
        self.next_segment_id = id.next();
        self.shared
            .stats
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .write_index()
            .segments
            .push_back(IndexedSegment {
                id,
                base_lsn: self.next_lsn,
                end_lsn: self.next_lsn,
                len_bytes: header.len() as u64,
                sparse: Vec::new(),
                sealed: None,
                closed: false,
                header_durable: false,
            });
        self.active = Some(Active {
            id,
            writer,
            next_index_at: header.len() as u64,
        });
        // The header and the new name are not durable until the first sync.
        self.unsynced = true;
        Ok(())
    }

    /// Stops writing to the active segment for good (trimming preallocated space, durably)
    /// and hands readers a mapping of it.
    fn seal_active(&mut self) -> Result<()> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        debug_assert!(
            !self.unsynced,
            "a segment is sealed only once all of it is durable"
        );
        if let Err(e) = active.writer.finish() {
            let name = self.shared.store.segment_name(active.id);
            let len = active.writer.size_bytes();
            return Err(self.shared.poison(Error::io_at(
                "finish (trim and sync) segment",
                name,
                len,
                e,
            )));
        }
        // A failed mapping is not a durability problem: readers fall back to read_at.
        let sealed = if self.shared.store.keeps_sealed_bytes() {
            self.shared.store.read(active.id).ok()
        } else {
            None
        };
        let mut index = self.shared.write_index();
        if let Some(segment) = index.segments.iter_mut().rev().find(|s| s.id == active.id) {
            segment.closed = true;
            if sealed
                .as_ref()
                .is_some_and(|b| b.len() as u64 >= segment.len_bytes)
            {
                segment.sealed = sealed;
            }
        }
        Ok(())
    }

    fn last_durable_lsn(&self) -> Option<Lsn> {
        let end = self.shared.durable_end.load(Ordering::Acquire);
        (end > 1).then(|| Lsn::new(end - 1))
    }

    /// Fails the rest of a group after a rotation failed.
    fn fail_all(
        &mut self,
        err: Error,
        current: Request,
        rest: std::vec::IntoIter<Request>,
        sync_waiters: Vec<oneshot::Sender<Result<Option<Lsn>>>>,
    ) {
        current.fail(self.shared.replicate(&err));
        for request in rest {
            request.fail(self.shared.replicate(&err));
        }
        for done in sync_waiters {
            let _ = done.send(Err(self.shared.replicate(&err)));
        }
    }
}
