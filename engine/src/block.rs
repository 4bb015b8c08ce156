//! Blocks: the unit in which received data is stored, allocated to batches and recomputed.
//!
//! A receiver turns its source's records into *blocks*: a [`BlockId`], a record count and
//! the records' bytes in the stream's [`BlockCodec`]. A block is stored through the
//! [`crate::ReceivedBlockHandler`] before the source is acknowledged, allocated whole to one
//! batch, and read back (from memory or from durable storage) when a batch must be
//! recomputed. A batch is a deterministic function of its blocks' bytes.
//!
//! # Block formats
//!
//! The bytes of a block are in one of two encodings, chosen by the input stream (not by the
//! record type). Both are stable: blocks written by one version are read by the next.
//!
//! ```text
//! lines (text streams, record type Str):
//!     line*            each line is UTF-8 text followed by "\n"; a "\r" right before the
//!                      "\n" belongs to the terminator; the last line may lack its "\n".
//!                      The bytes are exactly what the source sent, never re-encoded, so a
//!                      received buffer becomes a block without a copy.
//! postcard (any serde record type):
//!     record*          each record in postcard's wire format (postcard 1.x, stable); the
//!                      records are concatenated and the block's record count says how many.
//! ```

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use bytestring::ByteString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::text::Str;

/// Identifies an input stream within a pipeline. Assigned in the order streams are created,
/// so it is stable for a graph built by the same code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies a block: its stream and a sequence number that increases with every block the
/// stream's receiver stores (across restarts, the sequence continues; see
/// [`crate::Restore`]). Blocks of a batch are merged in `BlockId` order, which makes
/// a batch's result independent of the order in which blocks arrived or were processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockId {
    /// The input stream.
    pub stream: StreamId,
    /// The block's sequence number within the stream.
    pub seq: u64,
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input-{}-{}", self.stream.0, self.seq)
    }
}

/// A received block on its way to storage.
#[derive(Clone, Debug)]
pub struct Block {
    /// The block's id.
    pub id: BlockId,
    /// The number of records in `bytes`.
    pub records: u64,
    /// The records in the stream's block encoding.
    pub bytes: Bytes,
    /// The source positions the block holds, `[first, end)` (for the acknowledged socket
    /// source: line numbers), if the source has positions. A restart resumes the source
    /// after the highest `end` recovered ([`crate::Restore::resume_offsets`]).
    pub source_offsets: Option<std::ops::Range<u64>>,
}

/// What the engine knows about a stored block: enough to allocate it to a batch, to count its
/// records, and to read it back. This is what a metadata log records for each block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlock {
    /// The block's id.
    pub id: BlockId,
    /// The number of records.
    pub records: u64,
    /// The length of the block's bytes.
    pub len_bytes: u64,
    /// Where the handler that stored the block can find it again (a WAL position, replica
    /// peers, ...). Opaque to the engine; empty for the in-memory handler.
    pub locator: Vec<u8>,
    /// The source positions the block holds (see [`Block::source_offsets`]).
    #[serde(default)]
    pub source_offsets: Option<std::ops::Range<u64>>,
}

/// Encodes records into block bytes and decodes them back (see the module docs for the
/// formats). Decoding must accept exactly what encoding produces and reject anything else
/// with a message (never panic: the bytes may come from disk).
pub trait BlockCodec<T>: Send + Sync + 'static {
    /// The format's name, for errors and docs.
    fn name(&self) -> &'static str;

    /// Appends the encoding of `records` to `out`.
    fn encode(&self, records: &[T], out: &mut Vec<u8>) -> Result<(), String>;

    /// Calls `emit` with every record of `bytes`, in order, and returns how many there were.
    fn decode(&self, bytes: &Bytes, emit: &mut dyn FnMut(T)) -> Result<u64, String>;

    /// [`BlockCodec::decode`] in chunks: calls `out` with the records of `bytes`, in order,
    /// in non-empty chunks of at most `chunk` records (`out` takes what it wants out of the
    /// chunk; what it leaves is dropped), and returns how many there were. The engine's
    /// narrow stages consume records a chunk at a time; a codec may override this to fill
    /// the chunk directly rather than through a call per record.
    fn decode_chunks(
        &self,
        bytes: &Bytes,
        chunk: usize,
        out: &mut dyn FnMut(&mut Vec<T>),
    ) -> Result<u64, String> {
        let chunk = chunk.max(1);
        let mut buf = Vec::with_capacity(chunk);
        let records = self.decode(bytes, &mut |record| {
            buf.push(record);
            if buf.len() >= chunk {
                out(&mut buf);
                buf.clear();
            }
        })?;
        if !buf.is_empty() {
            out(&mut buf);
        }
        Ok(records)
    }
}

