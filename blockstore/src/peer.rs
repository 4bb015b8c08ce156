//! [`PeerClient`]: the client side of one peer connection, kept alive in the background.
//!
//! A supervisor task per peer connects (bounded by `connect_timeout_ms`), performs the
//! handshake (bounded by `handshake_timeout_ms`), then sends a heartbeat every
//! `heartbeat_interval_ms`. When the connection breaks, a heartbeat goes unanswered, or a
//! request times out, the connection is closed: every request in flight on it fails at
//! once (so no caller waits on a dead socket), the peer is *down*, and the supervisor
//! reconnects with exponential backoff (`reconnect_backoff_initial_ms` doubling up to
//! `reconnect_backoff_max_ms`, with jitter). While a peer is down, requests to it fail
//! immediately with [`Error::PeerUnavailable`]; nothing queues for it.
//!
//! Requests are pipelined on the single connection: each carries a request id, and a
//! reader task hands each reply to its waiter. A request timing out closes the connection
//! rather than leaving an unknown amount of work queued on a slow peer.
//!
//! The peer's identity from the handshake includes a per-process instance number; a
//! change of instance across reconnections means the peer process restarted and lost
//! whatever it held in memory, which the replicated store uses to decide which replicas
//! are lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::block::{Block, BlockId};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{
    self, EncodedFrame, Frame, LIST_LIMIT_MAX, Message, NodeIdentity, PROTOCOL_VERSION, PeerStats,
    Tier,
};
use crate::wire::{FrameReader, FrameWriter};

/// A snapshot of one peer's connection state and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The address the client connects to.
    pub addr: String,
    /// Whether a connection is up (handshake done, heartbeats answered).
    pub connected: bool,
    /// The peer's identity on the current connection, or on the last one.
    pub node: Option<NodeIdentity>,
    /// How long the peer has been in its current state (up or down).
    pub in_state_for: Duration,
    /// Why the peer is down (the last connection or attempt error), if it is.
    pub down_reason: Option<String>,
    /// Usage from the last heartbeat reply.
    pub stats: Option<PeerStats>,
    /// Connections established since the client started.
    pub connects: u64,
    /// Times the peer came back with a different instance number (a restarted process).
    pub restarts_seen: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Corrupt frames received from this peer.
    pub corrupt_frames: u64,
}

/// A client for one peer's [`crate::BlockServer`], reconnecting in the background. Cheap to
/// clone; the background task stops when the last clone is dropped.
#[derive(Clone)]
pub struct PeerClient {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

struct Shared {
    addr: String,
    config: Arc<Config>,
    me: NodeIdentity,
    link: Mutex<Link>,
    /// Bumped on every change of `link`, for [`PeerClient::wait_connected`].
    link_changes: watch::Sender<u64>,
    put_slots: Semaphore,
    next_request_id: AtomicU64,
    connects: AtomicU64,
    /// Connection attempts finished (successful or not).
    attempts: AtomicU64,
    restarts_seen: AtomicU64,
    timeouts: AtomicU64,
    corrupt_frames: AtomicU64,
    stop: watch::Receiver<bool>,
}

enum Link {
    Up {
        conn: Arc<Connection>,
        since: Instant,
    },
    Down {
        since: Instant,
        reason: String,
        last_node: Option<NodeIdentity>,
    },
}

type Reply = std::result::Result<Message, String>;

/// One established connection.
struct Connection {
    remote: NodeIdentity,
    outgoing: mpsc::Sender<EncodedFrame>,
    /// Waiters by request id; `None` once the connection is closed.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>,
    closed: watch::Sender<Option<String>>,
    last_stats: Mutex<Option<PeerStats>>,
}

impl Connection {
    fn lock_pending(&self) -> MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Reply>>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, id: u64) -> std::result::Result<oneshot::Receiver<Reply>, String> {
        let mut pending = self.lock_pending();
        match pending.as_mut() {
            Some(map) => {
                let (tx, rx) = oneshot::channel();
                map.insert(id, tx);
                Ok(rx)
            }
            None => Err(self.close_reason()),
        }
    }

