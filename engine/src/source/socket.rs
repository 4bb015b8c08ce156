//! The socket text source: lines over TCP, with reconnection (Spark's `socketTextStream`).
//!
//! The receiver reads into a buffer and cuts it, at a line boundary, into a block whenever
//! the block is `block_interval_ms` old or `block_size_max_bytes` long. The block is the
//! received bytes themselves (the `lines` format; no copy, no re-encoding), checked for
//! UTF-8 first (see [`crate::InvalidUtf8Policy`]). While a block is being stored the socket
//! is not read, so a slow pipeline slows the sender through TCP flow control.
//!
//! When the connection fails or ends, the receiver reports [`ReceiverState::Backoff`] and
//! reconnects after `reconnect_backoff_initial_ms`, doubling up to
//! `reconnect_backoff_max_ms`; after `reconnect_attempts_max` failed attempts in a row it
//! fails (the context stops with the error). A connection the sender closed cleanly is an
//! end of stream, not an error: until a connection succeeds again the back-off is reported
//! with `after_end_of_stream` and its attempts are not counted in
//! [`crate::ReceiverInfo::errors`] (a generator that served its lines and exited, followed by
//! a stop, is a clean run); a lost connection (a read error) or a refused connection before
//! any end of stream is. A line cut off by the end of a connection is
//! still a record (as Java's `readLine`); a partial line at a stop is dropped and logged.
//!
//! # Acknowledged mode
//!
//! With [`SocketOptions::acknowledged`] the receiver speaks the protocol of [`super::ack`]
//! with its sender (`ember gen --ack`): on each connection it first says where to resume (the
//! end of what it durably holds: on a first start 0, after a restart the stream's
//! [`crate::Restore::resume_offsets`], after a reconnect its last stored line), and reads the
//! sender's header. Every block carries its line numbers as
//! [`crate::StoredBlock::source_offsets`], and `ACK <end>` goes back to the sender only after
//! the store of the block ending at `end` resolved, that is, once the stream's durability
//! mode holds for it (and so, through the metadata log, a restart resumes past it). A
//! partial line at the end of a connection is dropped (the sender resends it); a sender's
//! refusal, or a header that does not resume where asked, fails the receiver (the context
//! stops with the reason). Once every line of the stream is stored, the receiver stays idle
//! until the context stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ack;
use super::receiver::ReceiverShared;
use super::text::check_lines;
use crate::error::{Error, Result};
use crate::metrics::ReceiverState;

/// Options of a socket text stream beyond the context's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// Stop the receiver (instead of reconnecting) when the sender closes the connection.
    pub stop_at_end_of_stream: bool,
    /// Speak the acknowledged protocol (see the module docs): number the lines, resume where
    /// the durable blocks end, acknowledge stored lines.
    pub acknowledged: bool,
}

impl SocketOptions {
    /// Options for the acknowledged protocol.
    pub fn acknowledged() -> Self {
        SocketOptions {
            acknowledged: true,
            ..SocketOptions::default()
        }
    }
}

enum ConnectionEnd {
    /// The peer closed the connection.
    EndOfStream,
    /// The context asked the receiver to stop.
    Stopped,
    /// Acknowledged mode: every line of the stream is stored.
    Complete,
}

/// How long a sender has to answer the acknowledged handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acknowledged mode's position, kept across connections.
struct AckPosition {
    /// One past the last line stored durably (what the next connection resumes from).
    durable_end: u64,
}

