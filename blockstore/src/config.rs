//! Every limit of the block store, in one validated [`Config`].
//!
//! Units are the last part of each name (`_bytes`, `_ms`, `_max`). The same struct serves
//! the three roles: the local [`crate::BlockManager`] reads the storage limits, the
//! [`crate::BlockServer`] the server limits, the [`crate::ReplicatedStore`] the client
//! limits; fields a role does not use are ignored by it, and [`Config::validate`] checks
//! them all, so a config file that is valid for one role is valid for all.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::protocol::{BLOCK_HEADER_LEN, FRAME_BODY_MAX_BYTES_LIMIT};

/// Limits and timeouts of the block store. Build with [`Config::default`] and override
/// fields; every constructor that takes a `Config` calls [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    // --- identity ------------------------------------------------------------------------
    /// This node's name in handshakes and logs ("driver", "executor-1", ...). At most 255
    /// bytes of UTF-8, not empty.
    pub node_name: String,

    // --- local storage (BlockManager) -----------------------------------------------------
    /// Memory the local store may use for block data (each block is charged its length
    /// plus [`crate::BLOCK_MEMORY_OVERHEAD_BYTES`]). When a block does not fit, it goes to
    /// disk. 0 means every block goes to disk.
    pub memory_max_bytes: u64,
    /// Disk the local store may use in `data_dir` (each block is charged its spill-file
    /// size). 0 disables spilling; it must then be 0 when `data_dir` is `None`.
    pub disk_max_bytes: u64,
    /// Directory for spill files. Blocks found there at startup are served again (see the
    /// crate docs, "Restarts").
    pub data_dir: Option<PathBuf>,
    /// How long a `put` waits for space to be freed when memory and disk are both full,
    /// before it fails with [`Error::StoreFull`].
    pub put_wait_max_ms: u64,

    // --- wire ----------------------------------------------------------------------------
    /// Largest frame body accepted or sent. A block's data can be at most this minus the
    /// 32-byte block header. Checked before any buffer is allocated for a frame.
    pub frame_body_max_bytes: u32,

    // --- server (BlockServer) ------------------------------------------------------------
    /// Connections a server serves at once; more are answered with a `too many
    /// connections` error frame and closed.
    pub server_connections_max: usize,
    /// How long a server waits for a client's handshake after accepting it.
    pub handshake_timeout_ms: u64,
    /// How long a server keeps a connection on which no frame starts. Clients send
    /// heartbeats every `heartbeat_interval_ms`, so this must be larger.
    pub server_idle_timeout_ms: u64,
    /// How long the rest of a frame may take once its header arrived (on both sides).
    pub frame_read_timeout_ms: u64,
    /// Bytes of frame bodies a server holds at once over all its connections while it
    /// reads and handles them (a stored block's bytes then count against
    /// `memory_max_bytes` instead). Bounds the memory of frames in flight to this rather
    /// than `server_connections_max` times `frame_body_max_bytes`; a connection whose frame
    /// does not fit waits (within `frame_read_timeout_ms`). At least `frame_body_max_bytes`.
    pub server_frame_bytes_in_flight_max: u64,
    /// How long a server waits for space when its memory and disk are full, before it
    /// refuses a replica with a `store full` error (the driver then tries another peer).
    /// Kept short: a server handles a connection's requests in order, so a waiting put
    /// holds up everything behind it on that connection, heartbeats included. Must be
    /// below `heartbeat_timeout_ms`.
    pub server_put_wait_max_ms: u64,

    // --- client (ReplicatedStore) --------------------------------------------------------
    /// Peer replicas a put needs besides the local copy before it succeeds. Spark's
    /// `MEMORY_AND_DISK_SER_2` corresponds to 1. 0 means local only.
    pub peer_replicas: usize,
    /// Puts in flight to one peer at once; further puts to that peer wait for a slot
    /// (within `peer_put_timeout_ms`).
    pub peer_puts_in_flight_max: usize,
    /// Bound on one put to one peer, from asking for an in-flight slot to the peer's
    /// acknowledgement. On expiry the put fails over to another peer and the connection
    /// to the slow peer is closed and re-established.
    pub peer_put_timeout_ms: u64,
    /// Bound on one get, remove or list request to one peer.
    pub peer_request_timeout_ms: u64,
    /// Bound on establishing a TCP connection to a peer.
    pub connect_timeout_ms: u64,
    /// Interval between heartbeats (ping frames) on each peer connection.
    pub heartbeat_interval_ms: u64,
    /// A heartbeat not answered within this time closes the connection: the peer is
    /// treated as down until it reconnects.
    pub heartbeat_timeout_ms: u64,
    /// First delay before reconnecting to a peer that is down; doubled after each
    /// failed attempt.
    pub reconnect_backoff_initial_ms: u64,
    /// Largest delay between reconnection attempts.
    pub reconnect_backoff_max_ms: u64,
    /// A replica on a peer that has been disconnected this long counts as lost (as does
    /// every replica on a peer that comes back as a new process), for [`crate::ReplicatedStore::repair`].
    pub peer_dead_after_ms: u64,
    /// Block ids kept per peer for removals that could not be delivered (the peer was
    /// down); they are retried by the repair pass once it is back. Beyond this the oldest
    /// are dropped with a warning (find leftovers with `ReplicatedStore::list_remote`).
    pub pending_removals_max: usize,
    /// Interval of the background repair that re-replicates blocks which lost replicas.
    /// 0 disables it (call [`crate::ReplicatedStore::repair`] yourself).
    pub repair_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: "ember".to_owned(),
            memory_max_bytes: 1 << 30,
            disk_max_bytes: 0,
            data_dir: None,
            put_wait_max_ms: 2_000,
            frame_body_max_bytes: 64 << 20,
            server_connections_max: 256,
            handshake_timeout_ms: 2_000,
            server_idle_timeout_ms: 30_000,
            frame_read_timeout_ms: 10_000,
            server_put_wait_max_ms: 100,
            server_frame_bytes_in_flight_max: 512 << 20,
            peer_replicas: 1,
            peer_puts_in_flight_max: 8,
            peer_put_timeout_ms: 5_000,
            peer_request_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 2_000,
            reconnect_backoff_initial_ms: 50,
            reconnect_backoff_max_ms: 2_000,
            peer_dead_after_ms: 5_000,
            repair_interval_ms: 1_000,
            pending_removals_max: 1_000_000,
        }
    }
}

