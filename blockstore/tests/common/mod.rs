//! Shared fixtures of the replication tests: fast timeouts, in-process servers, and a TCP
//! proxy that can flip a bit in a chosen frame, cut a connection mid-frame, or stall.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blockstore::{Block, BlockId, BlockServer, Config};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Short bounds so failure paths finish in well under a second.
pub fn fast_config(name: &str) -> Config {
    Config {
        node_name: name.to_owned(),
        memory_max_bytes: 64 << 20,
        put_wait_max_ms: 200,
        peer_put_timeout_ms: 600,
        peer_request_timeout_ms: 600,
        connect_timeout_ms: 300,
        handshake_timeout_ms: 300,
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 500,
        reconnect_backoff_initial_ms: 20,
        reconnect_backoff_max_ms: 200,
        peer_dead_after_ms: 500,
        repair_interval_ms: 0,
        server_idle_timeout_ms: 5_000,
        ..Config::default()
    }
}

pub async fn start_servers(n: usize) -> Vec<BlockServer> {
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(
            BlockServer::bind("127.0.0.1:0", fast_config(&format!("executor-{i}")))
                .await
                .unwrap(),
        );
    }
    servers
}

pub fn addrs(servers: &[BlockServer]) -> Vec<String> {
    servers.iter().map(|s| s.local_addr().to_string()).collect()
}

pub fn block(stream: u32, sequence: u64, len: usize) -> Block {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(sequence) as u8)
        .collect();
    Block::new(
        BlockId::new(stream, 1, sequence),
        Bytes::from(data),
        len as u64 / 8,
    )
}

/// What the proxy does to the client-to-server or server-to-client bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Flip bit 0 of body byte `at` of the first frame of this kind.
    FlipInFrame { kind: u8, at: usize },
    /// Forward this many body bytes of the first frame of this kind, then cut the
    /// connection (both directions): a peer dying mid-transfer.
    CutInFrame { kind: u8, after: usize },
}

#[derive(Default)]
struct Faults {
    to_server: Mutex<Option<Fault>>,
    to_client: Mutex<Option<Fault>>,
    stalled: AtomicBool,
}

/// A TCP proxy in front of one server.
pub struct Proxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let f = Arc::clone(&faults);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let f1 = Arc::clone(&f);
                let f2 = Arc::clone(&f);
                tokio::spawn(async move { pump(cr, sw, &f1, true).await });
                tokio::spawn(async move { pump(sr, cw, &f2, false).await });
            }
        });
        Proxy { addr, faults }
    }

    pub fn fault_to_server(&self, fault: Fault) {
        *self.faults.to_server.lock().unwrap() = Some(fault);
    }

    pub fn fault_to_client(&self, fault: Fault) {
        *self.faults.to_client.lock().unwrap() = Some(fault);
    }

    /// Stop forwarding in both directions (the bytes are held, as by a stopped process).
    pub fn stall(&self, stalled: bool) {
        self.faults.stalled.store(stalled, Ordering::SeqCst);
    }
}

/// Tracks frame boundaries in one direction, to aim a fault at one frame.
struct FrameTracker {
    header: Vec<u8>,
    body_left: usize,
    body_pos: usize,
    kind: u8,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: &Faults,
    to_server: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut t = FrameTracker {
        header: Vec::new(),
        body_left: 0,
        body_pos: 0,
        kind: 0,
    };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while faults.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let slot = if to_server {
            &faults.to_server
        } else {
            &faults.to_client
        };
        let mut cut_at = None;
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            if t.body_left == 0 && t.header.len() < 17 {
                t.header.push(*byte);
                if t.header.len() == 17 {
                    t.body_left =
                        u32::from_le_bytes([t.header[4], t.header[5], t.header[6], t.header[7]])
                            as usize;
                    t.kind = t.header[8];
                    t.body_pos = 0;
                    if t.body_left == 0 {
                        t.header.clear();
                    }
                }
                continue;
            }
            let mut fault = slot.lock().unwrap();
            match *fault {
                Some(Fault::FlipInFrame { kind, at }) if kind == t.kind && at == t.body_pos => {
                    *byte ^= 1;
                    *fault = None;
                }
                Some(Fault::CutInFrame { kind, after })
                    if kind == t.kind && after == t.body_pos =>
                {
                    cut_at = Some(i);
                    *fault = None;
                }
                _ => {}
            }
            drop(fault);
            t.body_pos += 1;
            t.body_left -= 1;
            if t.body_left == 0 {
                t.header.clear();
            }
            if cut_at.is_some() {
                break;
            }
        }
        let end = cut_at.unwrap_or(n);
        if to.write_all(&buf[..end]).await.is_err() {
            break;
        }
        if cut_at.is_some() {
            // Cut: drop both halves; the other pump sees its write fail or its peer close.
            let _ = to.shutdown().await;
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// An address nothing listens on: a port the OS just handed out and took back.
pub fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Waits until `check` holds, polling, at most `timeout`.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}