    fn unregister(&self, id: u64) {
        if let Some(map) = self.lock_pending().as_mut() {
            map.remove(&id);
        }
    }

    fn complete(&self, id: u64, reply: Message) {
        let waiter = self.lock_pending().as_mut().and_then(|map| map.remove(&id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(Ok(reply));
            }
            // A reply to a request that timed out (and was given up) or a stray id.
            None => tracing::debug!(request_id = id, "reply without a waiter dropped"),
        }
    }

    /// Closes the connection: fails every waiter with `reason` and stops both tasks. Only
    /// the first reason is kept.
    fn close(&self, reason: String) {
        let waiters = self.lock_pending().take();
        self.closed.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason.clone());
                true
            } else {
                false
            }
        });
        if let Some(waiters) = waiters {
            let reason = self.close_reason();
            for (_, tx) in waiters {
                let _ = tx.send(Err(reason.clone()));
            }
        }
    }

    fn close_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned())
    }

    fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }
}

impl PeerClient {
    /// Starts a client for the peer at `addr` (`host:port`) and returns at once; the
    /// connection is established in the background (see [`PeerClient::wait_connected`]).
    /// Must be called within a tokio runtime.
    pub fn start(addr: impl Into<String>, config: Config) -> Result<Self> {
        config.validate()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (link_changes, _) = watch::channel(0);
        let me = NodeIdentity::new(config.node_name.clone());
        let shared = Arc::new(Shared {
            addr: addr.into(),
            put_slots: Semaphore::new(config.peer_puts_in_flight_max),
            config: Arc::new(config),
            me,
            link: Mutex::new(Link::Down {
                since: Instant::now(),
                reason: "not connected yet".to_owned(),
                last_node: None,
            }),
            link_changes,
            next_request_id: AtomicU64::new(1),
            connects: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            restarts_seen: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            corrupt_frames: AtomicU64::new(0),
            stop: stop_rx,
        });
        tokio::spawn(supervise(Arc::clone(&shared)));
        Ok(PeerClient {
            shared,
            _stop: Arc::new(StopOnDrop(stop_tx)),
        })
    }

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        matches!(*self.shared.lock_link(), Link::Up { .. })
    }

    /// The identity of the peer on the current connection, if connected.
    pub fn remote(&self) -> Option<NodeIdentity> {
        match &*self.shared.lock_link() {
            Link::Up { conn, .. } => Some(conn.remote.clone()),
            Link::Down { .. } => None,
        }
    }

    /// Waits until connected, at most `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.is_connected()).await;
        self.is_connected()
    }

    /// Waits until connected or the first connection attempt failed, at most `timeout`:
    /// how long it is worth waiting at startup (a peer that refused is being retried in
    /// the background anyway).
    pub(crate) async fn wait_first_attempt(&self, timeout: Duration) {
        self.wait_until(timeout, || {
            self.is_connected() || self.shared.attempts.load(Ordering::SeqCst) > 0
        })
        .await;
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) {
        let mut changes = self.shared.link_changes.subscribe();
        let wait = async {
            loop {
                if done() {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }

    /// Connection state and counters.
    pub fn status(&self) -> PeerStatus {
        let s = &self.shared;
        let (connected, node, since, down_reason, stats) = match &*s.lock_link() {
            Link::Up { conn, since } => (
                true,
                Some(conn.remote.clone()),
                *since,
                None,
                *conn.last_stats.lock().unwrap_or_else(|p| p.into_inner()),
            ),
            Link::Down {
                since,
                reason,
                last_node,
            } => (false, last_node.clone(), *since, Some(reason.clone()), None),
        };
        PeerStatus {
            addr: s.addr.clone(),
            connected,
            node,
            in_state_for: since.elapsed(),
            down_reason,
            stats,
            connects: s.connects.load(Ordering::Relaxed),
            restarts_seen: s.restarts_seen.load(Ordering::Relaxed),
            timeouts: s.timeouts.load(Ordering::Relaxed),
            corrupt_frames: s.corrupt_frames.load(Ordering::Relaxed),
        }
    }

    /// Stores a block on the peer; resolves once the peer acknowledged it (after checking
    /// its checksum and storing it). Bounded by `peer_put_timeout_ms`, the wait for one of
    /// the `peer_puts_in_flight_max` slots included.
    pub async fn put(&self, block: Block) -> Result<Tier> {
        self.put_on_instance(block, false)
            .await
            .map(|(tier, _)| tier)
    }

    /// [`PeerClient::put`], also returning the instance number of the peer process that
    /// acknowledged it. `prechecked`: the caller verified the block's data against its
    /// checksum just before (see [`protocol::encode_prechecked`]).
    pub(crate) async fn put_on_instance(
        &self,
        block: Block,
        prechecked: bool,
    ) -> Result<(Tier, u64)> {
        let s = &self.shared;
        let timeout_ms = s.config.peer_put_timeout_ms;
        let deadline = Instant::now() + Config::duration(timeout_ms);
        let timeout = || Error::Timeout {
            peer: s.addr.clone(),
            op: "put",
            after_ms: timeout_ms,
            setting: "peer_put_timeout_ms",
        };
        let conn = s.connection()?;
        let _slot = tokio::time::timeout_at(deadline.into(), s.put_slots.acquire())
            .await
            .map_err(|_| timeout())?
            .map_err(|_| Error::Closed {
                what: "peer client",
            })?;
        let id = block.id();
        let reply = s
            .request_on(
                &conn,
                Message::Put(block),
                prechecked,
                "put",
                deadline,
                timeout_ms,
                "peer_put_timeout_ms",
            )
            .await?;
        match reply {
            Message::PutAck { block, tier } if block == id => Ok((tier, conn.remote.instance)),
            other => Err(s.unexpected("put", other)),
        }
    }

    /// Fetches a block: `Ok(None)` if the peer does not hold it. The block arrives checked
    /// against its checksum (the frame decoder checks it).
    pub async fn get(&self, id: &BlockId) -> Result<Option<Block>> {
        let reply = self
            .shared
            .request(Message::Get { block: *id }, "get")
            .await?;
        match reply {
            Message::BlockData(block) if block.id() == *id => Ok(Some(block)),
            Message::NotFound { block } if block == *id => Ok(None),
            other => Err(self.shared.unexpected("get", other)),
        }
    }

    /// Removes blocks from the peer (in as many frames as needed); returns how many were
    /// there.
    pub async fn remove(&self, ids: &[BlockId]) -> Result<u64> {
        let per_frame = protocol::ids_per_frame(self.shared.config.frame_body_max_bytes).max(1);
        let mut removed = 0u64;
        for chunk in ids.chunks(per_frame) {
            let reply = self
                .shared
                .request(
                    Message::Remove {
                        blocks: chunk.to_vec(),
                    },
                    "remove",
                )
                .await?;
            match reply {
                Message::Removed { count } => removed += u64::from(count),
                other => return Err(self.shared.unexpected("remove", other)),
            }
        }
        Ok(removed)
    }

    /// Every block id the peer holds, ascending (as many list requests as needed).
    pub async fn list(&self) -> Result<Vec<BlockId>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let reply = self
                .shared
                .request(
                    Message::List {
                        after,
                        limit: LIST_LIMIT_MAX,
                    },
                    "list",
                )
                .await?;
            match reply {
                Message::ListReply { blocks, more } => {
                    // A reply must move forward, or a buggy peer could keep us looping.
                    if blocks
                        .first()
                        .is_some_and(|first| after.is_some_and(|a| *first <= a))
                        || !blocks.windows(2).all(|w| w[0] < w[1])
                    {
                        return Err(Error::UnexpectedReply {
                            peer: self.shared.addr.clone(),
                            op: "list",
                            got: "list-reply with ids out of order",
                        });
                    }
                    after = blocks.last().copied().or(after);
                    let empty = blocks.is_empty();
                    all.extend(blocks);
                    if !more || empty {
                        return Ok(all);
                    }
                }
                other => return Err(self.shared.unexpected("list", other)),
            }
        }
    }

    /// Sends a heartbeat now and returns the peer's usage figures.
    pub async fn ping(&self) -> Result<PeerStats> {
        match self.shared.request(Message::Ping, "ping").await? {
            Message::Pong(stats) => Ok(stats),
            other => Err(self.shared.unexpected("ping", other)),
        }
    }
}

