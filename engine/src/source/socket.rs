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
//! fails (the context stops with the error). A line cut off by the end of a connection is
//! still a record (as Java's `readLine`); a partial line at a stop is dropped and logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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
}

enum ConnectionEnd {
    /// The peer closed the connection.
    EndOfStream,
    /// The context asked the receiver to stop.
    Stopped,
}

pub(crate) async fn run(
    shared: Arc<ReceiverShared>,
    address: String,
    options: SocketOptions,
) -> Result<()> {
    let config = Arc::clone(&shared.config);
    let mut failures = 0u32;
    let mut backoff_ms = config.reconnect_backoff_initial_ms;
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
                backoff_ms = config.reconnect_backoff_initial_ms;
                shared.set_state(ReceiverState::Receiving {
                    source: address.clone(),
                });
                match receive(&shared, &address, stream).await {
                    Ok(ConnectionEnd::Stopped) => return Ok(()),
                    Ok(ConnectionEnd::EndOfStream) if options.stop_at_end_of_stream => {
                        return Ok(());
                    }
                    Ok(ConnectionEnd::EndOfStream) => "the sender closed the connection".to_owned(),
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
        });
        tokio::select! {
            biased;
            () = shared.stopped() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(config.reconnect_backoff_max_ms);
    }
}

async fn receive(
    shared: &ReceiverShared,
    address: &str,
    mut stream: TcpStream,
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
    loop {
        if buf.capacity() - buf.len() < chunk {
            // Only a line longer than a block gets here.
            buf.reserve(chunk);
        }
        let deadline = block_started.map(|s| s + interval);
        let read = tokio::select! {
            biased;
            () = shared.stopped() => None,
            r = stream.read_buf(&mut buf) => Some(r.map_err(network)?),
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
                store_lines(shared, address, block, &mut next_line).await?;
                return Ok(ConnectionEnd::Stopped);
            }
            Some(0) => {
                // End of stream: the last line counts even without its newline.
                let len = buf.len();
                let (block, _) = cut(&pool, &mut buf, len);
                store_lines(shared, address, block, &mut next_line).await?;
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
                    store_lines(shared, address, block, &mut next_line).await?;
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
        let lines_in_raw = crate::block::LinesCodec::count_records(&raw);
        let checked = check_lines(
            raw,
            shared.config.invalid_utf8,
            &shared.name,
            address,
            *next_line,
        )?;
        *next_line += lines_in_raw;
        shared.count_invalid(checked.invalid);
        if checked.records > 0 {
            shared
                .store_block(checked.bytes, checked.records, None)
                .await?;
        }
    }
    Ok(())
}
