//! [`BlockServer`]: what an executor runs. Accepts connections, performs the handshake,
//! and serves put, get, remove, list and ping requests against a [`BlockManager`].
//!
//! Each connection is served by one task, requests in order (so a client may rely on the
//! order of its requests' effects). Because of that a put never waits long for space:
//! at most `server_put_wait_max_ms`, after which it is refused and the driver places the
//! replica elsewhere; heartbeats behind it are answered in time. A put is acknowledged only
//! after the block's checksum was verified (by the frame decoder) and the block is in the
//! manager. A malformed frame is counted, answered with an error frame when possible, and
//! the connection is closed: after a bad length or checksum the stream cannot be trusted
//! to be at a frame boundary, and nothing from that frame is stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::manager::BlockManager;
use crate::protocol::{
    self, Frame, LIST_LIMIT_MAX, Message, NodeIdentity, PROTOCOL_VERSION, PeerStats,
};
use crate::wire::{FrameReader, FrameWriter};

/// Counters of a [`BlockServer`] since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerStats {
    /// Connections accepted (handshake not necessarily completed).
    pub connections_accepted: u64,
    /// Connections refused because `server_connections_max` were open.
    pub connections_rejected: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Frames that failed to decode (bad checksum, bad length, bad field).
    pub corrupt_frames: u64,
    /// Handshakes refused (wrong version, wrong first frame) and out-of-place frames.
    pub protocol_errors: u64,
    /// Blocks stored by put requests (re-puts of a block already held included).
    pub blocks_received: u64,
    /// Bytes of block data stored by put requests.
    pub bytes_received: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_rejected: AtomicU64,
    connections_open: AtomicU64,
    corrupt_frames: AtomicU64,
    protocol_errors: AtomicU64,
    blocks_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        ServerStats {
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_rejected: self.connections_rejected.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            corrupt_frames: self.corrupt_frames.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            blocks_received: self.blocks_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    config: Config,
    /// Permits are bytes of frame bodies being read or handled
    /// (`server_frame_bytes_in_flight_max`).
    frame_budget: Semaphore,
    identity: NodeIdentity,
    manager: BlockManager,
    counters: Counters,
    shutdown: watch::Receiver<bool>,
}

/// A block server listening on a TCP address. Dropping it (or calling
/// [`BlockServer::shutdown`]) stops accepting and closes every connection.
pub struct BlockServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for BlockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockServer")
            .field("local_addr", &self.local_addr)
            .field("identity", &self.shared.identity)
            .finish_non_exhaustive()
    }
}

impl BlockServer {
    /// Opens a [`BlockManager`] from `config` and serves it on `addr` (`host:port`; port 0
    /// picks a free port, see [`BlockServer::local_addr`]).
    pub async fn bind(addr: &str, config: Config) -> Result<Self> {
        let manager = BlockManager::open(&config)?;
        Self::bind_with(addr, config, manager).await
    }

