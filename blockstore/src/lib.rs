//! Received blocks in memory (spilling to disk within limits), replicated to peer executors
//! over TCP before the source is acknowledged: Ember's *hot replication* durability mode.
//!
//! # Parts
//!
//! - [`Block`] and [`BlockId`]: a block's bytes, record count and CRC-32, and its id (whose
//!   uniqueness across driver restarts the caller guarantees; see [`BlockId`]).
//! - [`BlockManager`]: one process's local store. Memory first; a block that does not fit
//!   in `memory_max_bytes` is written to a spill file in `data_dir`, within
//!   `disk_max_bytes`; when both are full a put waits up to `put_wait_max_ms` for space and
//!   then fails with [`Error::StoreFull`]. Never more memory than configured.
//! - [`BlockServer`]: what an executor runs (`ember executor`): serves a `BlockManager` to
//!   peers over the wire protocol below.
//! - [`PeerClient`]: one peer connection, kept alive with heartbeats and reconnected with
//!   backoff.
//! - [`ReplicatedStore`]: what the driver's receivers write to: a local `BlockManager` plus
//!   replication to `peer_replicas` of the given peers.
//! - [`Config`]: every limit and timeout, validated once.
//!
//! # Using it from a receiver
//!
//! ```no_run
//! # async fn example() -> blockstore::Result<()> {
//! use blockstore::{Block, BlockId, Config, ReplicatedStore};
//! let config = Config { node_name: "driver".into(), peer_replicas: 1, ..Config::default() };
//! let store = ReplicatedStore::open(config, &["10.0.0.2:7070".into(), "10.0.0.3:7070".into()]).await?;
//! // Incarnation: a number that grows at every driver start, recorded durably.
//! let block = Block::new(BlockId::new(0, 7, 42), bytes::Bytes::from_static(b"lines..."), 1);
//! match store.put(block).await {
//!     Ok(_receipt) => { /* acknowledge the source up to this block */ }
//!     Err(err) => { /* do not acknowledge; report `err` (it names peers and reasons); retry later */ }
//! }
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! **When a put counts as stored.** [`ReplicatedStore::put`] returns `Ok` only when
//! 1. the block's data matched its checksum when it was handed in,
//! 2. the block is in the local store (memory or spill file), and
//! 3. `peer_replicas` *distinct* peers each answered with a put-ack, which a peer sends only
//!    after it verified the frame and block checksums and stored the block in its own
//!    `BlockManager`.
//!
//! So after `Ok`, the block survives the death of any `peer_replicas` of the
//! `peer_replicas + 1` processes holding it (the driver included), as long as the
//! survivors keep running. A receiver acknowledges its source only after `Ok`. If the
//! future is dropped before it resolves, nothing is promised (the block may or may not be
//! stored anywhere); the receiver must not acknowledge.
//!
//! Copies are in process memory, or in spill files that are *not* fsynced: the mode
//! protects against process failures (a killed driver or executor), and against machine
//! failure only when the peers run on other machines. For durability across a whole-host
//! power loss use the write-ahead-log mode.
//!
//! **Checksums.** A block's CRC-32 is computed when it is created ([`Block::new`]) and
//! checked again when it is sent, when a peer stores it (the frame decoder checks it
//! before anything is stored), and on every read (memory, spill file, or a peer's reply).
//! A block that fails a check is never stored or returned. The send check is made once per
//! put, just before the block is stored locally and sent to all its peers (and once per
//! [`PeerClient::put`]); the frame CRC is derived from the block's checksum, so data that
//! changed after that check fails the peer's frame check and is not stored there either.
//!
//! **Bounded everything.** Memory and disk per store, frame size (checked before a buffer
//! is allocated), frame bytes a server holds at once over all connections, connections
//! per server, puts in flight per peer, undelivered removals per peer, and every wait on a
//! peer have a limit in [`Config`]. No queue grows without bound.
//!
//! # Replication policy
//!
//! A put stores the block locally first, then sends it to `peer_replicas` peers at once.
//! Peers are taken in round-robin order (one further for every put, so load spreads),
//! connected peers before peers that are down. Each peer put is bounded by
//! `peer_put_timeout_ms`; a peer that fails or times out is replaced by the next peer in
//! the order, until enough acknowledged or none are left. The worst-case duration of a put
//! is therefore `put_wait_max_ms` (local space) plus `ceil(peers / peer_replicas)` times
//! `peer_put_timeout_ms`.
//!
//! Reads ([`ReplicatedStore::get`]) try the local copy, then the peers known to hold the
//! block, then every other peer; the first copy that passes its checksum wins.
//!
//! **Re-replication: yes.** The store remembers which peer *process* (address and
//! per-process instance number) acknowledged each replica. A replica is lost when its peer
//! comes back as a new process (a restarted executor starts with an empty memory) or stays
//! disconnected longer than `peer_dead_after_ms`. Every `repair_interval_ms` (0 turns it
//! off; [`ReplicatedStore::repair`] runs it on demand) blocks with fewer than
//! `peer_replicas` replicas that are not lost are copied to other connected peers, from the
//! local copy or a surviving replica. A restarted peer is a valid target again at once.
//! The same pass delivers removals that could not reach a peer when they were asked for
//! (kept per peer, at most `pending_removals_max` ids).
//!
//! # Failure handling
//!
//! | situation | what happens | what the caller (receiver) does |
//! |---|---|---|
//! | peer killed before or during a put | the connection breaks, the put to that peer fails at once and another peer is tried | nothing: the put succeeds on other peers, or fails as below |
//! | peer slow or stopped | its put times out after `peer_put_timeout_ms`; the connection is closed (so no work piles up behind it) and another peer is tried; heartbeats (`heartbeat_timeout_ms`) mark a stopped peer down even without puts | nothing, as above |
//! | too few peers reachable | [`Error::InsufficientReplicas`], naming every peer tried and why it failed; the block is removed again where this put stored it | do **not** acknowledge; keep the data, retry the put later (idempotent: same id, same bytes) |
//! | local memory and disk full | [`Error::StoreFull`] after `put_wait_max_ms`, with the usage and the limits | do not acknowledge; slow down (backpressure); retry after blocks were removed |
//! | a peer's memory and disk full | the peer waits at most `server_put_wait_max_ms`, then answers [`Error::PeerError`] with [`ErrorCode::StoreFull`]; another peer is tried | as for the rows above |
//! | block larger than the limits | [`Error::BlockTooLarge`] naming the setting | a bug or misconfiguration: make blocks smaller or raise the limit |
//! | same id, different bytes | [`Error::BlockConflict`] | a bug: block ids must be unique across driver restarts |
//! | corrupt frame received (either side) | the decoder returns [`Error::CorruptFrame`] with the byte offset; the frame is dropped, nothing of it is stored, an error frame is sent when possible, the connection is closed and counted; clients reconnect | nothing: the put is retried on another peer |
//! | block fails its checksum on read | that copy is skipped (a bad local copy is replaced from a peer) | [`Error::BlockUnavailable`] only when no good copy exists anywhere |
//! | peer restarted | clients reconnect with backoff and see a new instance number; its old replicas count as lost and are re-replicated | nothing |
//! | driver restarted | a new `ReplicatedStore` with an empty local store: [`ReplicatedStore::get`] finds blocks on the peers by id, [`ReplicatedStore::list_remote`] lists what they hold | fetch the blocks its metadata log references; remove the rest |
//!
//! # Restarts
//!
//! An executor restarted with the same `data_dir` serves again the blocks it had spilled
//! to disk (their headers are checked at startup, their data on every read); blocks it
//! held in memory are gone, which is what replication is for. Leftover temporary files
//! from a write cut short are deleted.
//!
//! # Wire protocol
//!
//! A connection is a TCP stream of frames in both directions. The client (the side that
//! connected) sends requests; the server answers each with exactly one reply carrying the
//! same request id, in order. All integers are little-endian.
//!
//! ```text
//! frame:
//! offset size field
//!  0      4   crc32        CRC-32 (IEEE) of bytes 4 .. 17 + body_len
//!  4      4   body_len     length of the body; at most `frame_body_max_bytes`
//!  8      1   kind         see below
//!  9      8   request_id   chosen by the client, echoed in the reply
//! 17      -   body         layout by kind
//! ```
//!
//! The frame CRC covers the length, so a damaged length is caught too (after reading the
//! bytes it announces, which the limit bounds). A frame that fails any check ends the
//! connection: after a bad length the stream cannot be trusted to be at a frame boundary.
//!
//! | kind | name | direction | body |
//! |---|---|---|---|
//! | `0x01` | hello | client → server, first frame | `magic "EMBR" [4] \| version u16 \| instance u64 \| name_len u16 \| name [name_len]` (UTF-8, ≤ 255) |
//! | `0x02` | hello-ack | server → client | same layout as hello, the server's identity |
//! | `0x03` | error | server → client | `code u16 \| message_len u16 \| message [message_len]` (UTF-8, ≤ 1024) |
//! | `0x10` | put | client → server | `block_id [20] \| record_count u64 \| data_crc32 u32 \| data [body_len - 32]` |
//! | `0x11` | put-ack | server → client | `block_id [20] \| tier u8` (0 memory, 1 disk) |
//! | `0x12` | get | client → server | `block_id [20]` |
//! | `0x13` | block-data | server → client | as put |
//! | `0x14` | not-found | server → client | `block_id [20]` |
//! | `0x15` | remove | client → server | `count u32 \| block_id [20] × count` |
//! | `0x16` | removed | server → client | `count u32` (how many were present) |
//! | `0x17` | list | client → server | `flags u8 \| after [20] \| limit u32` (flags bit 0: `after` present, else `after` is zero; limit 1 ..= 65536) |
//! | `0x18` | list-reply | server → client | `more u8 \| count u32 \| block_id [20] × count` (ascending) |
//! | `0x20` | ping | client → server | empty |
//! | `0x21` | pong | server → client | `memory_used u64 \| memory_max u64 \| disk_used u64 \| disk_max u64 \| blocks u64 \| corrupt_frames u64` |
//!
//! `block_id` is `stream u32 | incarnation u64 | sequence u64`. `data_crc32` is the block's
//! checksum, the CRC-32 of `data`; the decoder checks both it and the frame CRC (computing
//! the data's CRC once for both). Error codes: 1 unsupported version, 2 corrupt frame, 3
//! store full, 4 block too large, 5 block conflict, 6 too many connections, 7 protocol
//! violation, 8 block corrupt, 9 internal, 10 shutting down; unknown codes are kept.
//!
//! **Handshake and versions.** The client's first frame is a hello with the version it
//! speaks (currently [`PROTOCOL_VERSION`] = 1) and its identity; the server answers with a
//! hello-ack, or with an error frame (code 1 for a version it does not speak) and closes.
//! The frame header and the hello, hello-ack and error bodies keep this layout in every
//! future version, so a mismatch is always reported, never misparsed. `instance` is a
//! random number drawn at process start, which tells a restarted peer from a reconnected
//! one.
//!
//! **Canonical encoding.** Every field has exactly one valid encoding (booleans are 0 or
//! 1, reserved bytes zero, no trailing bytes), so decoding then re-encoding a frame gives
//! back the same bytes; the golden tests (`tests/protocol.rs`) pin the layout and the fuzz
//! target `replication_frame_decode` checks that decoding never panics.

#![forbid(unsafe_code)]

mod block;
mod config;
mod error;
mod manager;
mod peer;
pub mod protocol;
mod replicated;
mod server;
pub mod storage;
mod wire;

pub use block::{Block, BlockId, block_crc32};
pub use config::Config;
pub use error::{Error, ErrorCode, FrameDefect, PeerFailure, PeerFailures, PeerOutcome, Result};
pub use manager::{BLOCK_MEMORY_OVERHEAD_BYTES, BlockManager, Usage};
pub use peer::{PeerClient, PeerStatus};
pub use protocol::{NodeIdentity, PROTOCOL_VERSION, PeerStats, Tier};
pub use replicated::{
    PutReceipt, RemoteListing, RemoveReport, RepairReport, ReplicaInfo, ReplicatedStore,
};
pub use server::{BlockServer, ServerStats};

/// A random number, different in every process and every call: instance numbers and
/// backoff jitter. (`RandomState` is seeded from the OS per process; hashing a counter
/// with it gives a fresh value per call without another dependency.)
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = STATE.get_or_init(Default::default).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
