//! The crate's error type. Every variant names what it concerns: the block, the peer, the
//! file, the frame offset or the setting, so that an operator can act on the message alone.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::block::BlockId;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the block store.
///
/// What a caller (a receiver) should do on each is in the crate docs, "Failure handling".
/// In short: [`Error::InsufficientReplicas`] and [`Error::StoreFull`] mean "do not
/// acknowledge the source; retry later"; [`Error::BlockConflict`] and
/// [`Error::InvalidConfig`] are bugs or misconfiguration to report; [`Error::BlockCorrupt`]
/// from a read means that copy is unusable (the replicated store already tries the other
/// replicas before returning it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidConfig {
        /// The field of [`crate::Config`] (or the flag) at fault.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A block's data no longer matches the checksum it was created with.
    #[error(
        "block {block}: checksum mismatch in {location} (stored {stored:#010x}, computed {computed:#010x})"
    )]
    BlockCorrupt {
        /// The block.
        block: BlockId,
        /// Where the bad copy is: "memory", a spill-file path, a peer's reply, ...
        location: String,
        /// The checksum the block was created with.
        stored: u32,
        /// The checksum of the bytes found.
        computed: u32,
    },

    /// A block is larger than a limit allows, so no amount of waiting can store it.
    #[error("block {block} of {len_bytes} bytes exceeds `{setting}` ({max_bytes} bytes)")]
    BlockTooLarge {
        /// The block.
        block: BlockId,
        /// Its data length.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
        /// The setting that sets the limit.
        setting: &'static str,
    },

    /// Memory and disk were both full for longer than the put may wait
    /// (`put_wait_max_ms`, or `server_put_wait_max_ms` on a server).
    #[error(
        "block {block} ({len_bytes} bytes) does not fit: memory {memory_used_bytes} of \
         {memory_max_bytes} bytes used (`memory_max_bytes`), disk {disk_used_bytes} of \
         {disk_max_bytes} bytes used (`disk_max_bytes`); waited {waited_ms} ms for space \
         (`{wait_setting}`)"
    )]
    StoreFull {
        /// The block that did not fit.
        block: BlockId,
        /// Its data length.
        len_bytes: u64,
        /// Memory in use when the wait ended.
        memory_used_bytes: u64,
        /// The memory limit.
        memory_max_bytes: u64,
        /// Disk in use when the wait ended.
        disk_used_bytes: u64,
        /// The disk limit.
        disk_max_bytes: u64,
        /// How long the put waited.
        waited_ms: u64,
        /// The setting that bounds the wait.
        wait_setting: &'static str,
    },

    /// A different block is already stored under this id: the caller broke the uniqueness
    /// contract of [`BlockId`].
    #[error(
        "block {block}: a different block is already stored under this id in {location} \
         (stored {existing_len} bytes, crc {existing_crc:#010x}; new {new_len} bytes, crc \
         {new_crc:#010x}); block ids must be unique across driver restarts"
    )]
    BlockConflict {
        /// The id.
        block: BlockId,
        /// Where the existing block is ("local store", a peer address).
        location: String,
        /// Length of the block already stored.
        existing_len: u64,
        /// Checksum of the block already stored.
        existing_crc: u32,
        /// Length of the refused block.
        new_len: u64,
        /// Checksum of the refused block.
        new_crc: u32,
    },

    /// A file-system operation on the spill directory failed.
    #[error("{op} {path}: {cause}")]
    Io {
        /// What was being done ("write spill file", "read spill file", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        cause: io::Error,
    },

    /// A spill file's header is unreadable: wrong magic, bad header checksum, wrong size.
    #[error("spill file {path}: {reason}")]
    CorruptSpillFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Binding the server's listening socket failed.
    #[error("listen on {addr}: {cause}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's error.
        cause: io::Error,
    },

    /// Connecting to a peer failed.
    #[error("peer {peer}: connect: {cause}")]
    Connect {
        /// The peer's address.
        peer: String,
        /// The operating system's error.
        cause: io::Error,
    },

    /// A bounded wait on a peer ran out.
    #[error("peer {peer}: {op} timed out after {after_ms} ms (`{setting}`)")]
    Timeout {
        /// The peer's address.
        peer: String,
        /// What was being waited for ("put", "handshake", "heartbeat", ...).
        op: &'static str,
        /// How long it waited.
        after_ms: u64,
        /// The setting that bounds the wait.
        setting: &'static str,
    },

    /// The connection to a peer broke (reset, closed, write failed) before a reply came.
    #[error("peer {peer}: connection lost during {op}: {reason}")]
    ConnectionLost {
        /// The peer's address.
        peer: String,
        /// The request in flight ("put", "get", ...), or "connection" for the link itself.
        op: &'static str,
        /// Why, as far as known.
        reason: String,
    },

    /// Bytes received from a peer do not form a valid frame. The connection is closed.
    #[error("peer {peer}: corrupt frame at byte {frame_offset} of the connection: {defect}")]
    CorruptFrame {
        /// The peer's address.
        peer: String,
        /// Offset of the frame's first byte in the connection's byte stream.
        frame_offset: u64,
        /// What exactly is wrong.
        defect: FrameDefect,
    },

    /// The handshake with a peer failed (wrong magic, unsupported version, refused).
    #[error("peer {peer}: handshake failed: {reason}")]
    Handshake {
        /// The peer's address.
        peer: String,
        /// Why.
        reason: String,
    },

    /// A peer answered a request with an error reply.
    #[error("peer {peer} refused {op}: {code}: {message}")]
    PeerError {
        /// The peer's address.
        peer: String,
        /// The request.
        op: &'static str,
        /// The error class the peer reported.
        code: ErrorCode,
        /// The peer's message (its own error, rendered).
        message: String,
    },

    /// A peer answered a request with a well-formed frame of the wrong kind.
    #[error("peer {peer}: unexpected {got} in reply to {op}")]
    UnexpectedReply {
        /// The peer's address.
        peer: String,
        /// The request.
        op: &'static str,
        /// The kind of frame received.
        got: &'static str,
    },

    /// A peer is not connected right now (it is being reconnected with backoff).
    #[error("peer {peer} is not connected: {state}")]
    PeerUnavailable {
        /// The peer's address.
        peer: String,
        /// Since when and why.
        state: String,
    },

    /// A put could not place the required number of peer replicas. The block is *not*
    /// stored: do not acknowledge the source.
    #[error(
        "block {block} not stored: {stored} of {needed} required peer replicas \
         (`peer_replicas`) succeeded{list}; {failures}",
        stored = .stored_on.len(),
        list = ListSuffix(.stored_on)
    )]
    InsufficientReplicas {
        /// The block.
        block: BlockId,
        /// The configured number of peer replicas.
        needed: usize,
        /// Peers that did store it (their copies are removed again, best effort).
        stored_on: Vec<String>,
        /// Every peer that was not used or failed, and why.
        failures: PeerFailures,
    },

    /// No copy of a block could be read: not in the local store, and no peer had a good one.
    #[error("block {block} is not available: {attempts}")]
    BlockUnavailable {
        /// The block.
        block: BlockId,
        /// What each place (local store, each peer) answered.
        attempts: PeerFailures,
    },

    /// The store or server was shut down.
    #[error("{what} is shut down")]
    Closed {
        /// What was shut down.
        what: &'static str,
    },
}