    /// Serves an existing manager on `addr`.
    pub async fn bind_with(addr: &str, config: Config, manager: BlockManager) -> Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(addr).await.map_err(|cause| Error::Bind {
            addr: addr.to_owned(),
            cause,
        })?;
        let local_addr = listener.local_addr().map_err(|cause| Error::Bind {
            addr: addr.to_owned(),
            cause,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let identity = NodeIdentity::new(config.node_name.clone());
        let shared = Arc::new(Shared {
            frame_budget: Semaphore::new(config.server_frame_bytes_in_flight_max as usize),
            config,
            identity,
            manager,
            counters: Counters::default(),
            shutdown: shutdown_rx,
        });
        tracing::info!(
            listen = %local_addr,
            node = %shared.identity.name,
            instance = format_args!("{:016x}", shared.identity.instance),
            "block server listening"
        );
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(BlockServer {
            local_addr,
            shared,
            shutdown,
            accept_task: Some(accept_task),
        })
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This server's identity (name and per-start instance number).
    pub fn identity(&self) -> &NodeIdentity {
        &self.shared.identity
    }

    /// The store the server serves.
    pub fn manager(&self) -> &BlockManager {
        &self.shared.manager
    }

    /// Counters since start.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// Stops accepting, closes every connection (requests being handled are abandoned;
    /// their clients see the connection close and do not count the block as stored), and
    /// waits for the tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for BlockServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.config.server_connections_max));
    let mut connections = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: say so, pause, keep serving.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        shared
            .counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    shared
                        .counters
                        .connections_open
                        .fetch_add(1, Ordering::Relaxed);
                    serve_connection(stream, peer, &shared).await;
                    shared
                        .counters
                        .connections_open
                        .fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                shared
                    .counters
                    .connections_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    peer = %peer,
                    limit = shared.config.server_connections_max,
                    "refusing connection: `server_connections_max` reached"
                );
                let body_max = shared.config.frame_body_max_bytes;
                let limit = shared.config.server_connections_max;
                connections.spawn(async move {
                    let (_, write) = stream.into_split();
                    let mut writer = FrameWriter::new(write);
                    let message = Message::Error {
                        code: ErrorCode::TooManyConnections,
                        message: format!("server_connections_max ({limit}) connections are open"),
                    };
                    if let Ok(frame) = protocol::encode(
                        &Frame {
                            request_id: 0,
                            message,
                        },
                        body_max,
                    ) {
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_secs(1),
                            writer.send(&frame),
                        )
                        .await;
                    }
                });
            }
        }
    }
    connections.shutdown().await;
    tracing::info!("block server stopped");
}

/// Why a connection ended, for the log line.
enum End {
    Closed,
    Error(Error),
    Shutdown,
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let peer_label = peer.to_string();
    let (read, write) = stream.into_split();
    let mut reader = FrameReader::new(read, shared.config.frame_body_max_bytes, peer_label.clone());
    let mut writer = FrameWriter::new(write);
    let client = match handshake(&mut reader, &mut writer, &peer_label, shared).await {
        Ok(client) => client,
        Err(err) => {
            tracing::warn!(peer = %peer, error = %err, "handshake failed; connection closed");
            return;
        }
    };
    tracing::info!(
        peer = %peer,
        node = %client.name,
        instance = format_args!("{:016x}", client.instance),
        "peer connected"
    );
    let end = request_loop(&mut reader, &mut writer, &peer_label, shared).await;
    let _ = writer.shutdown().await;
    match end {
        End::Closed => tracing::info!(peer = %peer, node = %client.name, "peer disconnected"),
        End::Shutdown => tracing::debug!(peer = %peer, "connection closed for shutdown"),
        End::Error(err) => {
            tracing::warn!(peer = %peer, node = %client.name, error = %err, "connection closed")
        }
    }
}

async fn handshake(
    reader: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    writer: &mut FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    peer: &str,
    shared: &Shared,
) -> Result<NodeIdentity> {
    let timeout_ms = shared.config.handshake_timeout_ms;
    let first = tokio::time::timeout(Config::duration(timeout_ms), reader.read_frame())
        .await
        .map_err(|_| Error::Timeout {
            peer: peer.to_owned(),
            op: "handshake",
            after_ms: timeout_ms,
            setting: "handshake_timeout_ms",
        })?;
    let frame = match first {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            return Err(Error::Handshake {
                peer: peer.to_owned(),
                reason: "closed before sending a hello".to_owned(),
            });
        }
        Err(err) => {
            if matches!(err, Error::CorruptFrame { .. }) {
                shared
                    .counters
                    .corrupt_frames
                    .fetch_add(1, Ordering::Relaxed);
                reply_error(writer, 0, ErrorCode::CorruptFrame, &err, shared).await;
            }
            return Err(err);
        }
    };
    let (code, reason) = match frame.message {
        Message::Hello { version, node } if version == PROTOCOL_VERSION => {
            let ack = Message::HelloAck {
                version: PROTOCOL_VERSION,
                node: shared.identity.clone(),
            };
            send(writer, frame.request_id, ack, shared)
                .await
                .map_err(|err| Error::ConnectionLost {
                    peer: peer.to_owned(),
                    op: "handshake",
                    reason: err,
                })?;
            return Ok(node);
        }
        Message::Hello { version, .. } => (
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol version {version}; this server speaks {PROTOCOL_VERSION}"
            ),
        ),
        other => (
            ErrorCode::ProtocolViolation,
            format!("expected a hello frame first, got {}", other.kind_name()),
        ),
    };
    shared
        .counters
        .protocol_errors
        .fetch_add(1, Ordering::Relaxed);
    let err = Error::Handshake {
        peer: peer.to_owned(),
        reason,
    };
    reply_error(writer, frame.request_id, code, &err, shared).await;
    Err(err)
}