pub(crate) async fn run(
    shared: Arc<ReceiverShared>,
    address: String,
    options: SocketOptions,
) -> Result<()> {
    let config = Arc::clone(&shared.config);
    let mut ack = options.acknowledged.then(|| AckPosition {
        durable_end: shared.resume_offset.unwrap_or(0),
    });
    let mut failures = 0u32;
    let mut backoff_ms = config.reconnect_backoff_initial_ms;
    // The sender ended the stream cleanly and no connection succeeded since.
    let mut after_end_of_stream = false;
    loop {
        if shared.stop_requested().is_some() {
            return Ok(());
        }
        shared.set_state(ReceiverState::Connecting {
            address: address.clone(),
            attempt: failures + 1,
        });
        let connected = tokio::select! {
            biased;
            () = shared.stopped() => return Ok(()),
            c = TcpStream::connect(&address) => c,
        };
        let reason = match connected {
            Ok(stream) => {
                failures = 0;
                after_end_of_stream = false;
                backoff_ms = config.reconnect_backoff_initial_ms;
                shared.set_state(ReceiverState::Receiving {
                    source: address.clone(),
                });
                match receive(&shared, &address, stream, ack.as_mut()).await {
                    Ok(ConnectionEnd::Stopped) => return Ok(()),
                    Ok(ConnectionEnd::Complete) => {
                        shared.set_state(ReceiverState::Receiving {
                            source: format!("{address} (every line stored)"),
                        });
                        shared.stopped().await;
                        return Ok(());
                    }
                    Ok(ConnectionEnd::EndOfStream) if options.stop_at_end_of_stream => {
                        shared.count_end_of_stream();
                        return Ok(());
                    }
                    Ok(ConnectionEnd::EndOfStream) => {
                        shared.count_end_of_stream();
                        after_end_of_stream = true;
                        "the sender closed the connection".to_owned()
                    }
                    Err(e @ Error::Network { .. }) => e.to_string(),
                    Err(e) => return Err(e),
                }
            }
            Err(source) => {
                failures += 1;
                let error = Error::Network {
                    stream: shared.name.clone(),
                    operation: "connect to",
                    address: address.clone(),
                    source,
                };
                if config
                    .reconnect_attempts_max
                    .is_some_and(|max| failures >= max)
                {
                    return Err(error);
                }
                error.to_string()
            }
        };
        shared.set_state(ReceiverState::Backoff {
            attempt: failures,
            retry_in_ms: backoff_ms,
            reason,
            after_end_of_stream,
        });
        tokio::select! {
            biased;
            () = shared.stopped() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(config.reconnect_backoff_max_ms);
    }
}

/// The acknowledged mode of one connection.
struct AckSession<'a> {
    position: &'a mut AckPosition,
    /// The line number of the first line in the receive buffer.
    next_line: u64,
    /// One past the stream's last line (from the header).
    end: u64,
    writer: tokio::net::tcp::WriteHalf<'a>,
}

impl AckSession<'_> {
    /// Acknowledges every line before `end` (its block is stored).
    async fn ack(&mut self, shared: &ReceiverShared, address: &str, end: u64) -> Result<()> {
        self.position.durable_end = end;
        let mut line = Vec::new();
        ack::ToSender::Ack { end }.encode(&mut line);
        self.writer
            .write_all(&line)
            .await
            .map_err(|source| Error::Network {
                stream: shared.name.clone(),
                operation: "acknowledge to",
                address: address.to_owned(),
                source,
            })
    }
}

