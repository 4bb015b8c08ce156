//! The acknowledging socket receiver (`SocketOptions::acknowledged`) against a hand-written
//! sender on a real socket: it acknowledges a line only after the handler's store of the
//! block holding it resolved, its blocks carry their line numbers, it resumes where the
//! restore says, and a refusal stops the context with the sender's reason.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::clock::BoxFuture;
use engine::source::ack::{self, ToReceiver, ToSender};
use engine::{
    Block, BlockId, Config, MemoryBlockHandler, ReceivedBlockHandler, Restore, SocketOptions,
    StoredBlock, StreamId, StreamingContext,
};
use tokio::sync::Semaphore;

/// Stores in memory, but each store waits for a permit the test hands out.
struct Gated {
    inner: MemoryBlockHandler,
    gate: Arc<Semaphore>,
    stored: Mutex<Vec<StoredBlock>>,
}

impl ReceivedBlockHandler for Gated {
    fn mode(&self) -> &'static str {
        "test-gated"
    }
    fn store(&self, block: Block) -> BoxFuture<engine::Result<StoredBlock>> {
        let gate = Arc::clone(&self.gate);
        let stored = self.inner.insert(block);
        self.stored.lock().unwrap().push(stored.clone());
        Box::pin(async move {
            gate.acquire().await.unwrap().forget();
            Ok(stored)
        })
    }
    fn consumed(&self, id: BlockId) {
        self.inner.consumed(id);
    }
    fn read(&self, stored: &StoredBlock) -> BoxFuture<engine::Result<Option<Bytes>>> {
        self.inner.read(stored)
    }
    fn cleanup(&self, blocks: &[StoredBlock]) -> BoxFuture<engine::Result<()>> {
        self.inner.cleanup(blocks)
    }
}

fn context(listener: &TcpListener, handler: Arc<Gated>) -> StreamingContext {
    let mut config = Config::new(Duration::from_millis(50));
    config.block_interval_ms = 10;
    config.reconnect_backoff_initial_ms = 10;
    config.reconnect_backoff_max_ms = 50;
    let ctx = StreamingContext::new(config).unwrap();
    let lines = ctx
        .socket_text_stream_with(
            &listener.local_addr().unwrap().to_string(),
            SocketOptions::acknowledged(),
        )
        .unwrap();
    lines.count().foreach_batch(|_, _| {});
    ctx.set_default_block_handler(handler).unwrap();
    ctx
}

/// Accepts the receiver and reads its RESUME.
fn accept(listener: &TcpListener) -> (BufReader<TcpStream>, TcpStream, u64) {
    let (socket, _) = listener.accept().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(socket.try_clone().unwrap());
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).unwrap();
    match ack::decode_to_sender(&line).unwrap().unwrap().0 {
        ToSender::Resume { from } => (reader, socket, from),
        other => panic!("expected RESUME, got {other:?}"),
    }
}

fn read_ack(reader: &mut BufReader<TcpStream>) -> Option<u64> {
    let mut line = Vec::new();
    match reader.read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => match ack::decode_to_sender(&line).unwrap().unwrap().0 {
            ToSender::Ack { end } => Some(end),
            other => panic!("expected ACK, got {other:?}"),
        },
    }
}