impl Config {
    /// Checks every field and the relations between them.
    pub fn validate(&self) -> Result<()> {
        fn bad(setting: &'static str, reason: impl Into<String>) -> Result<()> {
            Err(Error::InvalidConfig {
                setting,
                reason: reason.into(),
            })
        }
        if self.node_name.is_empty() || self.node_name.len() > 255 {
            return bad("node_name", "must be 1 to 255 bytes of UTF-8");
        }
        if self.memory_max_bytes == 0 && self.disk_max_bytes == 0 {
            return bad(
                "memory_max_bytes",
                "memory and disk limits are both 0: nothing can be stored",
            );
        }
        if self.disk_max_bytes > 0 && self.data_dir.is_none() {
            return bad("disk_max_bytes", "is not 0 but no `data_dir` is set");
        }
        if (self.frame_body_max_bytes as usize) < BLOCK_HEADER_LEN + 1024 {
            return bad("frame_body_max_bytes", "must be at least 1056 bytes");
        }
        if self.frame_body_max_bytes > FRAME_BODY_MAX_BYTES_LIMIT {
            return bad(
                "frame_body_max_bytes",
                format!("must be at most {FRAME_BODY_MAX_BYTES_LIMIT} bytes"),
            );
        }
        for (setting, value) in [
            ("server_connections_max", self.server_connections_max),
            ("peer_puts_in_flight_max", self.peer_puts_in_flight_max),
        ] {
            if value == 0 {
                return bad(setting, "must be at least 1");
            }
        }
        if self.pending_removals_max == 0 {
            return bad("pending_removals_max", "must be at least 1");
        }
        if self.peer_puts_in_flight_max > 4096 {
            return bad("peer_puts_in_flight_max", "must be at most 4096");
        }
        for (setting, value) in [
            ("put_wait_max_ms", self.put_wait_max_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("server_idle_timeout_ms", self.server_idle_timeout_ms),
            ("frame_read_timeout_ms", self.frame_read_timeout_ms),
            ("peer_put_timeout_ms", self.peer_put_timeout_ms),
            ("peer_request_timeout_ms", self.peer_request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            (
                "reconnect_backoff_initial_ms",
                self.reconnect_backoff_initial_ms,
            ),
            ("reconnect_backoff_max_ms", self.reconnect_backoff_max_ms),
            ("peer_dead_after_ms", self.peer_dead_after_ms),
        ] {
            // A day is far beyond any sensible bound and keeps Instant arithmetic safe.
            if value == 0 || value > 86_400_000 {
                return bad(setting, "must be between 1 and 86400000 ms");
            }
        }
        if self.repair_interval_ms > 86_400_000 {
            return bad(
                "repair_interval_ms",
                "must be at most 86400000 ms (0 disables repair)",
            );
        }
        if self.reconnect_backoff_initial_ms > self.reconnect_backoff_max_ms {
            return bad(
                "reconnect_backoff_initial_ms",
                "must not exceed `reconnect_backoff_max_ms`",
            );
        }
        if self.server_frame_bytes_in_flight_max < u64::from(self.frame_body_max_bytes)
            || self.server_frame_bytes_in_flight_max > 1 << 40
        {
            return bad(
                "server_frame_bytes_in_flight_max",
                "must be at least `frame_body_max_bytes` (a frame must fit) and at most 1 TiB",
            );
        }
        if self.server_put_wait_max_ms >= self.heartbeat_timeout_ms {
            return bad(
                "server_put_wait_max_ms",
                "must be below `heartbeat_timeout_ms`, or a put waiting for space would make \
                 clients drop a healthy connection",
            );
        }
        if self.server_idle_timeout_ms <= self.heartbeat_interval_ms {
            return bad(
                "server_idle_timeout_ms",
                "must exceed `heartbeat_interval_ms`, or idle but healthy connections are dropped",
            );
        }
        Ok(())
    }

    /// The largest block data a frame can carry under this config.
    pub fn block_data_max_bytes(&self) -> u64 {
        u64::from(self.frame_body_max_bytes) - BLOCK_HEADER_LEN as u64
    }

    pub(crate) fn duration(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    node_name: String::new(),
                    ..Config::default()
                },
                "node_name",
            ),
            (
                Config {
                    memory_max_bytes: 0,
                    ..Config::default()
                },
                "memory_max_bytes",
            ),
            (
                Config {
                    disk_max_bytes: 1,
                    ..Config::default()
                },
                "disk_max_bytes",
            ),
            (
                Config {
                    frame_body_max_bytes: 10,
                    ..Config::default()
                },
                "frame_body_max_bytes",
            ),
            (
                Config {
                    peer_put_timeout_ms: 0,
                    ..Config::default()
                },
                "peer_put_timeout_ms",
            ),
            (
                Config {
                    peer_puts_in_flight_max: 0,
                    ..Config::default()
                },
                "peer_puts_in_flight_max",
            ),
            (
                Config {
                    reconnect_backoff_initial_ms: 5_000,
                    ..Config::default()
                },
                "reconnect_backoff_initial_ms",
            ),
            (
                Config {
                    server_idle_timeout_ms: 100,
                    ..Config::default()
                },
                "server_idle_timeout_ms",
            ),
        ];
        for (config, setting) in cases {
            let err = config.validate().unwrap_err();
            match &err {
                Error::InvalidConfig { setting: s, .. } => assert_eq!(*s, setting, "{err}"),
                other => panic!("unexpected {other}"),
            }
            assert!(err.to_string().contains(setting), "{err}");
        }
    }
}
