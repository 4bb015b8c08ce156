//! The crate's one error type. Every variant names what it is about: the segment (file
//! path or object key), the byte offset, the Lsn, or the setting.

use std::io;
use std::sync::Arc;

use crate::lsn::{Lsn, SegmentId};

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`crate::Config`] value is out of range or inconsistent with another.
    #[error("invalid WAL setting {setting} = {value}: {reason}")]
    InvalidConfig {
        /// The setting's name, as in `Config`.
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// What the value must satisfy.
        reason: String,
    },

    /// An append larger than `record_size_max_bytes`. Nothing was written.
    #[error("record of {len_bytes} bytes exceeds record_size_max_bytes = {max_bytes}")]
    RecordTooLarge {
        /// The record's length.
        len_bytes: u64,
        /// The configured limit.
        max_bytes: u64,
    },

    /// An operating-system (or object-store) error.
    #[error("{op} {target}{}", at_offset(*.offset))]
    Io {
        /// What was being done ("write segment", "list", ...).
        op: &'static str,
        /// The segment, file or directory involved.
        target: String,
        /// Byte offset within `target`, where meaningful.
        offset: Option<u64>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Bytes that are not what the log wrote: a failed checksum, an impossible length, a
    /// wrong Lsn, or damage followed by valid records. Never skipped silently.
    #[error("corrupt WAL segment {segment} at byte {offset}{}: {reason}", lsn_note(*.lsn))]
    Corrupt {
        /// The segment's file path or object key.
        segment: String,
        /// Byte offset of the first bad byte within the segment.
        offset: u64,
        /// The Lsn expected at that position, if known.
        lsn: Option<Lsn>,
        /// What is wrong there.
        reason: String,
    },

    /// A segment is missing between two present ones (or its records do not continue the
    /// previous segment's Lsns).
    #[error("WAL segment missing before {segment}: {detail}")]
    MissingSegment {
        /// The segment found after the gap.
        segment: String,
        /// The segment id that should have been there.
        expected_id: SegmentId,
        /// What exactly does not line up.
        detail: String,
    },

    /// A segment written by a newer (or unknown) format version.
    #[error(
        "WAL segment {segment} has format version {version}; this build reads version {supported}"
    )]
    UnsupportedVersion {
        /// The segment's file path or object key.
        segment: String,
        /// The version in its header.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },

    /// An earlier sync failed, so the durable state is unknown and the log accepts no
    /// more work. Restart the process: opening the log again recovers by scanning it.
    #[error(
        "WAL {location} is poisoned by an earlier failure and refuses further calls; restart \
         to recover by scanning the log (original failure: {})", crate::wal::error_chain(&**.cause)
    )]
    Poisoned {
        /// The log's location.
        location: String,
        /// The failure that poisoned it.
        cause: Arc<Error>,
    },

    /// The record was removed by retention (`truncate_before`).
    #[error("Lsn {lsn} was removed by retention; the oldest record is {}", lsn_or_none(*.first))]
    LsnTruncated {
        /// The Lsn asked for.
        lsn: Lsn,
        /// The oldest Lsn still in the log.
        first: Option<Lsn>,
    },

    /// The Lsn has not been appended (or not yet acknowledged).
    #[error("Lsn {lsn} is beyond the last acknowledged record ({})", lsn_or_none(*.last))]
    LsnNotWritten {
        /// The Lsn asked for.
        lsn: Lsn,
        /// The newest acknowledged Lsn.
        last: Option<Lsn>,
    },

    /// Another process (or another `Wal` in this one) has the log open for writing.
    #[error("WAL {location} is already open for writing by another process or handle")]
    Locked {
        /// The log's location.
        location: String,
        /// The lock error.
        #[source]
        source: io::Error,
    },

    /// The log was opened with [`crate::Wal::open_read_only`].
    #[error("WAL {location} is open read-only")]
    ReadOnly {
        /// The log's location.
        location: String,
    },

    /// A storage URL that cannot be parsed or names something unsupported.
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidStorageUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The storage a URL names cannot be used: the bucket is missing, the credentials are
    /// refused, the server does not answer. Reported at start-up, before any data is
    /// accepted.
    #[error("storage {url} is not usable: {reason}")]
    StorageUnavailable {
        /// The URL.
        url: String,
        /// What failed, and which setting to check.
        reason: String,
    },

    /// The log is closing or closed.
    #[error("WAL {location} is closed")]
    Closed {
        /// The log's location.
        location: String,
    },
}

fn at_offset(offset: Option<u64>) -> String {
    offset.map(|o| format!(" at byte {o}")).unwrap_or_default()
}

fn lsn_note(lsn: Option<Lsn>) -> String {
    lsn.map(|l| format!(" (Lsn {l})")).unwrap_or_default()
}

fn lsn_or_none(lsn: Option<Lsn>) -> String {
    lsn.map_or_else(|| "none (the log is empty)".to_owned(), |l| l.to_string())
}

impl Error {
    pub(crate) fn io(op: &'static str, target: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            op,
            target: target.into(),
            offset: None,
            source,
        }
    }

    pub(crate) fn io_at(
        op: &'static str,
        target: impl Into<String>,
        offset: u64,
        source: io::Error,
    ) -> Error {
        Error::Io {
            op,
            target: target.into(),
            offset: Some(offset),
            source,
        }
    }

    /// True for [`Error::Poisoned`].
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Error::Poisoned { .. })
    }
}