/// One peer's part in a failed operation.
#[derive(Debug)]
pub struct PeerFailure {
    /// The peer's address, or "local store".
    pub peer: String,
    /// What went wrong there ([`PeerOutcome`] is either an error or "not found").
    pub outcome: PeerOutcome,
}

/// What a peer answered, in a [`PeerFailure`].
#[derive(Debug)]
pub enum PeerOutcome {
    /// The peer does not have the block.
    NotFound,
    /// The request failed.
    Failed(Box<Error>),
}

/// A list of [`PeerFailure`]s, displayed as "peer a: why; peer b: why".
#[derive(Debug, Default)]
pub struct PeerFailures(pub Vec<PeerFailure>);

impl fmt::Display for PeerFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "no peers were tried");
        }
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            PeerOutcome::NotFound => write!(f, "{}: not found", self.peer),
            // Errors about a peer already name it; avoid "peer a: peer a: ...".
            PeerOutcome::Failed(err) if err.to_string().contains(&self.peer) => write!(f, "{err}"),
            PeerOutcome::Failed(err) => write!(f, "{}: {err}", self.peer),
        }
    }
}

struct ListSuffix<'a>(&'a [String]);

impl fmt::Display for ListSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " (on {})", self.0.join(", "))
        }
    }
}

/// What is wrong with a frame. Decoding never panics; every malformed input maps to one of
/// these, and the connection it came from is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameDefect {
    /// The length field exceeds `frame_body_max_bytes`.
    #[error("body length {len_bytes} exceeds `frame_body_max_bytes` ({max_bytes})")]
    BodyTooLarge {
        /// The length the header claims.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The frame CRC does not match the bytes.
    #[error("frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// The body is shorter than its kind requires.
    #[error("{kind} body truncated: `{field}` needs {need} bytes, {have} left")]
    Truncated {
        /// The frame kind.
        kind: &'static str,
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the body.
        have: usize,
    },
    /// The body is longer than its kind allows.
    #[error("{kind} body has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// The frame kind.
        kind: &'static str,
        /// How many bytes are left over.
        extra: usize,
    },
    /// A field holds a value outside its domain.
    #[error("{kind} field `{field}`: {reason}")]
    InvalidField {
        /// The frame kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame ({have} of {need} bytes received)")]
    Incomplete {
        /// Bytes the frame needs.
        need: u64,
        /// Bytes received.
        have: u64,
    },
}