fn send(socket: &mut TcpStream, m: &ToReceiver, lines: std::ops::Range<u64>) {
    let mut out = Vec::new();
    m.encode(&mut out);
    for i in lines {
        out.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    socket.write_all(&out).unwrap();
}

#[test]
fn acknowledges_only_after_the_store_resolved_and_numbers_the_lines() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let handler = Arc::new(Gated {
        inner: MemoryBlockHandler::new(),
        gate: Arc::clone(&gate),
        stored: Mutex::default(),
    });
    let ctx = context(&listener, Arc::clone(&handler));
    ctx.start().unwrap();
    let (mut reader, mut socket, from) = accept(&listener);
    assert_eq!(from, 0, "a first start resumes at 0");
    send(
        &mut socket,
        &ToReceiver::Header { from: 0, end: 100 },
        0..40,
    );

    // The block is handed to the handler, whose store has not resolved: no ack may come.
    let deadline = Instant::now() + Duration::from_secs(10);
    while handler.stored.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no block stored");
        std::thread::sleep(Duration::from_millis(5));
    }
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut line = Vec::new();
    let early = reader.read_until(b'\n', &mut line);
    assert!(
        early.is_err(),
        "acknowledged before the store resolved: {:?}",
        String::from_utf8_lossy(&line)
    );
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    gate.add_permits(1_000);
    assert_eq!(read_ack(&mut reader), Some(40));
    ctx.stop(false).unwrap();
    let stored = handler.stored.lock().unwrap().clone();
    assert_eq!(stored[0].source_offsets, Some(0..40));
}

#[test]
fn resumes_where_the_restore_says_and_stops_at_the_end() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let handler = Arc::new(Gated {
        inner: MemoryBlockHandler::new(),
        gate: Arc::new(Semaphore::new(1_000_000)),
        stored: Mutex::default(),
    });
    let ctx = context(&listener, Arc::clone(&handler));
    ctx.start_from(Restore {
        zero: engine::BatchTime::from_millis(engine::clock::now_epoch_ms()),
        resume_offsets: [(StreamId(0), 500)].into(),
        ..Restore::default()
    })
    .unwrap();
    let (mut reader, mut socket, from) = accept(&listener);
    assert_eq!(from, 500);
    send(
        &mut socket,
        &ToReceiver::Header {
            from: 500,
            end: 600,
        },
        500..560,
    );
    let mut acked = 0;
    while acked < 560 {
        acked = read_ack(&mut reader).expect("an ack");
    }
    // The connection drops with a partial line: it is not stored, and the next connection
    // resumes right after the last stored line.
    socket.write_all(b"line 560 is cut").unwrap();
    drop(socket);
    drop(reader);
    let (mut reader, mut socket, from) = accept(&listener);
    assert_eq!(from, 560);
    send(
        &mut socket,
        &ToReceiver::Header {
            from: 560,
            end: 600,
        },
        560..600,
    );
    socket.shutdown(std::net::Shutdown::Write).unwrap();
    while acked < 600 {
        acked = read_ack(&mut reader).expect("an ack");
    }
    // Every line stored: the receiver closes and does not come back.
    assert_eq!(read_ack(&mut reader), None);
    listener.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(listener.accept().is_err(), "no reconnection after the end");
    ctx.stop(false).unwrap();

    let stored = handler.stored.lock().unwrap().clone();
    let mut offsets: Vec<_> = stored
        .iter()
        .map(|b| b.source_offsets.clone().unwrap())
        .collect();
    offsets.sort_by_key(|r| r.start);
    let mut next = 500;
    for r in &offsets {
        assert_eq!(r.start, next, "contiguous, no line twice: {offsets:?}");
        next = r.end;
    }
    assert_eq!(next, 600);
    let records: u64 = stored.iter().map(|b| b.records).sum();
    assert_eq!(records, 100);
}

#[test]
fn a_refusal_stops_the_context_with_the_senders_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let handler = Arc::new(Gated {
        inner: MemoryBlockHandler::new(),
        gate: Arc::new(Semaphore::new(1_000)),
        stored: Mutex::default(),
    });
    let ctx = context(&listener, handler);
    ctx.start().unwrap();
    let (_reader, mut socket, _) = accept(&listener);
    send(
        &mut socket,
        &ToReceiver::Refused {
            reason: "acknowledged lines were lost: test".into(),
        },
        0..0,
    );
    let err = ctx.await_termination().unwrap_err().to_string();
    assert!(
        err.contains("refused") && err.contains("acknowledged lines were lost: test"),
        "{err}"
    );
}