impl Shared {
    fn lock_link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_link(&self, link: Link) {
        *self.lock_link() = link;
        self.link_changes.send_modify(|n| *n += 1);
    }

    /// The current connection, or [`Error::PeerUnavailable`] saying why there is none.
    fn connection(&self) -> Result<Arc<Connection>> {
        match &*self.lock_link() {
            Link::Up { conn, .. } if !conn.is_closed() => Ok(Arc::clone(conn)),
            Link::Up { conn, .. } => Err(Error::PeerUnavailable {
                peer: self.addr.clone(),
                state: format!("connection closing: {}", conn.close_reason()),
            }),
            Link::Down { since, reason, .. } => Err(Error::PeerUnavailable {
                peer: self.addr.clone(),
                state: format!("down for {} ms: {reason}", since.elapsed().as_millis()),
            }),
        }
    }

    async fn request(&self, message: Message, op: &'static str) -> Result<Message> {
        let conn = self.connection()?;
        let timeout_ms = self.config.peer_request_timeout_ms;
        let deadline = Instant::now() + Config::duration(timeout_ms);
        self.request_on(
            &conn,
            message,
            false,
            op,
            deadline,
            timeout_ms,
            "peer_request_timeout_ms",
        )
        .await
    }

    /// Sends one request on `conn` and waits for its reply until `deadline`. On timeout the
    /// connection is closed (see the module docs). Error replies become
    /// [`Error::PeerError`].
    #[allow(clippy::too_many_arguments)]
    async fn request_on(
        &self,
        conn: &Arc<Connection>,
        message: Message,
        prechecked: bool,
        op: &'static str,
        deadline: Instant,
        timeout_ms: u64,
        setting: &'static str,
    ) -> Result<Message> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        // Encoding a put checks the block's data against its checksum ("checked when sent"),
        // unless the caller just did.
        let encode = if prechecked {
            protocol::encode_prechecked
        } else {
            protocol::encode
        };
        let frame = encode(
            &Frame {
                request_id,
                message,
            },
            self.config.frame_body_max_bytes,
        )?;
        let lost = |reason: String| Error::ConnectionLost {
            peer: self.addr.clone(),
            op,
            reason,
        };
        let timed_out = || {
            conn.unregister(request_id);
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            conn.close(format!(
                "{op} request timed out after {timeout_ms} ms (`{setting}`)"
            ));
            Error::Timeout {
                peer: self.addr.clone(),
                op,
                after_ms: timeout_ms,
                setting,
            }
        };
        let reply = conn.register(request_id).map_err(lost)?;
        match tokio::time::timeout_at(deadline.into(), conn.outgoing.send(frame)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => {
                conn.unregister(request_id);
                return Err(lost(conn.close_reason()));
            }
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline.into(), reply).await {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(lost(conn.close_reason())),
            Ok(Ok(Err(reason))) => Err(lost(reason)),
            Ok(Ok(Ok(Message::Error { code, message }))) => Err(Error::PeerError {
                peer: self.addr.clone(),
                op,
                code,
                message,
            }),
            Ok(Ok(Ok(message))) => Ok(message),
        }
    }

    fn unexpected(&self, op: &'static str, got: Message) -> Error {
        Error::UnexpectedReply {
            peer: self.addr.clone(),
            op,
            got: got.kind_name(),
        }
    }

    /// Connects and performs the handshake; on success the connection's reader and writer
    /// tasks are running.
    async fn connect(self: &Arc<Self>) -> Result<Arc<Connection>> {
        let connect_ms = self.config.connect_timeout_ms;
        let stream =
            tokio::time::timeout(Config::duration(connect_ms), TcpStream::connect(&self.addr))
                .await
                .map_err(|_| Error::Timeout {
                    peer: self.addr.clone(),
                    op: "connect",
                    after_ms: connect_ms,
                    setting: "connect_timeout_ms",
                })?
                .map_err(|cause| Error::Connect {
                    peer: self.addr.clone(),
                    cause,
                })?;
        // Replies are small and latency-bound; do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let body_max = self.config.frame_body_max_bytes;
        let mut reader = FrameReader::new(read, body_max, self.addr.clone());
        let mut writer = FrameWriter::new(write);
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            node: self.me.clone(),
        };
        let hello = protocol::encode(
            &Frame {
                request_id: 0,
                message: hello,
            },
            body_max,
        )?;
        let handshake_ms = self.config.handshake_timeout_ms;
        let handshake = async {
            writer
                .send(&hello)
                .await
                .map_err(|e| Error::ConnectionLost {
                    peer: self.addr.clone(),
                    op: "handshake",
                    reason: e.to_string(),
                })?;
            reader.read_frame().await
        };
        let reply = tokio::time::timeout(Config::duration(handshake_ms), handshake)
            .await
            .map_err(|_| Error::Timeout {
                peer: self.addr.clone(),
                op: "handshake",
                after_ms: handshake_ms,
                setting: "handshake_timeout_ms",
            })?;
        let fail = |reason: String| Error::Handshake {
            peer: self.addr.clone(),
            reason,
        };
        let remote = match reply {
            Err(err) => {
                if matches!(err, Error::CorruptFrame { .. }) {
                    self.corrupt_frames.fetch_add(1, Ordering::Relaxed);
                }
                return Err(err);
            }
            Ok(None) => return Err(fail("the peer closed the connection".to_owned())),
            Ok(Some(frame)) => match frame.message {
                Message::HelloAck { version, node } if version == PROTOCOL_VERSION => node,
                Message::HelloAck { version, .. } => {
                    return Err(fail(format!(
                        "peer answered with protocol version {version}"
                    )));
                }
                Message::Error { code, message } => return Err(fail(format!("{code}: {message}"))),
                other => return Err(fail(format!("unexpected {} frame", other.kind_name()))),
            },
        };
        let (outgoing, outgoing_rx) = mpsc::channel(self.config.peer_puts_in_flight_max + 16);
        let (closed, _) = watch::channel(None);
        let conn = Arc::new(Connection {
            remote,
            outgoing,
            pending: Mutex::new(Some(HashMap::new())),
            closed,
            last_stats: Mutex::new(None),
        });
        tokio::spawn(write_loop(Arc::clone(&conn), outgoing_rx, writer));
        tokio::spawn(read_loop(Arc::clone(self), Arc::clone(&conn), reader));
        Ok(conn)
    }
}

