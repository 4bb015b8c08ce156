//! The WAL on object storage (S3 and compatible, HDFS, in-memory), through the
//! `object_store` crate: [`ObjectSegmentStore`], storage URLs ([`StorageUrl`]), and the
//! retried client both use ([`ObjectClient`]), which the checkpoint crate publishes through
//! too.
//!
//! # Object layout
//!
//! A log at `s3://bucket/prefix` is the objects `prefix/segment-<id, 20 digits>.wal`, one
//! per group commit, numbered 1, 2, 3, ... without gaps (retention deletes a prefix of
//! them). Each object is one complete segment in exactly the byte format of a segment
//! file (see the crate docs, "On-disk format"): the 32-byte header with its segment id and
//! base Lsn, then the group's records, each with its CRC over the segment id, the Lsn and
//! the payload. So `ember wal inspect` and recovery read both alike, an object under the
//! wrong key fails its checksums, and key order (the ids are zero-padded) is Lsn order.
//! Objects with other names under the prefix are ignored. The golden test
//! `object_layout_is_stable` (tests/object_store.rs) pins the keys and bytes of a small
//! log.
//!
//! ```text
//! s3://bucket/prefix/segment-00000000000000000001.wal   header(id 1, base Lsn 1) records 1..=3
//! s3://bucket/prefix/segment-00000000000000000002.wal   header(id 2, base Lsn 4) records 4..=4
//! s3://bucket/prefix/segment-00000000000000000003.wal   header(id 3, base Lsn 5) records 5..=9
//! ```
//!
//! # Writing: one object per flush window
//!
//! [`ObjectSegmentStore::seals_on_sync`] is true, so the WAL's writer (see
//! [`crate::writer`]) turns each group commit into one object. The group-commit window is
//! the flush window: a group holds every append queued while the previous put was in
//! flight, closed early at [`crate::SyncPolicy::GroupCommit`]'s `bytes_max` and at
//! `segment_size_max_bytes`; it waits for followers at most `delay_us_max` (and a quarter
//! of the previous put's time). The put is `PutMode::Create` (`If-None-Match: *` on S3), a
//! create-only conditional put, and **an append resolves only after its object's put was
//! acknowledged**. Concurrent appenders share the put, so the cost is one request per
//! window, not per record (BENCHMARKS.md, "WAL on object storage").
//!
//! # Failures: retries, lost acknowledgements, fencing
//!
//! Every request is bounded by [`RetryPolicy`]: one attempt at most `attempt_timeout`,
//! retried with doubling backoff while the failure may be transient (network, server
//! error, timeout), for at most `total_max`. Then the put fails with an error naming the
//! object, the attempts and the last failure; the WAL treats a failed sync as it does on
//! disk: it **poisons itself and accepts nothing more** (no append is acknowledged that is
//! not stored); a restart recovers by listing.
//!
//! A put whose acknowledgement was lost (it succeeded, the client saw an error) is
//! retried; the create-only retry then finds the object. The client reads it back: the
//! same bytes mean the earlier attempt succeeded and the put is done; other bytes mean
//! another writer created that segment, and the put fails (`AlreadyExists`). Two writers
//! on one log (after a split brain, say) therefore never overwrite each other: the one
//! whose put of the next id loses is poisoned before acknowledging anything in it. Within
//! one process a second writer is refused at open, like a locked directory.
//!
//! # Recovery and retention
//!
//! Opening lists the prefix, orders the segment objects by id (= Lsn order), reads each
//! (eight at a time, ahead of the scan), verifies every CRC and applies the same decision
//! table as for files ([`crate::recovery`]), with one difference: a put is atomic, so no
//! object can be torn and damage anywhere, the newest object included, is corruption.
//! A missing object in the middle of the Lsn range is [`crate::Error::MissingSegment`]
//! naming the object after the gap. Retention ([`crate::Wal::truncate_before`]) deletes
//! whole objects below the truncation point, oldest first.
//!
//! Reads go through a bounded cache of whole objects
//! ([`READ_CACHE_BYTES_DEFAULT`]): the log does not keep sealed objects in memory, so its
//! memory does not grow with its length.
//!
//! # Storage URLs
//!
//! [`StorageUrl::parse`] accepts:
//!
//! | URL | storage |
//! |---|---|
//! | `s3://bucket/prefix` | Amazon S3 or an S3-compatible server |
//! | `file:///absolute/path` (or a plain path) | local files with `fdatasync` (the [`crate::fs`] layer, not an object store) |
//! | `memory://name/prefix` | an in-memory object store shared by name within the process (tests, trials) |
//! | `hdfs://namenode:port/path` | HDFS through `hdfs-native-object-store`, with the `hdfs` cargo feature |
//!
//! S3 settings come from the standard environment variables, read by `object_store`:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`), `AWS_ENDPOINT` (an S3-compatible server's URL), and
//! `AWS_ALLOW_HTTP=true` for a local server without TLS. [`StorageUrl::connect`] makes one
//! listing request at start-up, so a bad URL, a missing bucket or refused credentials are
//! one clear error ([`crate::Error::InvalidStorageUrl`],
//! [`crate::Error::StorageUnavailable`]) naming the URL and the setting to check, before
//! any data is accepted.
//!
//! **HDFS is compiled, not tested**: CI builds the `hdfs` feature, but there is no HDFS
//! name node on the project's machines, so no test runs against one. Its `put` with
//! `PutMode::Create` does not overwrite, which is what the WAL relies on.

mod client;
mod segments;
mod url;

pub use client::{ObjectClient, RequestStats, RetryPolicy};
pub use segments::{ObjectSegmentStore, READ_AHEAD_OBJECTS, READ_CACHE_BYTES_DEFAULT};
pub use url::{ObjectOptions, StorageUrl};

use std::sync::Arc;

use crate::config::Config;
use crate::error::Result;
use crate::wal::Wal;

impl Wal {
    /// Opens (creating if needed) the log at a storage URL: a local directory for
    /// `file://` and plain paths ([`Wal::open_dir`]), else an object store, checked at
    /// start-up (see the [`objstore`](crate::objstore) docs).
    pub fn open_url(url: &StorageUrl, options: &ObjectOptions, config: Config) -> Result<Wal> {
        match url {
            StorageUrl::Local(path) => Wal::open_dir(path, config),
            _ => {
                config.validate()?;
                let client = url.connect(options)?;
                Wal::open(Arc::new(ObjectSegmentStore::new(client)), config)
            }
        }
    }
}
