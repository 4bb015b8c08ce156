//! The crate's one error type. Every variant names what it is about: the checkpoint or
//! snapshot (file path or object key), the byte offset, the format version, the field or the
//! setting.

use std::io;

use crate::compat::GraphChange;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with checkpoints and state snapshots.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A storage URL that is invalid or names storage that cannot be used (a missing
    /// bucket, refused credentials); the message names the URL and the setting to check.
    #[error("checkpoint location: {0}")]
    Storage(String),

    /// A [`crate::Config`] value is out of range.
    #[error("invalid checkpoint setting {setting} = {value}: {reason}")]
    InvalidConfig {
        /// The setting's name, as in `Config`.
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// What the value must satisfy.
        reason: String,
    },

    /// An operating-system or object-store error.
    #[error("{op} {target}")]
    Io {
        /// What was being done ("read checkpoint", "publish checkpoint", "list", ...).
        op: &'static str,
        /// The file, object or directory involved.
        target: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The file ends before the envelope says it should: a torn write (or a truncated copy).
    #[error(
        "torn {what} {name}: {len_bytes} bytes, but the envelope needs {needed_bytes} (the file ends at byte {len_bytes})"
    )]
    Truncated {
        /// "checkpoint" or "state snapshot".
        what: &'static str,
        /// The file path or object key.
        name: String,
        /// The bytes present.
        len_bytes: u64,
        /// The bytes the header (or its declared body length) requires.
        needed_bytes: u64,
    },

    /// The first 8 bytes are not the expected magic: not a checkpoint (or snapshot) at all.
    #[error("{name} at byte 0: magic {found:02x?} is not {what}'s {expected:?}")]
    BadMagic {
        /// "checkpoint" or "state snapshot".
        what: &'static str,
        /// The file path or object key.
        name: String,
        /// The bytes found.
        found: Vec<u8>,
        /// The magic expected.
        expected: &'static str,
    },

    /// Bytes after the end the envelope declares.
    #[error("{what} {name} at byte {offset}: {extra_bytes} bytes after the declared end")]
    TrailingBytes {
        /// "checkpoint" or "state snapshot".
        what: &'static str,
        /// The file path or object key.
        name: String,
        /// Where the envelope says the file ends.
        offset: u64,
        /// How many bytes follow.
        extra_bytes: u64,
    },

    /// The CRC-32 stored in the envelope does not match the bytes.
    #[error(
        "corrupt {what} {name}: checksum at byte {offset} is {stored:#010x}, the content gives {computed:#010x}"
    )]
    ChecksumMismatch {
        /// "checkpoint" or "state snapshot".
        what: &'static str,
        /// The file path or object key.
        name: String,
        /// Byte offset of the stored checksum.
        offset: u64,
        /// The checksum stored.
        stored: u32,
        /// The checksum of the content.
        computed: u32,
    },

    /// A format version this build does not read (newer, or 0). Never skipped: restarting
    /// an older build on a newer checkpoint is refused rather than silently falling back.
    #[error(
        "{what} {name} at byte 8: format version {version}; this build reads versions 1 to {supported} (written by a newer Ember?)"
    )]
    UnsupportedVersion {
        /// "checkpoint" or "state snapshot".
        what: &'static str,
        /// The file path or object key.
        name: String,
        /// The version found.
        version: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// The body passed its checksum but is not a checkpoint this build can parse.
    #[error("checkpoint {name} at byte {offset}: cannot parse the body: {reason}")]
    Decode {
        /// The file path or object key.
        name: String,
        /// Byte offset in the file where parsing failed.
        offset: u64,
        /// The parser's message.
        reason: String,
    },

    /// A checkpoint whose content breaks an invariant (a batch time off the grid, a
    /// duplicate stream, a dangling operator reference, ...). Raised both when building one
    /// ([`crate::Checkpoint::new`], name `(new checkpoint)`) and when reading one.
    #[error("invalid checkpoint {name}: {field}: {reason}")]
    Invalid {
        /// The file path or object key, or `(new checkpoint)`.
        name: String,
        /// The field, as a path (`pending_batches[2].inputs[0]`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A checkpoint whose envelope is fine but which is stored under a name that is not its
    /// own (a copied or misdirected file).
    #[error("checkpoint {name}: {reason}")]
    Misplaced {
        /// The file path or object key.
        name: String,
        /// What does not match.
        reason: String,
    },

    /// A checkpoint or snapshot larger than its configured limit.
    #[error("{what} {name} is {len_bytes} bytes, more than {setting} = {max_bytes}")]
    TooLarge {
        /// "checkpoint" or "state snapshot".
        what: &'static str,
        /// The file path or object key.
        name: String,
        /// Its size.
        len_bytes: u64,
        /// The `Config` setting that limits it.
        setting: &'static str,
        /// The limit.
        max_bytes: u64,
    },

    /// Checkpoint files exist but none of them is usable. Each one tried, with why.
    #[error("no valid checkpoint in {location}; tried, newest first: {}", .tried.join("; "))]
    NoValidCheckpoint {
        /// The directory or bucket prefix.
        location: String,
        /// `name: reason` for every checkpoint tried.
        tried: Vec<String>,
    },

    /// A state snapshot a checkpoint refers to is missing.
    #[error("state snapshot {name} (operator {operator}) is missing")]
    SnapshotMissing {
        /// The snapshot's file path or object key.
        name: String,
        /// The operator whose state it holds.
        operator: String,
    },

    /// A state snapshot whose content is not what the checkpoint recorded.
    #[error("state snapshot {name}: {field} is {found}, the checkpoint recorded {expected}")]
    SnapshotMismatch {
        /// The snapshot's file path or object key.
        name: String,
        /// "length" or "crc32".
        field: &'static str,
        /// What the checkpoint recorded.
        expected: String,
        /// What the snapshot has.
        found: String,
    },

    /// The stored graph cannot be restarted from by the current code. Lists every change,
    /// the breaking ones first.
    #[error("{}", describe_incompatible(name, changes))]
    IncompatibleGraph {
        /// The checkpoint's file path or object key.
        name: String,
        /// Every difference between the stored and the current graph.
        changes: Vec<GraphChange>,
    },

    /// A create-only publish found the name taken: another writer is publishing to the same
    /// location.
    #[error(
        "{name} already exists: another writer is publishing to this checkpoint location; stop one of them"
    )]
    Conflict {
        /// The file path or object key.
        name: String,
    },

    /// Another process holds the writer lock of this checkpoint directory.
    #[error("checkpoint location {location} is locked by another writer")]
    Locked {
        /// The directory.
        location: String,
        /// The lock error.
        #[source]
        source: io::Error,
    },

    /// An earlier publish failed (a failed fsync leaves the outcome unknown), so the store
    /// refuses to write or delete anything more. Restart the process; opening the store
    /// again finds the newest valid checkpoint.
    #[error("checkpoint store {location} is poisoned by an earlier failure: {cause}")]
    Poisoned {
        /// The directory or bucket prefix.
        location: String,
        /// The failure that poisoned it.
        cause: String,
    },

    /// A write was attempted through a store opened read-only.
    #[error("checkpoint store {location} is open read-only; cannot {action}")]
    ReadOnly {
        /// The directory or bucket prefix.
        location: String,
        /// What was attempted.
        action: &'static str,
    },
}