/// The acknowledged handshake: says where to resume, reads the header. Returns the stream's
/// end; what the sender sent after the header stays in `buf`.
async fn handshake(
    shared: &ReceiverShared,
    address: &str,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    from: u64,
) -> Result<u64> {
    let network = |operation, source| Error::Network {
        stream: shared.name.clone(),
        operation,
        address: address.to_owned(),
        source,
    };
    let fatal = |message: String| Error::Receiver {
        stream: shared.name.clone(),
        message: format!("acknowledged source {address}: {message}"),
    };
    let mut hello = Vec::new();
    ack::ToSender::Resume { from }.encode(&mut hello);
    stream
        .write_all(&hello)
        .await
        .map_err(|e| network("send the resume request to", e))?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        match ack::decode_to_receiver(buf) {
            Ok(Some((header, used))) => {
                buf.drain(..used);
                return match header {
                    ack::ToReceiver::Refused { reason } => Err(fatal(format!(
                        "the sender refused to resume at line {from}: {reason}"
                    ))),
                    ack::ToReceiver::Header { from: got, end } if got == from => Ok(end),
                    ack::ToReceiver::Header { from: got, .. } => Err(fatal(format!(
                        "asked to resume at line {from}, the sender resumed at line {got}"
                    ))),
                };
            }
            Ok(None) => {}
            // Not our protocol (a plain `ember gen` without --ack, say): never guess.
            Err(e) => {
                return Err(fatal(format!(
                    "bad handshake: {e} (is the sender `ember gen --ack`?)"
                )));
            }
        }
        let read = tokio::select! {
            biased;
            () = shared.stopped() => return Err(fatal("stopped during the handshake".into())),
            r = tokio::time::timeout_at(deadline.into(), stream.read_buf(buf)) => r,
        };
        match read {
            Err(_) => {
                return Err(network(
                    "read the handshake from",
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no header within {HANDSHAKE_TIMEOUT:?}"),
                    ),
                ));
            }
            Ok(Ok(0)) => {
                return Err(network(
                    "read the handshake from",
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(network("read the handshake from", e)),
        }
    }
}

async fn receive(
    shared: &ReceiverShared,
    address: &str,
    mut stream: TcpStream,
    ack_position: Option<&mut AckPosition>,
) -> Result<ConnectionEnd> {
    let config = &shared.config;
    let chunk = config.socket_read_chunk_bytes;
    let block_max = config.block_size_max_bytes;
    let interval = Duration::from_millis(config.block_interval_ms);
    let pool = Arc::new(BufferPool {
        free: Mutex::default(),
        capacity: block_max + chunk,
        keep: config.receiver_queue_blocks_max + 2,
    });
    let mut buf = pool.take();
    let mut block_started: Option<Instant> = None;
    let mut next_line = 1u64;
    let network = |source| Error::Network {
        stream: shared.name.clone(),
        operation: "read from",
        address: address.to_owned(),
        source,
    };
    let mut session = match ack_position {
        None => None,
        Some(position) => {
            let from = position.durable_end;
            let end = handshake(shared, address, &mut stream, &mut buf, from).await?;
            if from == end {
                return Ok(ConnectionEnd::Complete);
            }
            tracing::info!(stream = %shared.name, %address, from, end, "acknowledged source resumes");
            Some((from, end, position))
        }
    };
    let (mut reader, writer) = stream.split();
    let mut ack = session.take().map(|(from, end, position)| AckSession {
        position,
        next_line: from,
        end,
        writer,
    });
    if !buf.is_empty() {
        // Data that came with the header.
        block_started = Some(Instant::now());
    }
    loop {
        if buf.capacity() - buf.len() < chunk {
            // Only a line longer than a block gets here.
            buf.reserve(chunk);
        }
        let deadline = block_started.map(|s| s + interval);
        let read = tokio::select! {
            biased;
            () = shared.stopped() => None,
            r = reader.read_buf(&mut buf) => Some(r.map_err(network)?),
            () = sleep_until(deadline), if deadline.is_some() => Some(usize::MAX),
        };
        match read {
            None => {
                // Stopping: store the complete lines received; a partial line is dropped.
                let complete = complete_len(&buf);
                if buf.len() > complete {
                    tracing::warn!(stream = %shared.name, bytes = buf.len() - complete, "dropping a partial last line at stop");
                }
                let (block, _) = cut(&pool, &mut buf, complete);
                store_lines(shared, address, block, &mut next_line, ack.as_mut()).await?;
                return Ok(ConnectionEnd::Stopped);
            }
            Some(0) => {
                // End of stream: the last line counts even without its newline, except in
                // acknowledged mode, where the sender always ends its lines and a cut line
                // is resent on the next connection.
                let len = if ack.is_some() {
                    complete_len(&buf)
                } else {
                    buf.len()
                };
                let (block, _) = cut(&pool, &mut buf, len);
                store_lines(shared, address, block, &mut next_line, ack.as_mut()).await?;
                if let Some(ack) = &ack {
                    if ack.next_line >= ack.end {
                        return Ok(ConnectionEnd::Complete);
                    }
                    tracing::warn!(stream = %shared.name, %address, line = ack.next_line, end = ack.end, "the sender closed before the end of the stream");
                }
                return Ok(ConnectionEnd::EndOfStream);
            }
            Some(n) => {
                if n != usize::MAX && block_started.is_none() {
                    block_started = Some(Instant::now());
                }
                let due = buf.len() >= block_max
                    || block_started.is_some_and(|s| s.elapsed() >= interval);
                let complete = complete_len(&buf);
                if due && complete > 0 {
                    let (block, rest) = cut(&pool, &mut buf, complete);
                    block_started = (rest > 0).then(Instant::now);
                    store_lines(shared, address, block, &mut next_line, ack.as_mut()).await?;
                }
            }
        }
    }
}

/// Cuts the first `len` bytes of `buf` off as a block, leaving the rest (a partial line) in a
/// fresh buffer from the pool. The block's buffer goes back to the pool when the block's
/// last reference is dropped. Returns the block and the length of what was left.
fn cut(pool: &Arc<BufferPool>, buf: &mut Vec<u8>, len: usize) -> (Bytes, usize) {
    let mut next = pool.take();
    next.extend_from_slice(&buf[len..]);
    let rest = next.len();
    let full = std::mem::replace(buf, next);
    let block = Bytes::from_owner(Pooled {
        buf: full,
        pool: Arc::clone(pool),
    })
    .slice(..len);
    (block, rest)
}

/// Block buffers, recycled: a received block is a buffer of `block_size_max_bytes` (plus a
/// read), and allocating and freeing one per block lets glibc's allocator raise its mmap
/// threshold past that size and then keep the freed buffers in its heap, so the process's
/// memory grew with the input (measured: 108 MB at 2 M lines, 161 MB at 10 M). Buffers that
/// live for the whole connection do not. At most `keep` idle buffers are kept.
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
    keep: usize,
}

