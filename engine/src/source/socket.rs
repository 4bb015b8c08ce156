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

use bytes::BytesMut;
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
    let mut buf = BytesMut::with_capacity(block_max + chunk);
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
                let partial = buf.len() - complete_len(&buf);
                if partial > 0 {
                    tracing::warn!(stream = %shared.name, bytes = partial, "dropping a partial last line at stop");
                }
                store_lines(shared, address, &mut buf, &mut next_line, false).await?;
                return Ok(ConnectionEnd::Stopped);
            }
            Some(0) => {
                // End of stream: the last line counts even without its newline.
                store_lines(shared, address, &mut buf, &mut next_line, true).await?;
                return Ok(ConnectionEnd::EndOfStream);
            }
            Some(n) => {
                if n != usize::MAX && block_started.is_none() {
                    block_started = Some(Instant::now());
                }
                let due = buf.len() >= block_max
                    || block_started.is_some_and(|s| s.elapsed() >= interval);
                if due && complete_len(&buf) > 0 {
                    store_lines(shared, address, &mut buf, &mut next_line, false).await?;
                    // A block is its own allocation: start the next one in a fresh buffer,
                    // carrying over the partial line.
                    let mut next = BytesMut::with_capacity(block_max + chunk);
                    next.extend_from_slice(&buf);
                    buf = next;
                    block_started = (!buf.is_empty()).then(Instant::now);
                }
            }
        }
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

/// Cuts the complete lines (or everything, at the end of the stream) off `buf`, checks them
/// and stores them as blocks: one block, or, under a rate limit, blocks of at most a block
/// interval's worth of records (so the limiter paces the source block by block, as Spark's
/// block generator does record by record).
async fn store_lines(
    shared: &ReceiverShared,
    address: &str,
    buf: &mut BytesMut,
    next_line: &mut u64,
    all: bool,
) -> Result<()> {
    let per_block = shared
        .limiter
        .rate()
        .map(|rate| (rate.saturating_mul(shared.config.block_interval_ms) / 1_000).max(1) as usize);
    loop {
        let complete = complete_len(buf);
        let mut len = if all { buf.len() } else { complete };
        if len == 0 {
            return Ok(());
        }
        if let Some(max) = per_block {
            // The end of the max-th line, if there are more lines than that.
            if let Some(end) = memchr::memchr_iter(b'\n', &buf[..len]).nth(max - 1) {
                len = len.min(end + 1);
            }
        }
        let raw = buf.split_to(len).freeze();
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
            shared.store_block(checked.bytes, checked.records).await?;
        }
    }
}
