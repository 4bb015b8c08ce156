//! Frames over a byte stream: the async reader and writer both ends of a connection use.
//!
//! The reader checks a frame's length against `frame_body_max_bytes` before allocating its
//! buffer, reads the body straight into that buffer (block data is then a slice of it, not
//! a copy), and tracks the byte offset of every frame so errors can say where in the
//! connection a bad frame started.

use bytes::BytesMut;
use std::io::IoSlice;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::error::{Error, FrameDefect, Result};
use crate::protocol::{self, EncodedFrame, FRAME_HEADER_LEN, Frame, FrameHeader};

const READ_BUFFER_BYTES: usize = 64 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Reads frames from one connection.
pub(crate) struct FrameReader<R> {
    inner: BufReader<R>,
    /// Offset of the next frame's first byte in the connection's stream.
    offset: u64,
    body_max_bytes: u32,
    peer: String,
}

/// A frame header read, with the bytes it came from (the CRC covers them).
pub(crate) struct PendingFrame {
    bytes: [u8; FRAME_HEADER_LEN],
    header: FrameHeader,
}

impl PendingFrame {
    /// The request id the header claims (not yet CRC-checked).
    pub(crate) fn request_id(&self) -> u64 {
        self.header.request_id
    }

    /// The body length the header claims (already checked against the limit).
    pub(crate) fn body_len(&self) -> u32 {
        self.header.body_len
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R, body_max_bytes: u32, peer: String) -> Self {
        FrameReader {
            inner: BufReader::with_capacity(READ_BUFFER_BYTES, inner),
            offset: 0,
            body_max_bytes,
            peer,
        }
    }

    /// Waits for the next frame's header. `Ok(None)` when the peer closed the connection
    /// at a frame boundary.
    pub(crate) async fn read_header(&mut self) -> Result<Option<PendingFrame>> {
        let mut bytes = [0u8; FRAME_HEADER_LEN];
        let mut have = 0;
        while have < FRAME_HEADER_LEN {
            let n = self
                .inner
                .read(&mut bytes[have..])
                .await
                .map_err(|e| self.lost(e))?;
            if n == 0 {
                if have == 0 {
                    return Ok(None);
                }
                return Err(self.closed_inside(have as u64, FRAME_HEADER_LEN as u64));
            }
            have += n;
        }
        let header =
            FrameHeader::parse(&bytes, self.body_max_bytes).map_err(|d| self.corrupt(d))?;
        Ok(Some(PendingFrame { bytes, header }))
    }

    /// Reads and decodes the body of a frame whose header [`FrameReader::read_header`]
    /// returned.
    pub(crate) async fn read_body(&mut self, pending: PendingFrame) -> Result<Frame> {
        let len = pending.header.body_len as usize;
        // `len` was checked against `frame_body_max_bytes` when the header was parsed.
        let mut body = BytesMut::with_capacity(len);
        while body.len() < len {
            let want = (len - body.len()) as u64;
            let n = (&mut self.inner)
                .take(want)
                .read_buf(&mut body)
                .await
                .map_err(|e| self.lost(e))?;
            if n == 0 {
                return Err(self.closed_inside(
                    (FRAME_HEADER_LEN + body.len()) as u64,
                    (FRAME_HEADER_LEN + len) as u64,
                ));
            }
        }
        let frame = protocol::decode_body(&pending.bytes, &pending.header, body.freeze())
            .map_err(|d| self.corrupt(d))?;
        self.offset += (FRAME_HEADER_LEN + len) as u64;
        Ok(frame)
    }

    /// Reads a whole frame (header and body, no timeouts).
    pub(crate) async fn read_frame(&mut self) -> Result<Option<Frame>> {
        match self.read_header().await? {
            Some(pending) => self.read_body(pending).await.map(Some),
            None => Ok(None),
        }
    }

    fn corrupt(&self, defect: FrameDefect) -> Error {
        Error::CorruptFrame {
            peer: self.peer.clone(),
            frame_offset: self.offset,
            defect,
        }
    }

    fn lost(&self, err: std::io::Error) -> Error {
        Error::ConnectionLost {
            peer: self.peer.clone(),
            op: "read",
            reason: format!("read failed at byte {}: {err}", self.offset),
        }
    }

    fn closed_inside(&self, have: u64, need: u64) -> Error {
        Error::ConnectionLost {
            peer: self.peer.clone(),
            op: "read",
            reason: format!(
                "closed inside the frame at byte {} ({have} of {need} bytes received)",
                self.offset
            ),
        }
    }
}

/// Writes frames to one connection. Small frames collect in a buffer until
/// [`FrameWriter::flush`]; a frame carrying block data goes out in one vectored write of
/// the buffered bytes, its head and its data (written from the block's own memory, not
/// copied), so a put is one syscall and, on loopback, usually one segment train.
pub(crate) struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

/// Block data smaller than this is copied into the buffer instead (a copy is cheaper than
/// a syscall for small data).
const INLINE_DATA_MAX_BYTES: usize = 16 * 1024;

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
        }
    }

    /// Queues a frame (it may stay buffered until [`FrameWriter::flush`]).
    pub(crate) async fn write(&mut self, frame: &EncodedFrame) -> std::io::Result<()> {
        self.buf.extend_from_slice(frame.head());
        let data = frame.data();
        if data.len() <= INLINE_DATA_MAX_BYTES {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= WRITE_BUFFER_BYTES {
                self.flush_buffer().await?;
            }
            return Ok(());
        }
        let mut slices = [IoSlice::new(&self.buf), IoSlice::new(data)];
        let mut slices: &mut [IoSlice<'_>] = &mut slices;
        while !slices.is_empty() {
            let n = self.inner.write_vectored(slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        self.buf.clear();
        Ok(())
    }

    async fn flush_buffer(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        self.flush_buffer().await?;
        self.inner.flush().await
    }

    /// Writes and flushes one frame.
    pub(crate) async fn send(&mut self, frame: &EncodedFrame) -> std::io::Result<()> {
        self.write(frame).await?;
        self.flush().await
    }

    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        self.flush_buffer().await?;
        self.inner.shutdown().await
    }
}
