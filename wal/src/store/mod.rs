//! What the WAL needs from storage, at the level of segments: [`SegmentStore`].
//!
//! A *segment* is a self-describing unit of the log: a header (magic, format version,
//! segment id, base Lsn) followed by record frames (see the crate docs, "On-disk format").
//! The WAL decides what goes into a segment and when; a store only keeps the bytes.
//!
//! # The contract
//!
//! 1. [`SegmentStore::create`] starts a new segment with its header. Nothing about it is
//!    durable yet.
//! 2. [`SegmentWriter::append`] adds frames; [`SegmentWriter::sync`] makes everything
//!    appended so far durable, *including the segment's existence*. The WAL acknowledges a
//!    record only after a `sync` covering it returned `Ok`.
//! 3. A failed `sync` leaves the state unknown; the WAL never retries it (it poisons
//!    itself). A failed `append` may leave a prefix of the bytes; the WAL cuts it with
//!    [`SegmentWriter::rewind`] before appending anything else.
//! 4. A segment is *sealed* once the WAL stops appending to it; sealed segments are never
//!    modified again (only [`SegmentStore::delete`]d by retention), which is what makes
//!    [`SegmentStore::read`] through a memory map sound.
//! 5. If [`SegmentStore::seals_on_sync`] is true, every `sync` also seals the segment: the
//!    WAL starts a new segment for the next group of records.
//! 6. [`SegmentStore::list`] returns every segment whose existence was made durable, and
//!    possibly segments created later that happen to have survived.
//!
//! # Backends
//!
//! - [`DirSegmentStore`]: one file per segment (`segment-<id, 20 digits>.wal`) in a
//!   [`crate::fs::Dir`], so over real files ([`crate::fs::LocalDir`]) or the simulated page
//!   cache ([`crate::fs::SimDir`]). `append` is `pwrite(2)` on the open file; `sync` is
//!   `fdatasync(2)`, plus an `fsync(2)` of the directory the first time (the new name);
//!   sealed segments are read through memmap2. With preallocation
//!   ([`DirSegmentStore::with_preallocation`]), segments are zero-filled and synced ahead
//!   of use by a background thread, so appends overwrite allocated blocks and each
//!   `fdatasync` writes data only (no metadata write for a new length);
//!   `finish` trims the unused zeros when the segment is sealed.
//!
//! - [`crate::objstore::ObjectSegmentStore`]: an object store (S3 and compatible, HDFS,
//!   in-memory, through the `object_store` crate). It maps onto the same contract without
//!   any in-place append:
//!   - `seals_on_sync()` is `true`: each group commit becomes one object. `create` only
//!     starts an in-memory buffer holding the header; `append` adds frames to the buffer;
//!     `sync` uploads the buffer with `put_opts(PutMode::Create)` (a create-only
//!     conditional put, so two writers can never both own a segment id) under the key
//!     `<prefix>/segment-<id>.wal`, and returns only after the put is acknowledged
//!     (retried within a time bound; a lost acknowledgement is recognised by reading the
//!     object back). The writer's group-commit window (`delay_us_max`, `bytes_max` in
//!     [`crate::SyncPolicy::GroupCommit`]) is then the flush window: it bounds the object
//!     size and how long an append waits for its put.
//!   - Each object is self-describing: its header carries its segment id and base Lsn,
//!     and every record's checksum covers the segment id, so an object under the wrong key
//!     is detected.
//!   - `list` is a prefix listing sorted by id; recovery then checks ids and Lsns are
//!     contiguous exactly as for files, and (a put being atomic) treats every object as
//!     sealed, so damage in the newest object is corruption too, never a torn tail.
//!   - `read` / `read_at` are served from a bounded cache of whole objects filled by GETs
//!     (eight objects at a time, ahead of sequential readers); `keeps_sealed_bytes()` is
//!     false, so the log does not hold sealed objects in memory. `delete` is a DELETE;
//!     `rewind` only drops buffered bytes (nothing was uploaded); `finish` has nothing to
//!     do; `truncate` is never needed and returns `Unsupported`.
//!   - `lock`: object stores have no advisory locks; within a process a second writer is
//!     refused, and across processes the create-only put is what stops a second writer
//!     (its first put of an existing id fails).
//!
//! Nothing in the trait assumes a file that is appended to in place: a segment is
//! written by one [`SegmentWriter`] and is durable after `sync`, however the backend
//! lays that out.