/// The `lines` block format: newline-delimited UTF-8 text, records are [`Str`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LinesCodec;

impl LinesCodec {
    /// Counts the records of a `lines` block (without validating it).
    pub fn count_records(bytes: &[u8]) -> u64 {
        let newlines = memchr::memchr_iter(b'\n', bytes).count() as u64;
        match bytes.last() {
            Some(b'\n') | None => newlines,
            Some(_) => newlines + 1,
        }
    }
}

impl BlockCodec<Str> for LinesCodec {
    fn name(&self) -> &'static str {
        "lines"
    }

    fn encode(&self, records: &[Str], out: &mut Vec<u8>) -> Result<(), String> {
        for (i, line) in records.iter().enumerate() {
            if line.contains('\n') || line.ends_with('\r') {
                return Err(format!(
                    "record {i} contains a newline or ends with a carriage return, \
                     which the lines format cannot represent"
                ));
            }
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        Ok(())
    }

    fn decode(&self, bytes: &Bytes, emit: &mut dyn FnMut(Str)) -> Result<u64, String> {
        for_each_line(bytes, emit)
    }

    fn decode_chunks(
        &self,
        bytes: &Bytes,
        chunk: usize,
        out: &mut dyn FnMut(&mut Vec<Str>),
    ) -> Result<u64, String> {
        let chunk = chunk.max(1);
        let text = checked_text(bytes)?;
        let whole = text.as_bytes();
        let mut buf = Vec::with_capacity(chunk);
        let mut records = 0u64;
        let mut start = 0usize;
        // The loop is written out (not `for_each_line` with a closure) so that each line
        // is built in registers and stored straight into the chunk: a record handed over
        // through memory is read back with wider loads than the stores that wrote it (a
        // store-forwarding stall per line). `push` under the capacity check cannot grow,
        // which keeps the record out of a stack slot (see `Chunker::push` in the stages).
        for end in memchr::memchr_iter(b'\n', whole) {
            let line = Str::line_of(&text, start, end);
            if buf.len() < buf.capacity() {
                buf.push(line);
            } else {
                grow_and_push(&mut buf, line);
            }
            records += 1;
            start = end + 1;
            if buf.len() >= chunk {
                out(&mut buf);
                buf.clear();
            }
        }
        if start < whole.len() {
            buf.push(Str::line_of(&text, start, whole.len()));
            records += 1;
        }
        if !buf.is_empty() {
            out(&mut buf);
        }
        Ok(records)
    }
}

#[cold]
#[inline(never)]
fn grow_and_push(buf: &mut Vec<Str>, line: Str) {
    buf.push(line);
}

/// A block's bytes as one shared UTF-8 buffer that its lines are ranges of.
fn checked_text(bytes: &Bytes) -> Result<std::sync::Arc<ByteString>, String> {
    ByteString::try_from(bytes.clone())
        .map(std::sync::Arc::new)
        .map_err(|e| format!("not valid UTF-8 at byte {}", e.valid_up_to()))
}

/// Calls `emit` with every line of a `lines` block (without its `\n` or `\r\n`), a range
/// of the block itself (no copy); returns how many there were.
fn for_each_line(bytes: &Bytes, mut emit: impl FnMut(Str)) -> Result<u64, String> {
    let text = checked_text(bytes)?;
    let whole = text.as_bytes();
    let mut records = 0u64;
    let mut start = 0usize;
    for end in memchr::memchr_iter(b'\n', whole) {
        emit(Str::line_of(&text, start, end));
        records += 1;
        start = end + 1;
    }
    if start < whole.len() {
        emit(Str::line_of(&text, start, whole.len()));
        records += 1;
    }
    Ok(records)
}

/// The `postcard` block format for any serde record type.
pub struct PostcardCodec<T>(PhantomData<fn() -> T>);

impl<T> PostcardCodec<T> {
    /// The codec.
    pub const fn new() -> Self {
        PostcardCodec(PhantomData)
    }
}

impl<T> Default for PostcardCodec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for PostcardCodec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PostcardCodec")
    }
}