/// The error classes carried by an error reply frame (`kind = 0x03`), as `u16` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The handshake's protocol version is not supported.
    UnsupportedVersion,
    /// The frame received was malformed (the connection is closed after this reply).
    CorruptFrame,
    /// The peer's memory and disk are full.
    StoreFull,
    /// The block is larger than the peer accepts.
    BlockTooLarge,
    /// A different block is stored under that id.
    BlockConflict,
    /// The server has no connection slot left (`server_connections_max`).
    TooManyConnections,
    /// The request is not valid in this state (e.g. a request before the handshake).
    ProtocolViolation,
    /// The block failed its checksum on the peer.
    BlockCorrupt,
    /// Anything else (an I/O error on the peer's spill directory, ...).
    Internal,
    /// The server is shutting down.
    ShuttingDown,
    /// A code this version does not know (kept as received).
    Unknown(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::CorruptFrame => 2,
            ErrorCode::StoreFull => 3,
            ErrorCode::BlockTooLarge => 4,
            ErrorCode::BlockConflict => 5,
            ErrorCode::TooManyConnections => 6,
            ErrorCode::ProtocolViolation => 7,
            ErrorCode::BlockCorrupt => 8,
            ErrorCode::Internal => 9,
            ErrorCode::ShuttingDown => 10,
            ErrorCode::Unknown(code) => code,
        }
    }

    /// From the wire value; unknown values are kept as [`ErrorCode::Unknown`].
    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::CorruptFrame,
            3 => ErrorCode::StoreFull,
            4 => ErrorCode::BlockTooLarge,
            5 => ErrorCode::BlockConflict,
            6 => ErrorCode::TooManyConnections,
            7 => ErrorCode::ProtocolViolation,
            8 => ErrorCode::BlockCorrupt,
            9 => ErrorCode::Internal,
            10 => ErrorCode::ShuttingDown,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The code a server replies with for one of its own errors.
    pub(crate) fn for_error(err: &Error) -> Self {
        match err {
            Error::StoreFull { .. } => ErrorCode::StoreFull,
            Error::BlockTooLarge { .. } => ErrorCode::BlockTooLarge,
            Error::BlockConflict { .. } => ErrorCode::BlockConflict,
            Error::BlockCorrupt { .. } => ErrorCode::BlockCorrupt,
            Error::CorruptFrame { .. } => ErrorCode::CorruptFrame,
            Error::Closed { .. } => ErrorCode::ShuttingDown,
            _ => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::CorruptFrame => "corrupt frame",
            ErrorCode::StoreFull => "store full",
            ErrorCode::BlockTooLarge => "block too large",
            ErrorCode::BlockConflict => "block conflict",
            ErrorCode::TooManyConnections => "too many connections",
            ErrorCode::ProtocolViolation => "protocol violation",
            ErrorCode::BlockCorrupt => "block corrupt",
            ErrorCode::Internal => "internal error",
            ErrorCode::ShuttingDown => "shutting down",
            ErrorCode::Unknown(code) => return write!(f, "error code {code}"),
        };
        f.write_str(name)
    }
}
