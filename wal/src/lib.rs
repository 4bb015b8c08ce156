//! A segmented, CRC-checked write-ahead log of opaque records addressed by [`Lsn`].
//!
//! ```no_run
//! # fn main() -> wal::Result<()> {
//! let wal = wal::Wal::open_dir("/var/lib/ember/wal/stream-0", wal::Config::default())?;
//! let lsn = wal.append_blocking(&b"a received block"[..])?; // durable when it returns
//! assert_eq!(&wal.read(lsn)?[..], b"a received block");
//! for record in wal.iter_from(lsn)? {
//!     let (lsn, bytes) = record?;
//!     # let _ = (lsn, bytes);
//! }
//! wal.truncate_before(lsn)?; // retention, once a checkpoint no longer needs older records
//! # Ok(()) }
//! ```
//!
//! From async code, `wal.append(bytes).await`; `Wal` is `Send + Sync`, so one `Arc<Wal>`
//! serves every task and thread, and their concurrent appends share syncs (group commit).
//! Several independent `Wal`s can live in one process, each with its own directory and
//! writer thread.
//!
//! # Guarantees
//!
//! - **An append resolves only once its record is durable** under the configured
//!   [`SyncPolicy`]: after a successful `fdatasync` covering it (`EveryRecord`,
//!   `GroupCommit`), and for a record in a new segment also after the directory fsync that
//!   makes the segment's name durable. `UnsafeNoSync` (benchmarks only) is the exception
//!   and says so in its name.
//! - **Lsns are dense and strictly increasing**: the first record is `Lsn(1)`, each next
//!   one is one more. An append that fails gives its Lsn back (nobody saw it acknowledged).
//! - **After a crash, opening the log recovers exactly a prefix of what was appended that
//!   contains every acknowledged record.** Only a torn tail of the newest segment is cut,
//!   and only when nothing valid follows the damage; any other damage (a bad checksum or
//!   an impossible length followed by valid records, damage in a sealed segment, a missing
//!   segment) makes `open` fail with an error naming the segment file and byte offset.
//!   Nothing is ever skipped silently. See "Recovery".
//! - **A failed sync poisons the log**: that call and every later one (appends, reads,
//!   retention) fail with [`Error::Poisoned`] naming the original failure. The sync is
//!   never retried, because after a failed `fdatasync` the kernel may have dropped the
//!   dirty pages and a retry could falsely succeed; restarting the process recovers by
//!   scanning the log.
//! - **A failed write** (a full disk) fails the appends it carried with an
//!   [`Error::Io`] naming the segment and offset, cuts the partial bytes, and the log keeps
//!   working once space is freed.
//! - **Every record read is checksum-verified.** Readers see only acknowledged records.
//! - **Memory is bounded**: appends in flight and their bytes are capped
//!   ([`Config::appends_in_flight_max`], [`Config::append_bytes_in_flight_max`]); past the
//!   caps, appenders wait. The in-memory index costs 16 bytes per
//!   [`Config::index_interval_bytes`] of log.
//! - **One writer per log**: opening takes an exclusive lock (`wal.lock`); a second
//!   open fails with [`Error::Locked`].
//!
//! Not guaranteed: damage confined to the very end of the newest segment is treated as a
//! torn write even if it was media corruption of the last acknowledged records (nothing
//! on disk can tell the two apart). A power loss that leaves a garbage sector *followed by
//! intact sectors* inside the last unsynced write makes `open` refuse with `Corrupt` at
//! that offset rather than guess; `ember wal inspect` shows where.
//!
//! # On-disk format
//!
//! A log is a sequence of segments, numbered 1, 2, 3, ... with no gaps (retention removes
//! a prefix). In a directory, segment `n` is the file `segment-<n as 20 decimal digits>.wal`.
//! All integers are little-endian. CRC-32 is the IEEE polynomial (crc32fast;
//! `crc32(b"123456789") == 0xCBF4_3926`).
//!
//! ```text
//! segment header, 32 bytes:
//!   offset size field
//!   0      8    magic           b"EMBERWAL"
//!   8      4    format_version  u32 = 1
//!   12     4    header_crc      u32 = CRC-32 of bytes 0..12 followed by bytes 16..32
//!   16     8    segment_id      u64, equal to the number in the segment's name
//!   24     8    base_lsn        u64, Lsn of the segment's first record
//!
//! then records, back to back, to the end of the segment:
//!   offset size field
//!   0      4    len             u32, payload length in bytes
//!   4      4    crc             u32 = CRC-32 of segment_id (u64) | lsn (u64) | len (u32) | payload
//!   8      8    lsn             u64, base_lsn + the record's index in the segment
//!   16     len  payload         the record's bytes, opaque
//! ```
//!
//! The record checksum covers the segment id and the Lsn, so a record that is intact but
//! in the wrong segment or position (a misdirected write, a copied file) fails it. Records
//! never span segments; a segment holds at most [`Config::segment_size_max_bytes`] bytes.
//! There is no padding and no trailer: a segment ends after its last record. The layout is
//! pinned by golden-bytes tests in [`mod@format`]; changing it means a new `format_version`.
//!
//! # Recovery
//!
//! Opening a log lists its segments, maps each (sealed segments are immutable), scans
//! every record frame and checks every checksum, then decides per segment with one
//! decision table ([`recovery::TABLE`], with its reasons, in the [`recovery`] module):
//!
//! | finding | decision |
//! |---|---|
//! | every byte is a valid record | accept |
//! | newest segment: damage (cut frame, impossible length, bad checksum) with nothing valid after it | cut the torn tail at the damage offset |
//! | newest segment: unreadable header and nothing valid after it | delete it (it was being created) |
//! | damage followed by valid records, anywhere | fail: `Corrupt`, segment + offset |
//! | damage in a sealed (non-newest) segment | fail: `Corrupt`, segment + offset |
//! | a valid frame with an out-of-sequence Lsn, or another segment's header | fail: `Corrupt` |
//! | segment ids or Lsns not contiguous between neighbours | fail: `MissingSegment` |
//! | newer format version | fail: `UnsupportedVersion` |
//!
//! After recovery every existing segment is sealed; the next append starts a new segment.
//! [`recovery::analyze`] runs the same scan without changing anything (the CLI's
//! `inspect` and `verify`).
//!
//! # Storage backends
//!
//! Two layers, both public:
//!
//! - [`fs`]: a directory of files, exactly the POSIX subset durable code needs, with
//!   [`fs::LocalDir`] (real files, `fdatasync`, directory fsync) and [`fs::SimDir`] (an
//!   in-memory page-cache model with seeded crashes, failing syncs and a full disk). Not
//!   WAL-specific: the checkpoint crate publishes through it ([`fs::write_atomic`]).
//! - [`store`]: what the WAL needs at the level of segments ([`store::SegmentStore`]),
//!   with [`store::DirSegmentStore`] over any [`fs::Dir`]. Opened through
//!   [`Wal::open_dir`], it preallocates segments (zero-filled ahead of use by a
//!   background thread, or recycled from segments that retention retired), so that each
//!   `fdatasync` writes data only instead of also writing a new file length and block
//!   allocation; unused space is trimmed when a segment is sealed, so the
//!   format is the same either way. The [`store`] module docs explain how an object-store
//!   backend (one object per group commit, create-only conditional puts) maps onto the
//!   same trait.
//! - [`objstore`]: the object-store backend ([`objstore::ObjectSegmentStore`]: one object
//!   per group commit, create-only conditional puts, retries within a time bound) and
//!   storage URLs (`s3://`, `file://`, `memory://`, `hdfs://`), opened with
//!   [`Wal::open_url`].
//!
//! # Unsafe code
//!
//! The crate denies `unsafe` everywhere except [`fs`]'s private `mmap` module, whose one
//! `unsafe` call maps sealed segments read-only (memmap2); its safety argument is written
//! there. (`forbid` would not let that one module opt out, hence `deny`.)
#![deny(unsafe_code)]

mod config;
mod error;
pub mod format;
pub mod fs;
mod index;
mod lsn;
pub mod objstore;
pub mod recovery;
pub mod store;
mod wal;
pub mod writer;

pub use config::{Config, SyncPolicy};
pub use error::{Error, Result};
pub use lsn::{Lsn, SegmentId};
pub use wal::{Iter, RecoveryReport, Wal, WalStats};