async fn request_loop(
    reader: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    writer: &mut FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    peer: &str,
    shared: &Shared,
) -> End {
    let mut shutdown = shared.shutdown.clone();
    let idle_ms = shared.config.server_idle_timeout_ms;
    let frame_ms = shared.config.frame_read_timeout_ms;
    loop {
        let header = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return End::Shutdown,
            header = tokio::time::timeout(Config::duration(idle_ms), reader.read_header()) => header,
        };
        let pending = match header {
            Err(_) => {
                return End::Error(Error::Timeout {
                    peer: peer.to_owned(),
                    op: "waiting for the next frame",
                    after_ms: idle_ms,
                    setting: "server_idle_timeout_ms",
                });
            }
            Ok(Ok(Some(pending))) => pending,
            Ok(Ok(None)) => return End::Closed,
            Ok(Err(err)) => return corrupt_or_lost(writer, 0, err, shared).await,
        };
        let request_id = pending.request_id();
        // Memory for the body is taken from the server-wide budget first; the permit is
        // held until the request is handled (a stored block is then the manager's to
        // account for).
        let budget = tokio::time::timeout(
            Config::duration(frame_ms),
            shared.frame_budget.acquire_many(pending.body_len()),
        )
        .await;
        let _permit = match budget {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return End::Shutdown,
            Err(_) => {
                return End::Error(Error::Timeout {
                    peer: peer.to_owned(),
                    op: "waiting for frame memory",
                    after_ms: frame_ms,
                    setting: "server_frame_bytes_in_flight_max",
                });
            }
        };
        let frame =
            match tokio::time::timeout(Config::duration(frame_ms), reader.read_body(pending)).await
            {
                Err(_) => {
                    return End::Error(Error::Timeout {
                        peer: peer.to_owned(),
                        op: "reading the rest of a frame",
                        after_ms: frame_ms,
                        setting: "frame_read_timeout_ms",
                    });
                }
                Ok(Ok(frame)) => frame,
                Ok(Err(err)) => return corrupt_or_lost(writer, request_id, err, shared).await,
            };
        let reply = match handle(frame.message, peer, shared).await {
            Ok(reply) => reply,
            Err(violation) => {
                shared
                    .counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                reply_error(
                    writer,
                    frame.request_id,
                    ErrorCode::ProtocolViolation,
                    &violation,
                    shared,
                )
                .await;
                return End::Error(violation);
            }
        };
        if let Err(err) = send(writer, frame.request_id, reply, shared).await {
            return End::Error(Error::ConnectionLost {
                peer: peer.to_owned(),
                op: "reply",
                reason: err,
            });
        }
    }
}

/// Ends a connection after a read error; corrupt frames are counted and answered.
async fn corrupt_or_lost(
    writer: &mut FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    request_id: u64,
    err: Error,
    shared: &Shared,
) -> End {
    if matches!(err, Error::CorruptFrame { .. }) {
        shared
            .counters
            .corrupt_frames
            .fetch_add(1, Ordering::Relaxed);
        reply_error(writer, request_id, ErrorCode::CorruptFrame, &err, shared).await;
    }
    End::Error(err)
}