impl BufferPool {
    fn take(&self) -> Vec<u8> {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        free.unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    fn put(&self, mut buf: Vec<u8>) {
        // A buffer that grew for an over-long line is not kept.
        if buf.capacity() > 2 * self.capacity {
            return;
        }
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// A pooled buffer owned by a block's `Bytes`.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// The length of the buffer's complete lines.
fn complete_len(buf: &[u8]) -> usize {
    memchr::memrchr(b'\n', buf).map_or(0, |i| i + 1)
}

/// Checks a block of lines and stores it: as one block, or, under a rate limit, as blocks of
/// at most a block interval's worth of records (so the limiter paces the source block by
/// block, as Spark's block generator does record by record).
async fn store_lines(
    shared: &ReceiverShared,
    address: &str,
    mut lines: Bytes,
    next_line: &mut u64,
    mut ack: Option<&mut AckSession<'_>>,
) -> Result<()> {
    let per_block = shared
        .limiter
        .rate()
        .map(|rate| (rate.saturating_mul(shared.config.block_interval_ms) / 1_000).max(1) as usize);
    while !lines.is_empty() {
        let mut len = lines.len();
        if let Some(max) = per_block {
            // The end of the max-th line, if there are more lines than that.
            if let Some(end) = memchr::memchr_iter(b'\n', &lines).nth(max - 1) {
                len = len.min(end + 1);
            }
        }
        let raw = lines.split_to(len);
        let checked = check_lines(
            raw,
            shared.config.invalid_utf8,
            &shared.name,
            address,
            *next_line,
        )?;
        // Every line is either kept or dropped as invalid (one count of the newlines).
        let lines_in_raw = checked.records + checked.invalid;
        *next_line += lines_in_raw;
        shared.count_invalid(checked.invalid);
        match ack.as_deref_mut() {
            None if checked.records > 0 => {
                shared
                    .store_block(checked.bytes, checked.records, None)
                    .await?;
            }
            None => {}
            Some(ack) => {
                let offsets = ack.next_line..ack.next_line + lines_in_raw;
                if offsets.end > ack.end {
                    return Err(Error::Receiver {
                        stream: shared.name.clone(),
                        message: format!(
                            "acknowledged source {address} sent lines past the end it announced ({})",
                            ack.end
                        ),
                    });
                }
                ack.next_line = offsets.end;
                // Lines dropped as invalid are not acknowledged (no block holds them): they
                // are resent, and dropped again, after a reconnect.
                if checked.records > 0 {
                    let end = offsets.end;
                    shared
                        .store_block(checked.bytes, checked.records, Some(offsets))
                        .await?;
                    ack.ack(shared, address, end).await?;
                }
            }
        }
    }
    Ok(())
}