impl<T> BlockCodec<T> for PostcardCodec<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    fn name(&self) -> &'static str {
        "postcard"
    }

    fn encode(&self, records: &[T], out: &mut Vec<u8>) -> Result<(), String> {
        for record in records {
            let bytes = postcard::to_stdvec(record).map_err(|e| e.to_string())?;
            out.extend_from_slice(&bytes);
        }
        Ok(())
    }

    fn decode(&self, bytes: &Bytes, emit: &mut dyn FnMut(T)) -> Result<u64, String> {
        let mut rest: &[u8] = bytes;
        let mut records = 0u64;
        while !rest.is_empty() {
            let (record, tail) = postcard::take_from_bytes::<T>(rest).map_err(|e| {
                format!("record {records} at byte {}: {e}", bytes.len() - rest.len())
            })?;
            emit(record);
            records += 1;
            rest = tail;
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_lines(bytes: &'static [u8]) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let n = LinesCodec.decode(&Bytes::from_static(bytes), &mut |s| {
            out.push(String::from(s))
        })?;
        assert_eq!(n as usize, out.len());
        assert_eq!(LinesCodec::count_records(bytes), n);
        Ok(out)
    }

    #[test]
    fn chunked_decoding_gives_the_records_of_decode_in_order() {
        let long = "a line longer than the twenty-three bytes stored inline";
        let text = format!("a b\r\n\n{long}\r\nx\n\r\nlast {long}");
        let bytes = Bytes::from(text.clone());
        let mut expected = Vec::new();
        let n = LinesCodec
            .decode(&bytes, &mut |s| expected.push(String::from(s)))
            .unwrap();
        assert_eq!(expected.len(), 6);
        for chunk in [0, 1, 2, 5, 6, 256] {
            let mut chunks = Vec::new();
            let got = LinesCodec
                .decode_chunks(&bytes, chunk, &mut |c| {
                    assert!(!c.is_empty() && c.len() <= chunk.max(1));
                    chunks.push(c.drain(..).map(String::from).collect::<Vec<_>>());
                })
                .unwrap();
            assert_eq!(got, n);
            assert_eq!(chunks.concat(), expected, "chunk {chunk}");
            // The provided method (any codec) gives the same.
            let records: Vec<Str> = expected.iter().map(|s| Str::from(s.as_str())).collect();
            let mut encoded = Vec::new();
            PostcardCodec::<Str>::new()
                .encode(&records, &mut encoded)
                .unwrap();
            let mut decoded = Vec::new();
            PostcardCodec::<Str>::new()
                .decode_chunks(&Bytes::from(encoded), chunk, &mut |c| {
                    decoded.extend(c.drain(..).map(String::from))
                })
                .unwrap();
            assert_eq!(decoded, expected);
        }
        let err = LinesCodec
            .decode_chunks(&Bytes::from_static(b"ok\n\xff\n"), 4, &mut |_| {})
            .unwrap_err();
        assert!(err.contains("byte 3"), "{err}");
    }

    #[test]
    fn lines_format_is_pinned() {
        assert_eq!(decode_lines(b"").unwrap(), Vec::<String>::new());
        assert_eq!(decode_lines(b"a b\n").unwrap(), ["a b"]);
        assert_eq!(decode_lines(b"a\r\n\nlast").unwrap(), ["a", "", "last"]);
        assert_eq!(decode_lines(b"\n\n").unwrap(), ["", ""]);
        let err = decode_lines(b"ok\n\xff\n").unwrap_err();
        assert!(err.contains("byte 3"), "{err}");
        let mut out = Vec::new();
        LinesCodec
            .encode(&[Str::from("x y"), Str::from("")], &mut out)
            .unwrap();
        assert_eq!(out, b"x y\n\n");
        assert!(
            LinesCodec
                .encode(&[Str::from("a\nb")], &mut Vec::new())
                .is_err()
        );
    }

    #[test]
    fn postcard_format_is_pinned() {
        let codec = PostcardCodec::<(String, u64)>::new();
        let mut out = Vec::new();
        codec.encode(&[("ab".to_owned(), 300)], &mut out).unwrap();
        // string: varint length 2, "ab"; u64: varint 300 = 0xac 0x02.
        assert_eq!(out, [2, b'a', b'b', 0xac, 0x02]);
        let mut back = Vec::new();
        let n = codec
            .decode(&Bytes::from(out), &mut |r| back.push(r))
            .unwrap();
        assert_eq!((n, back), (1, vec![("ab".to_owned(), 300)]));
        let err = codec
            .decode(&Bytes::from_static(&[2, b'a']), &mut |_| {})
            .unwrap_err();
        assert!(err.contains("record 0 at byte 0"), "{err}");
    }

    #[test]
    fn block_ids_order_by_stream_then_sequence() {
        let a = BlockId {
            stream: StreamId(0),
            seq: 9,
        };
        let b = BlockId {
            stream: StreamId(1),
            seq: 0,
        };
        assert!(a < b);
        assert_eq!(a.to_string(), "input-0-9");
    }
}