/// Serves one request. Store errors become error replies; `Err` is a protocol violation
/// that ends the connection.
async fn handle(message: Message, peer: &str, shared: &Shared) -> Result<Message> {
    let manager = &shared.manager;
    let as_reply = |err: Error| Message::Error {
        code: ErrorCode::for_error(&err),
        message: err.to_string(),
    };
    Ok(match message {
        Message::Put(block) => {
            let id = block.id();
            let len = block.len() as u64;
            // The frame decoder verified the data against the block's checksum: this is
            // the "checked when a peer stores it" check.
            let wait = Config::duration(shared.config.server_put_wait_max_ms);
            match manager
                .put_verified_within(block, wait, "server_put_wait_max_ms")
                .await
            {
                Ok((tier, _)) => {
                    shared
                        .counters
                        .blocks_received
                        .fetch_add(1, Ordering::Relaxed);
                    shared
                        .counters
                        .bytes_received
                        .fetch_add(len, Ordering::Relaxed);
                    Message::PutAck { block: id, tier }
                }
                Err(err) => {
                    tracing::warn!(peer = %peer, block = %id, error = %err, "put refused");
                    as_reply(err)
                }
            }
        }
        Message::Get { block } => match manager.get(&block).await {
            Ok(Some(found)) => Message::BlockData(found),
            Ok(None) => Message::NotFound { block },
            Err(err) => {
                tracing::warn!(peer = %peer, block = %block, error = %err, "get failed");
                as_reply(err)
            }
        },
        Message::Remove { blocks } => {
            let mut count = 0u32;
            for block in &blocks {
                match manager.remove(block).await {
                    Ok(true) => count += 1,
                    Ok(false) => {}
                    // The block is gone for readers even when its spill file could not be
                    // deleted (the manager drops the entry either way), so it counts.
                    Err(err) => {
                        tracing::warn!(peer = %peer, block = %block, error = %err, "remove failed");
                        count += 1;
                    }
                }
            }
            Message::Removed { count }
        }
        Message::List { after, limit } => {
            let cap = protocol::ids_per_frame(shared.config.frame_body_max_bytes)
                .min(LIST_LIMIT_MAX as usize);
            let (blocks, more) = manager.list_after(after, (limit as usize).min(cap));
            Message::ListReply { blocks, more }
        }
        Message::Ping => {
            let usage = manager.usage();
            Message::Pong(PeerStats {
                memory_used_bytes: usage.memory_used_bytes,
                memory_max_bytes: usage.memory_max_bytes,
                disk_used_bytes: usage.disk_used_bytes,
                disk_max_bytes: usage.disk_max_bytes,
                blocks: usage.memory_blocks + usage.disk_blocks,
                corrupt_frames: shared.counters.corrupt_frames.load(Ordering::Relaxed),
            })
        }
        other => {
            return Err(Error::Handshake {
                peer: peer.to_owned(),
                reason: format!(
                    "a client may not send {} frames after the handshake",
                    other.kind_name()
                ),
            });
        }
    })
}

async fn send(
    writer: &mut FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    request_id: u64,
    message: Message,
    shared: &Shared,
) -> std::result::Result<(), String> {
    let body_max = shared.config.frame_body_max_bytes;
    let frame = match protocol::encode(
        &Frame {
            request_id,
            message,
        },
        body_max,
    ) {
        Ok(frame) => frame,
        // A block read back from the store that no longer matches its checksum, or one
        // too large for the frame limit: answer with the error instead.
        Err(err) => {
            let message = Message::Error {
                code: ErrorCode::for_error(&err),
                message: err.to_string(),
            };
            protocol::encode(
                &Frame {
                    request_id,
                    message,
                },
                body_max,
            )
            .map_err(|err| err.to_string())?
        }
    };
    writer
        .send(&frame)
        .await
        .map_err(|cause| format!("write failed: {cause}"))
}

async fn reply_error(
    writer: &mut FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    request_id: u64,
    code: ErrorCode,
    err: &Error,
    shared: &Shared,
) {
    let message = Message::Error {
        code,
        message: err.to_string(),
    };
    // Best effort with a short bound: the connection is being closed because of a problem,
    // and a peer that does not read must not hold the task.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        send(writer, request_id, message, shared),
    )
    .await;
}