mod dir;

use std::fmt;
use std::io;

use bytes::Bytes;

use crate::lsn::SegmentId;

pub use dir::{
    DirSegmentStore, DirStoreStats, LOCK_FILE_NAME, PREPARED_FILE_PREFIX, PREPARED_FILES_MAX,
    ZERO_FILL_BYTES_PER_SYNC_MAX,
};

/// Storage for the segments of one log. See the module docs for the contract.
pub trait SegmentStore: Send + Sync + fmt::Debug {
    /// Where the log lives (a directory path or a bucket prefix), for messages.
    fn location(&self) -> String;

    /// The name of one segment (file path or object key), for messages.
    fn segment_name(&self, id: SegmentId) -> String;

    /// True if each [`SegmentWriter::sync`] also seals the segment (object stores).
    ///
    /// Such a store writes each segment whole, atomically (one put), so no segment can
    /// have a torn tail: recovery treats every segment, the newest included, as sealed,
    /// and damage anywhere is corruption (see [`crate::recovery`]).
    fn seals_on_sync(&self) -> bool;

    /// Whether the log keeps each sealed segment's bytes (from [`SegmentStore::read`]) in
    /// its index for reads. True (the default) where `read` is a memory map, which costs
    /// address space rather than memory; false where `read` copies the segment into
    /// memory (object stores), which then serve reads through [`SegmentStore::read_at`]
    /// from a bounded cache of their own, so the log's memory does not grow with its size.
    fn keeps_sealed_bytes(&self) -> bool {
        true
    }

    /// Ids of the segments present, in increasing order.
    fn list(&self) -> io::Result<Vec<SegmentId>>;

    /// Starts a new segment whose first bytes are `header`. Fails with `AlreadyExists` if a
    /// segment with this id exists.
    fn create(&self, id: SegmentId, header: &[u8]) -> io::Result<Box<dyn SegmentWriter>>;

    /// The whole content of a sealed segment (or of any segment during recovery, before
    /// anything writes to the log).
    fn read(&self, id: SegmentId) -> io::Result<Bytes>;

    /// `len` bytes at `offset` of any segment, including the one being written (for bytes
    /// that were already appended).
    fn read_at(&self, id: SegmentId, offset: u64, len: usize) -> io::Result<Bytes>;

    /// Cuts a segment to `len` bytes and makes that durable before returning. Used by
    /// recovery to remove a torn tail.
    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()>;

    /// Deletes a segment durably: after `Ok`, a crash does not bring it back.
    fn delete(&self, id: SegmentId) -> io::Result<()>;

    /// Takes the exclusive lock that keeps a second writer out of this log, held until
    /// the guard drops.
    fn lock(&self) -> io::Result<Box<dyn Send + Sync>>;
}

/// Appends to one segment. Created by [`SegmentStore::create`].
pub trait SegmentWriter: Send + fmt::Debug {
    /// Appends the concatenation of `parts` (whole record frames; the parts let large
    /// payloads go to storage without being copied into one buffer first). Not durable
    /// until [`SegmentWriter::sync`].
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<()>;

    /// Makes every byte appended so far durable, and the segment's existence with it.
    fn sync(&mut self) -> io::Result<()>;

    /// Drops everything after the first `len` bytes, after a failed append. Nothing
    /// beyond `len` was synced.
    fn rewind(&mut self, len: u64) -> io::Result<()>;

    /// Bytes in the segment so far (header included), as far as this writer knows.
    fn size_bytes(&self) -> u64;

    /// The WAL stops appending to this segment (it is being sealed, or the log closes):
    /// release space reserved beyond [`SegmentWriter::size_bytes`] (preallocation) and make
    /// the segment's final length durable before returning. A failure is treated like a
    /// failed sync.
    fn finish(&mut self) -> io::Result<()>;
}