async fn write_loop(
    conn: Arc<Connection>,
    mut outgoing: mpsc::Receiver<EncodedFrame>,
    mut writer: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    let mut closed = conn.closed.subscribe();
    loop {
        let frame = tokio::select! {
            _ = closed.wait_for(Option::is_some) => break,
            frame = outgoing.recv() => frame,
        };
        let Some(frame) = frame else { break };
        let mut result = writer.write(&frame).await;
        // Write whatever else is queued before flushing: one syscall for a burst of
        // small frames.
        while result.is_ok() {
            match outgoing.try_recv() {
                Ok(next) => result = writer.write(&next).await,
                Err(_) => break,
            }
        }
        if let Err(err) = result.and(writer.flush().await) {
            conn.close(format!("write failed: {err}"));
            break;
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop(
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
) {
    let mut closed = conn.closed.subscribe();
    loop {
        let frame = tokio::select! {
            _ = closed.wait_for(Option::is_some) => break,
            frame = reader.read_frame() => frame,
        };
        match frame {
            Ok(Some(frame)) => {
                if let Message::Pong(stats) = &frame.message {
                    *conn.last_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(*stats);
                }
                conn.complete(frame.request_id, frame.message);
            }
            Ok(None) => {
                conn.close("the peer closed the connection".to_owned());
                break;
            }
            Err(err) => {
                if matches!(err, Error::CorruptFrame { .. }) {
                    shared.corrupt_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %shared.addr, error = %err, "corrupt frame from peer; closing the connection");
                }
                conn.close(err.to_string());
                break;
            }
        }
    }
}

/// Keeps the peer connected until the client is dropped.
async fn supervise(shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    let initial = Config::duration(shared.config.reconnect_backoff_initial_ms);
    let max = Config::duration(shared.config.reconnect_backoff_max_ms);
    let mut backoff = initial;
    let mut last_node: Option<NodeIdentity> = None;
    let mut logged_down = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let attempt = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            attempt = shared.connect() => attempt,
        };
        match attempt {
            Ok(conn) => {
                backoff = initial;
                logged_down = false;
                shared.connects.fetch_add(1, Ordering::Relaxed);
                if let Some(previous) = &last_node
                    && previous.instance != conn.remote.instance
                {
                    shared.restarts_seen.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        peer = %shared.addr,
                        node = %conn.remote.name,
                        "peer restarted (new instance); its earlier replicas are lost"
                    );
                }
                last_node = Some(conn.remote.clone());
                tracing::info!(
                    peer = %shared.addr,
                    node = %conn.remote.name,
                    instance = format_args!("{:016x}", conn.remote.instance),
                    "connected to peer"
                );
                shared.attempts.fetch_add(1, Ordering::SeqCst);
                shared.set_link(Link::Up {
                    conn: Arc::clone(&conn),
                    since: Instant::now(),
                });
                let stopped = heartbeat_until_closed(&shared, &conn, &mut stop).await;
                let reason = conn.close_reason();
                shared.set_link(Link::Down {
                    since: Instant::now(),
                    reason: reason.clone(),
                    last_node: last_node.clone(),
                });
                if stopped {
                    break;
                }
                tracing::warn!(peer = %shared.addr, reason = %reason, "peer connection lost; reconnecting");
            }
            Err(err) => {
                if !logged_down {
                    tracing::warn!(peer = %shared.addr, error = %err, "cannot reach peer; retrying with backoff");
                    logged_down = true;
                } else {
                    tracing::debug!(peer = %shared.addr, error = %err, "reconnect attempt failed");
                }
                let since = match &*shared.lock_link() {
                    Link::Down { since, .. } => *since,
                    Link::Up { .. } => Instant::now(),
                };
                // Counted before the link changes, which is what wakes `wait_first_attempt`.
                shared.attempts.fetch_add(1, Ordering::SeqCst);
                shared.set_link(Link::Down {
                    since,
                    reason: err.to_string(),
                    last_node: last_node.clone(),
                });
                // Jitter spreads reconnections of many clients to a restarted executor.
                let jitter = backoff.mul_f64(0.25 * (crate::random_u64() % 1000) as f64 / 1000.0);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
    if let Link::Up { conn, .. } = &*shared.lock_link() {
        conn.close("client stopped".to_owned());
    }
}

/// Sends heartbeats until the connection closes (returns false) or the client stops
/// (closes the connection, returns true).
async fn heartbeat_until_closed(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut closed = conn.closed.subscribe();
    let interval = Config::duration(shared.config.heartbeat_interval_ms);
    let timeout_ms = shared.config.heartbeat_timeout_ms;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {
                conn.close("client stopped".to_owned());
                return true;
            }
            _ = closed.wait_for(Option::is_some) => return false,
            _ = tokio::time::sleep(interval) => {}
        }
        let deadline = Instant::now() + Config::duration(timeout_ms);
        let beat = shared.request_on(
            conn,
            Message::Ping,
            false,
            "heartbeat",
            deadline,
            timeout_ms,
            "heartbeat_timeout_ms",
        );
        let result = tokio::select! {
            _ = stop.wait_for(|s| *s) => {
                conn.close("client stopped".to_owned());
                return true;
            }
            result = beat => result,
        };
        match result {
            Ok(Message::Pong(_)) => {}
            Ok(other) => {
                conn.close(format!(
                    "unexpected {} in reply to a heartbeat",
                    other.kind_name()
                ));
                return false;
            }
            Err(err) => {
                conn.close(err.to_string());
                return false;
            }
        }
    }
}