fn describe_incompatible(name: &str, changes: &[GraphChange]) -> String {
    let breaking: Vec<String> = changes
        .iter()
        .filter(|c| c.is_breaking())
        .map(|c| c.to_string())
        .collect();
    let compatible: Vec<String> = changes
        .iter()
        .filter(|c| !c.is_breaking())
        .map(|c| c.to_string())
        .collect();
    let mut out = format!(
        "checkpoint {name} was written by an incompatible pipeline graph; {} breaking change(s): {}",
        breaking.len(),
        breaking.join("; ")
    );
    if !compatible.is_empty() {
        out += &format!(" (also changed, compatible: {})", compatible.join("; "));
    }
    out += ". Restart with the previous code, or with a new checkpoint location \
            (starting over from the sources)";
    out
}

impl Error {
    /// True for damage to one checkpoint or snapshot (torn, corrupt, unparsable, misplaced,
    /// missing): the reader falls back to the previous checkpoint. False for errors that
    /// must stop a restart (a newer format version, I/O on the location itself, ...).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Error::Truncated { .. }
                | Error::BadMagic { .. }
                | Error::TrailingBytes { .. }
                | Error::ChecksumMismatch { .. }
                | Error::Decode { .. }
                | Error::Invalid { .. }
                | Error::Misplaced { .. }
                | Error::TooLarge { .. }
                | Error::SnapshotMissing { .. }
                | Error::SnapshotMismatch { .. }
        )
    }
}
