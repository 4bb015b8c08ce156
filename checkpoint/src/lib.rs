//! Versioned, checksummed metadata checkpoints (data only, never closures) and state
//! snapshots, published atomically, read back with a fallback rule, and retained by count.
//!
//! ```
//! use std::sync::Arc;
//! use checkpoint::{CheckpointStore, Config, DirBackend};
//! # fn main() -> checkpoint::Result<()> {
//! # let dir = Arc::new(wal::fs::SimDir::new());
//! // A writer over a directory (`CheckpointStore::open_dir(path, config)` for real files).
//! let store = CheckpointStore::open(Arc::new(DirBackend::new(dir)), Config::default())?;
//! match store.restore()? {
//!     None => { /* first start: build the pipeline from scratch */ }
//!     Some(restored) => {
//!         // Refuses a restart if the code changed the graph incompatibly.
//!         # let graph = restored.checkpoint.parts().graph.clone();
//!         restored.check_compatible(&graph, 1000)?;
//!         // ... re-run restored.checkpoint.parts().pending_batches, restore restored.state ...
//!     }
//! }
//! # let checkpoint = checkpoint::conformance::sample_checkpoint(3);
//! // Per checkpoint: write each stateful operator's snapshot, then publish.
//! let state = store.put_snapshot("counts", checkpoint.batch_time_ms(), b"encoded state")?;
//! # let _ = state;
//! store.publish(&checkpoint)?;
//! // Only now may data no retained checkpoint references be deleted.
//! let horizon = store.references().expect("a checkpoint was just published");
//! # let _ = horizon;
//! # Ok(()) }
//! ```
//!
//! # What a checkpoint contains
//!
//! Only data ([`CheckpointParts`]); the pipeline graph is rebuilt from code at every start,
//! so a code upgrade can restart from an old checkpoint when the graph is compatible
//! ([`compat`]). Spark Streaming serializes the whole graph with its closures instead, which
//! is why its checkpoints break on any code change (spark-streaming.md §3.6).
//!
//! - the checkpoint's **batch time** and the **grid** (zero time, batch interval);
//! - **pending batches** (allocated, not completed) with each stream's inputs: blocks (id,
//!   record count, length, and where the data is: a data WAL Lsn, replica peers, or memory
//!   only in ignore mode), source **offset ranges** `[from_offset, until_offset)`, or
//!   **file names**; also *remembered* batches (completed, still read by windows) and
//!   *unallocated* blocks (acknowledged, not yet in a batch);
//! - the driver **metadata log Lsn** the checkpoint covers (restart replays after it);
//! - per-stream **data WAL truncation points**;
//! - **state snapshot references** (operator id, snapshot name, CRC-32, length, batch);
//! - a **graph description** (operators with a stable id, kind, parents, input stream,
//!   state type and version) for the compatibility check;
//! - free-form **source positions** (e.g. the acknowledged line of the test source).
//!
//! [`Checkpoint::new`] validates it (batch times on the grid, pending batches not after the
//! checkpoint, no duplicates, every stream an input of the graph, every snapshot owned by a
//! stateful operator, ...); reading a checkpoint validates it again.
//!
//! # The publish rule
//!
//! A location (a directory or a bucket prefix) has one writer ([`CheckpointStore::open`]
//! takes a lock). [`CheckpointStore::publish`] writes checkpoint number `n + 1`, where `n` is
//! the highest present, under the name `checkpoint-<n+1, 20 digits>.ckpt` ([`names`]),
//! **create-only and atomically**: locally, [`wal::fs::write_atomic`] writes a temporary
//! file, `fdatasync`s it, renames it to the final name and fsyncs the directory; on an
//! object store, one conditional put of the final key ([`backend`]). After `Ok` the
//! checkpoint survives any crash; before it, a crash leaves the previous newest checkpoint,
//! or this one complete, never a partial file under a checkpoint name. A failed write (a
//! failed fsync above all) poisons the store: nothing more is written until a restart.
//! State snapshots are written the same way ([`CheckpointStore::put_snapshot`]), before the
//! checkpoint that references them; publish refuses references to snapshots not written.
//!
//! # The fallback rule
//!
//! [`CheckpointStore::latest`] (and [`CheckpointStore::restore`], which also loads the state
//! snapshots) lists the location and tries checkpoints from the highest sequence down. A
//! checkpoint that is torn, fails its CRC, does not parse or validate, is stored under
//! another checkpoint's name, or (for `restore`) has a missing or damaged snapshot, is
//! skipped with a warning naming it and why ([`Restored::skipped`]); the first good one is
//! used. No checkpoint at all is `Ok(None)` (a first start); checkpoints that are all bad
//! are [`Error::NoValidCheckpoint`], listing each. A checkpoint of a newer format version
//! is never skipped ([`Error::UnsupportedVersion`]): falling back past it would silently
//! rewind a pipeline an upgrade had moved on.
//!
//! # Retention and cleanup
//!
//! After each publish, the newest [`Config::checkpoints_retained`] *valid* checkpoints are
//! kept (damaged ones newer than the oldest of them too, for inspection); older ones are
//! deleted durably. Then every snapshot that no retained valid checkpoint references, and
//! that was not written since the previous publish, is deleted. Deleting checkpoints first
//! means a crash can never bring back a checkpoint whose snapshots are gone.
//!
//! [`CheckpointStore::references`] gives the engine the cleanup horizon over every retained
//! checkpoint ([`References`]): blocks, snapshots, files, the lowest offsets, per-stream
//! data WAL and metadata log truncation points, and the oldest batch time still needed. The
//! engine deletes data only below it; because it covers *all* retained checkpoints, a
//! fallback finds its data. Everything is keyed by batch time, Lsn, id or name, never by
//! wall clock.
//!
//! # Byte format
//!
//! Checkpoints and snapshots are an envelope around a body. All integers are little-endian;
//! CRC-32 is the IEEE polynomial (crc32fast; `crc32(b"123456789") == 0xCBF4_3926`).
//!
//! ```text
//! offset size field
//! 0      8    magic           b"EMBERCKP" (checkpoint) or b"EMBERSNP" (state snapshot)
//! 8      4    format_version  u32: checkpoint format 1; snapshot envelope 1
//! 12     8    body_len        u64: bytes after the header; the file ends right after them
//! 20     4    crc             u32: CRC-32 of bytes 0..20 followed by the body
//! 24     len  body
//! ```
//!
//! These 24 bytes keep this meaning in every version, so the CRC is checked before the
//! version (a flipped version bit reads as corruption). Checks and errors, in order: fewer
//! than 24 bytes or fewer than `24 + body_len` is [`Error::Truncated`] (torn), a wrong
//! magic [`Error::BadMagic`], bytes after the body [`Error::TrailingBytes`], a wrong CRC
//! [`Error::ChecksumMismatch`], a version outside `1..=` this build's
//! [`Error::UnsupportedVersion`] ([`format::open`]).
//!
//! A snapshot's body is the engine's encoded state, opaque here. A checkpoint's body is
//! compact UTF-8 JSON, one object `{"sequence":N,"checkpoint":{...}}`, where `sequence`
//! equals the number in the file name (a mismatch is [`Error::Misplaced`]) and
//! `checkpoint` has these fields, in this order (types: `u32`/`u64` JSON integers, `Lsn` a
//! JSON integer):
//!
//! ```text
//! batch_time_ms u64, batch_interval_ms u64, zero_time_ms u64, metadata_log_lsn Lsn,
//! pending_batches    [ {batch_time_ms, inputs: [StreamInput]} ]
//! remembered_batches [ same ]
//! unallocated        [ StreamInput ]
//! data_wal_truncation [ {stream u32, truncate_before Lsn} ]
//! state_snapshots    [ {operator, taken_at_ms u64, object, crc32 u32, len_bytes u64} ]
//! graph {operators: [ {id, kind, name, parents: [id], input_stream u32|null, output bool,
//!                      state: {key_type, state_type, version u32}|null} ]}
//! source_positions   [ {stream u32, position: {string: string}} ]
//!
//! StreamInput = {stream u32, data: {"blocks": [BlockRef]}
//!                                 | {"offset_ranges": [{topic, partition u32, from_offset u64, until_offset u64}]}
//!                                 | {"files": [string]}}
//! BlockRef    = {seq u64, records u64, len_bytes u64,
//!                location: {"wal": {log_stream u32, lsn Lsn}} | {"replicas": [string]} | "memory_only"}
//! ```
//!
//! The golden-bytes test `checkpoint_bytes_are_stable` (tests/format.rs) pins one file byte
//! for byte. Extending: a new field must be optional (readers fill in a default when it is
//! missing, and ignore fields they do not know), so old and new readers read each other's
//! checkpoints; a change an old reader would misread (a new enum variant, a new meaning)
//! needs a new format version, which old readers refuse clearly ([`model`] docs).
//!
//! ## Why JSON
//!
//! The body is read once per restart and written once per checkpoint, so its speed does not
//! matter; what matters is that it stays readable and evolvable for years. JSON lets an
//! operator read a checkpoint with standard tools (`tail -c +25 FILE | jq .`) when
//! something is wrong, is stable by definition (RFC 8259, and serde_json has been at 1.x
//! since 2017), and lets new optional fields be added without breaking old readers, which a
//! non-self-describing binary encoding (postcard, bincode) cannot. The cost is size: a
//! block reference is about 90 bytes instead of about 15, so a checkpoint with 10,000
//! pending blocks is about 1 MB; [`Config::checkpoint_size_max_bytes`] bounds it. Integers
//! stay exact (serde_json reads and writes all `u64`; note that `jq` rounds above 2^53).
//!
//! # Object storage: the naming rule
//!
//! S3 has no atomic rename and no atomic "replace a pointer", so the design has no temporary
//! objects and no pointer object: each checkpoint is written once under a new name with a
//! create-only conditional put (visible whole or not at all), and **the listing alone finds
//! the newest**: the highest sequence among names matching
//! `checkpoint-<20 digits>.ckpt` (zero-padded, so key order is sequence order). Two writers
//! choosing the same sequence collide on the conditional put ([`Error::Conflict`]).
//! Snapshots are named `state-<batch ms>-<crc32>-<operator>.snap`, so a name is only ever
//! written with one content. See [`names`] and [`backend`].
//!
//! # What the engine provides
//!
//! To fill a checkpoint: the grid; the batch time; the allocations of pending and
//! remembered batches and the unallocated blocks (from its metadata log); the metadata log
//! Lsn they reflect; per WAL-mode stream the Lsn below which it needs no record (declare
//! every WAL stream in every checkpoint, or it is never truncated); a state snapshot per
//! stateful operator (encoded by the engine, written with
//! [`CheckpointStore::put_snapshot`]); a [`GraphDescription`] of its graph with stable
//! operator ids; and source positions. At restart it checks compatibility
//! ([`Restored::check_compatible`]) before using the checkpoint.
#![forbid(unsafe_code)]

pub mod backend;
pub mod compat;
mod config;
pub mod conformance;
mod describe;
mod error;
pub mod format;
pub mod model;
pub mod names;
mod references;
mod store;

pub use backend::{CheckpointBackend, DirBackend, ObjectBackend, backend_for_url};
pub use compat::GraphChange;
pub use config::Config;
pub use describe::{DescribedCheckpoint, Description};
pub use error::{Error, Result};
pub use model::{
    BatchInputs, BlockId, BlockLocation, BlockRef, Checkpoint, CheckpointParts, FORMAT_VERSION,
    GraphDescription, InputData, OffsetRange, OperatorDesc, SourcePosition, StateDesc, StateRef,
    StoredCheckpoint, StreamInput, WalTruncation,
};
pub use references::References;
pub use store::{CheckpointInfo, CheckpointStore, Published, Restored, Skipped};
