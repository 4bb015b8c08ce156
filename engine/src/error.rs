//! The engine's one error type.
//!
//! Every variant carries the context an operator needs to act on it: the stream, the batch
//! time, the path, the address or the setting involved. Expected outcomes (a lost block in
//! the "ignore" durability mode, an invalid line skipped by policy) are *not* errors: they
//! are counted in the batch metrics. Bugs are assertions, not variants.

use std::path::PathBuf;

use crate::block::BlockId;
use crate::time::BatchTime;

/// The result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid setting `{setting}`: {message}")]
    Config {
        /// The setting's name as written in [`crate::Config`].
        setting: &'static str,
        /// What is wrong and what would be accepted.
        message: String,
    },

    /// The DStream graph cannot run as built (found when the graph is built or at `start`).
    #[error("invalid graph at `{operator}`: {message}")]
    Graph {
        /// The operator, as `name#id` (see [`crate::OperatorId`]).
        operator: String,
        /// What is wrong.
        message: String,
    },

    /// The context is in the wrong state for the call (e.g. adding a stream after `start`).
    #[error("streaming context is {state}: cannot {action}")]
    ContextState {
        /// The state the context is in.
        state: &'static str,
        /// What the caller tried to do.
        action: &'static str,
    },

    /// File-system I/O failed.
    #[error("{operation} {path}")]
    Io {
        /// What was being done ("create", "rename", "fsync directory", ...).
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A network operation failed.
    #[error("stream `{stream}`: {operation} {address}")]
    Network {
        /// The input stream.
        stream: String,
        /// What was being done ("connect to", "read from", ...).
        operation: &'static str,
        /// The peer address.
        address: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A text source received a line that is not valid UTF-8 and the policy is
    /// [`crate::InvalidUtf8Policy::Fail`].
    #[error(
        "stream `{stream}`: line {line} from {origin} is not valid UTF-8 (byte {byte_offset} of the line); \
         set `invalid_utf8 = Skip` to count and skip such lines"
    )]
    InvalidUtf8 {
        /// The input stream.
        stream: String,
        /// Where the bytes came from (an address or a path).
        origin: String,
        /// The 1-based line number within the source (connection or file).
        line: u64,
        /// The offset of the first invalid byte within the line.
        byte_offset: usize,
    },

    /// A stored block's bytes could not be decoded into records.
    #[error("stream `{stream}`: block {block} cannot be decoded: {message}")]
    Decode {
        /// The input stream.
        stream: String,
        /// The block.
        block: BlockId,
        /// What is wrong with the bytes.
        message: String,
    },

    /// The received-block handler failed to store or read a block.
    #[error("stream `{stream}`: block store failed for block {block}: {message}")]
    BlockStore {
        /// The input stream.
        stream: String,
        /// The block.
        block: BlockId,
        /// What the handler reported.
        message: String,
    },

    /// A receiver stopped with an error.
    #[error("stream `{stream}`: receiver failed: {message}")]
    Receiver {
        /// The input stream.
        stream: String,
        /// What happened.
        message: String,
    },

    /// A sink could not be set up or read (its writes fail batches as [`Error::Job`]).
    #[error("sink {sink}: {message}")]
    Sink {
        /// The sink and where it writes.
        sink: String,
        /// What happened.
        message: String,
    },

    /// A user function or output operation failed (returned an error or panicked).
    #[error("batch {batch_time}: `{operator}` failed: {message}")]
    Job {
        /// The batch.
        batch_time: BatchTime,
        /// The operator or output operation.
        operator: String,
        /// The error or panic message.
        message: String,
    },

    /// State could not be snapshotted or restored.
    #[error("state of `{operator}`: {message}")]
    State {
        /// The stateful operator, as `name#id`.
        operator: String,
        /// What is wrong.
        message: String,
    },

    /// A graceful stop did not finish in time; the listed batches were not processed.
    #[error(
        "graceful stop timed out after {timeout_ms} ms with {batches_pending} batch(es) not processed \
         (raise `graceful_stop_timeout_ms`)"
    )]
    StopTimeout {
        /// The configured limit.
        timeout_ms: u64,
        /// Batches generated but not completed.
        batches_pending: usize,
    },

    /// A write-ahead log (a stream's data log or the driver's metadata log) failed.
    #[error("{what} at {location}")]
    Wal {
        /// Which log and what was being done ("append to the metadata log", ...).
        what: &'static str,
        /// The log's directory.
        location: String,
        /// The underlying error (names segment and byte offset where it applies).
        #[source]
        source: wal::Error,
    },

    /// A checkpoint could not be written or used (an incompatible graph names what changed).
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),

    /// Recovery found something it cannot use (a metadata log record that does not decode,
    /// a log that does not reach back to the checkpoint, ...).
    #[error("recovery from {location}: {message}")]
    Recovery {
        /// The checkpoint directory or log.
        location: String,
        /// What is wrong and, where known, the Lsn.
        message: String,
    },

    /// The engine's runtime could not be started.
    #[error("cannot start {what}")]
    Runtime {
        /// The thread or pool.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A [`Error::Config`] for `setting`.
    pub(crate) fn config(setting: &'static str, message: impl Into<String>) -> Self {
        Error::Config {
            setting,
            message: message.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}
