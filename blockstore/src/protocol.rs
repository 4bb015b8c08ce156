//! The replication wire protocol: frames, their byte layout, and a pure (no IO) encoder
//! and decoder.
//!
//! The byte format is specified in the crate docs ("Wire protocol") and pinned by the
//! golden tests at the end of this file. Decoding never panics: every malformed input
//! yields a [`FrameDefect`], and decoding then re-encoding any accepted frame gives back
//! exactly the same bytes (the encoding is canonical), which the fuzz target
//! `replication_frame_decode` checks.

use bytes::{Bytes, BytesMut};

use crate::block::{Block, BlockId, block_crc32};
use crate::error::{Error, ErrorCode, FrameDefect, Result};

/// First bytes of the hello and hello-ack bodies: "EMBR".
pub const MAGIC: [u8; 4] = *b"EMBR";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of the frame header: `crc32 u32 | body_len u32 | kind u8 | request_id u64`.
pub const FRAME_HEADER_LEN: usize = 17;
/// Size of the block header that starts put and block-data bodies:
/// `block_id [20] | record_count u64 | data_crc32 u32`.
pub const BLOCK_HEADER_LEN: usize = 32;
/// Hard upper bound for `frame_body_max_bytes` (1 GiB).
pub const FRAME_BODY_MAX_BYTES_LIMIT: u32 = 1 << 30;
/// Longest message in an error frame; longer messages are cut at a character boundary.
pub const ERROR_MESSAGE_MAX_BYTES: usize = 1024;
/// Longest node name in a hello or hello-ack.
pub const NODE_NAME_MAX_BYTES: usize = 255;
/// Largest `limit` of a list request.
pub const LIST_LIMIT_MAX: u32 = 65_536;

/// The frame kinds and their wire values.
mod kind {
    pub const HELLO: u8 = 0x01;
    pub const HELLO_ACK: u8 = 0x02;
    pub const ERROR: u8 = 0x03;
    pub const PUT: u8 = 0x10;
    pub const PUT_ACK: u8 = 0x11;
    pub const GET: u8 = 0x12;
    pub const BLOCK_DATA: u8 = 0x13;
    pub const NOT_FOUND: u8 = 0x14;
    pub const REMOVE: u8 = 0x15;
    pub const REMOVED: u8 = 0x16;
    pub const LIST: u8 = 0x17;
    pub const LIST_REPLY: u8 = 0x18;
    pub const PING: u8 = 0x20;
    pub const PONG: u8 = 0x21;
}

/// Who is at the other end of a connection: a name for people and a random number drawn
/// when the process started, so that a restarted peer (which lost its memory) is told
/// apart from a reconnected one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// The node's name (`Config::node_name`), at most 255 bytes.
    pub name: String,
    /// Random per process start.
    pub instance: u64,
}

impl NodeIdentity {
    /// An identity with a fresh random instance number.
    pub fn new(name: impl Into<String>) -> Self {
        NodeIdentity {
            name: name.into(),
            instance: crate::random_u64(),
        }
    }
}

/// Where a store put a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// In memory.
    Memory,
    /// In a spill file.
    Disk,
}

/// Usage figures a peer reports in its heartbeat reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Memory in use for block data.
    pub memory_used_bytes: u64,
    /// The peer's memory limit.
    pub memory_max_bytes: u64,
    /// Disk in use for spill files.
    pub disk_used_bytes: u64,
    /// The peer's disk limit.
    pub disk_max_bytes: u64,
    /// Blocks held.
    pub blocks: u64,
    /// Corrupt frames the peer has received since it started, over all connections.
    pub corrupt_frames: u64,
}

/// The message a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client to server, first frame on a connection.
    Hello {
        /// The protocol version the client speaks.
        version: u16,
        /// The client.
        node: NodeIdentity,
    },
    /// Server to client, answer to a hello the server accepts.
    HelloAck {
        /// The version the connection will use.
        version: u16,
        /// The server.
        node: NodeIdentity,
    },
    /// An error reply; also sent before the server closes a connection it rejects.
    Error {
        /// The class of error.
        code: ErrorCode,
        /// A human-readable explanation (at most 1024 bytes).
        message: String,
    },
    /// Store this block.
    Put(Block),
    /// The block is stored (checksum verified) in the given tier.
    PutAck {
        /// The block stored.
        block: BlockId,
        /// Where.
        tier: Tier,
    },
    /// Send me this block.
    Get {
        /// The block wanted.
        block: BlockId,
    },
    /// Reply to a get.
    BlockData(Block),
    /// Reply to a get: no such block here.
    NotFound {
        /// The block asked for.
        block: BlockId,
    },
    /// Remove these blocks (missing ones are ignored).
    Remove {
        /// The blocks.
        blocks: Vec<BlockId>,
    },
    /// Reply to a remove.
    Removed {
        /// How many of the listed blocks were present and are now gone.
        count: u32,
    },
    /// List the ids held, in ascending order, starting after `after`.
    List {
        /// Resume after this id (exclusive); `None` starts at the beginning.
        after: Option<BlockId>,
        /// At most this many ids (1 ..= 65536).
        limit: u32,
    },
    /// Reply to a list.
    ListReply {
        /// Ascending ids.
        blocks: Vec<BlockId>,
        /// Whether more ids follow (ask again after the last one).
        more: bool,
    },
    /// Heartbeat.
    Ping,
    /// Reply to a heartbeat.
    Pong(PeerStats),
}

impl Message {
    /// The kind's name, for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind())
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => kind::HELLO,
            Message::HelloAck { .. } => kind::HELLO_ACK,
            Message::Error { .. } => kind::ERROR,
            Message::Put(_) => kind::PUT,
            Message::PutAck { .. } => kind::PUT_ACK,
            Message::Get { .. } => kind::GET,
            Message::BlockData(_) => kind::BLOCK_DATA,
            Message::NotFound { .. } => kind::NOT_FOUND,
            Message::Remove { .. } => kind::REMOVE,
            Message::Removed { .. } => kind::REMOVED,
            Message::List { .. } => kind::LIST,
            Message::ListReply { .. } => kind::LIST_REPLY,
            Message::Ping => kind::PING,
            Message::Pong(_) => kind::PONG,
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        kind::HELLO => "hello",
        kind::HELLO_ACK => "hello-ack",
        kind::ERROR => "error",
        kind::PUT => "put",
        kind::PUT_ACK => "put-ack",
        kind::GET => "get",
        kind::BLOCK_DATA => "block-data",
        kind::NOT_FOUND => "not-found",
        kind::REMOVE => "remove",
        kind::REMOVED => "removed",
        kind::LIST => "list",
        kind::LIST_REPLY => "list-reply",
        kind::PING => "ping",
        kind::PONG => "pong",
        _ => "unknown",
    }
}

/// A frame: a message and the request id that pairs a reply with its request.
///
/// Requests carry an id chosen by the client (unique among its requests in flight on the
/// connection); the server copies it into the reply. The server handles the requests of
/// one connection in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Chosen by the requester, echoed in the reply.
    pub request_id: u64,
    /// The message.
    pub message: Message,
}

/// An encoded frame, in two parts so that a block's data is written from its own buffer
/// without being copied: the bytes are `head` followed by `data`.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    head: Bytes,
    data: Bytes,
}

impl EncodedFrame {
    /// Header and every body byte before the block data (all of it for non-block frames).
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The block data of put and block-data frames; empty otherwise.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len()
    }

    /// Always false: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The frame as one contiguous buffer (copies the data; for tests and tools).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.data);
        out
    }
}

/// Encodes a frame. A block's data is checked against its checksum here, once, and the
/// result also yields the frame CRC (this is the "checked when sent" check); a block whose
/// data no longer matches is refused with [`Error::BlockCorrupt`]. Frames whose body would
/// exceed `body_max_bytes` are refused too.
pub fn encode(frame: &Frame, body_max_bytes: u32) -> Result<EncodedFrame> {
    encode_inner(frame, body_max_bytes, false)
}

/// [`encode`] for a frame whose block the caller verified against its checksum just
/// before (the replicated store checks a block once per put, however many peers it goes
/// to). The frame CRC is derived from the block's checksum without reading the data; if
/// the data changed after the caller's check, the receiving peer's frame check fails and
/// nothing is stored, so skipping the re-read costs detection time, never safety.
pub(crate) fn encode_prechecked(frame: &Frame, body_max_bytes: u32) -> Result<EncodedFrame> {
    encode_inner(frame, body_max_bytes, true)
}

fn encode_inner(frame: &Frame, body_max_bytes: u32, data_checked: bool) -> Result<EncodedFrame> {
    let mut head = Vec::with_capacity(FRAME_HEADER_LEN + BLOCK_HEADER_LEN);
    head.extend_from_slice(&[0u8; 8]); // crc and body length, filled in below
    head.push(frame.message.kind());
    head.extend_from_slice(&frame.request_id.to_le_bytes());
    let mut data = Bytes::new();
    // CRC of the data when the frame carries a block; verified against the block's own.
    let mut data_crc = None;
    match &frame.message {
        Message::Hello { version, node } | Message::HelloAck { version, node } => {
            head.extend_from_slice(&MAGIC);
            head.extend_from_slice(&version.to_le_bytes());
            head.extend_from_slice(&node.instance.to_le_bytes());
            let name = truncate_utf8(&node.name, NODE_NAME_MAX_BYTES);
            head.extend_from_slice(&(name.len() as u16).to_le_bytes());
            head.extend_from_slice(name.as_bytes());
        }
        Message::Error { code, message } => {
            let message = truncate_utf8(message, ERROR_MESSAGE_MAX_BYTES);
            head.extend_from_slice(&code.to_u16().to_le_bytes());
            head.extend_from_slice(&(message.len() as u16).to_le_bytes());
            head.extend_from_slice(message.as_bytes());
        }
        Message::Put(block) | Message::BlockData(block) => {
            let len = block.len() as u64;
            let max = u64::from(body_max_bytes).saturating_sub(BLOCK_HEADER_LEN as u64);
            if len > max {
                return Err(Error::BlockTooLarge {
                    block: block.id(),
                    len_bytes: len,
                    max_bytes: max,
                    setting: "frame_body_max_bytes",
                });
            }
            let computed = if data_checked {
                block.crc32()
            } else {
                block_crc32(block.data())
            };
            if computed != block.crc32() {
                return Err(Error::BlockCorrupt {
                    block: block.id(),
                    location: "memory, while encoding it for the wire".to_owned(),
                    stored: block.crc32(),
                    computed,
                });
            }
            head.extend_from_slice(&block.id().to_bytes());
            head.extend_from_slice(&block.record_count().to_le_bytes());
            head.extend_from_slice(&block.crc32().to_le_bytes());
            data = block.data().clone();
            data_crc = Some(computed);
        }
        Message::PutAck { block, tier } => {
            head.extend_from_slice(&block.to_bytes());
            head.push(match tier {
                Tier::Memory => 0,
                Tier::Disk => 1,
            });
        }
        Message::Get { block } | Message::NotFound { block } => {
            head.extend_from_slice(&block.to_bytes());
        }
        Message::Remove { blocks } => {
            head.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
            for block in blocks {
                head.extend_from_slice(&block.to_bytes());
            }
        }
        Message::Removed { count } => head.extend_from_slice(&count.to_le_bytes()),
        Message::List { after, limit } => {
            head.push(u8::from(after.is_some()));
            head.extend_from_slice(&after.map(|id| id.to_bytes()).unwrap_or_default());
            head.extend_from_slice(&limit.to_le_bytes());
        }
        Message::ListReply { blocks, more } => {
            head.push(u8::from(*more));
            head.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
            for block in blocks {
                head.extend_from_slice(&block.to_bytes());
            }
        }
        Message::Ping => {}
        Message::Pong(stats) => {
            for value in [
                stats.memory_used_bytes,
                stats.memory_max_bytes,
                stats.disk_used_bytes,
                stats.disk_max_bytes,
                stats.blocks,
                stats.corrupt_frames,
            ] {
                head.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    let body_len = (head.len() - FRAME_HEADER_LEN) as u64 + data.len() as u64;
    if body_len > u64::from(body_max_bytes) {
        return Err(Error::InvalidConfig {
            setting: "frame_body_max_bytes",
            reason: format!(
                "a {} frame of {body_len} bytes does not fit in {body_max_bytes} bytes",
                frame.message.kind_name()
            ),
        });
    }
    head[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    let crc = frame_crc(&head[4..], data_crc, data.len());
    head[0..4].copy_from_slice(&crc.to_le_bytes());
    Ok(EncodedFrame {
        head: Bytes::from(head),
        data,
    })
}

/// CRC-32 of `prefix` followed by data whose own CRC is `data_crc` (computed with
/// `crc32fast`'s combine, so the data is not read a second time).
fn frame_crc(prefix: &[u8], data_crc: Option<u32>, data_len: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix);
    if let Some(data_crc) = data_crc {
        hasher.combine(&crc32fast::Hasher::new_with_initial_len(
            data_crc,
            data_len as u64,
        ));
    }
    hasher.finalize()
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A parsed frame header. Only the length is validated here (so that no buffer larger
/// than `frame_body_max_bytes` is ever allocated); the CRC and kind are checked with the
/// body, by [`decode_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// CRC-32 of bytes 4.. of the frame (length, kind, request id, body).
    pub crc32: u32,
    /// Length of the body that follows the header.
    pub body_len: u32,
    /// Frame kind.
    pub kind: u8,
    /// Request id.
    pub request_id: u64,
}

impl FrameHeader {
    /// Parses the 17 header bytes and checks the body length against `body_max_bytes`.
    pub fn parse(
        bytes: &[u8; FRAME_HEADER_LEN],
        body_max_bytes: u32,
    ) -> std::result::Result<Self, FrameDefect> {
        let crc32 = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let body_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let kind = bytes[8];
        let mut request_id = [0u8; 8];
        request_id.copy_from_slice(&bytes[9..17]);
        if body_len > body_max_bytes {
            return Err(FrameDefect::BodyTooLarge {
                len_bytes: u64::from(body_len),
                max_bytes: u64::from(body_max_bytes),
            });
        }
        Ok(FrameHeader {
            crc32,
            body_len,
            kind,
            request_id: u64::from_le_bytes(request_id),
        })
    }
}

/// Verifies the CRC of a frame and decodes its body. `header_bytes` are the 17 bytes
/// `header` was parsed from; `body` must be exactly `header.body_len` bytes. Block data in
/// the result shares `body`'s buffer (no copy).
pub fn decode_body(
    header_bytes: &[u8; FRAME_HEADER_LEN],
    header: &FrameHeader,
    body: Bytes,
) -> std::result::Result<Frame, FrameDefect> {
    if body.len() != header.body_len as usize {
        return Err(FrameDefect::Incomplete {
            need: u64::from(header.body_len),
            have: body.len() as u64,
        });
    }
    let is_block = matches!(header.kind, kind::PUT | kind::BLOCK_DATA);
    // For block frames the data's CRC is computed once, and serves both the frame check
    // (combined with the CRC of the bytes before it) and the block check.
    let (computed, data_crc) = if is_block && body.len() >= BLOCK_HEADER_LEN {
        let data_crc = block_crc32(&body[BLOCK_HEADER_LEN..]);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header_bytes[4..]);
        hasher.update(&body[..BLOCK_HEADER_LEN]);
        hasher.combine(&crc32fast::Hasher::new_with_initial_len(
            data_crc,
            (body.len() - BLOCK_HEADER_LEN) as u64,
        ));
        (hasher.finalize(), Some(data_crc))
    } else {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header_bytes[4..]);
        hasher.update(&body);
        (hasher.finalize(), None)
    };
    if computed != header.crc32 {
        return Err(FrameDefect::ChecksumMismatch {
            stored: header.crc32,
            computed,
        });
    }
    let name = kind_name(header.kind);
    let mut r = BodyReader {
        kind: name,
        body: &body,
        pos: 0,
    };
    let message = match header.kind {
        kind::HELLO | kind::HELLO_ACK => {
            let magic = r.array::<4>("magic")?;
            if magic != MAGIC {
                return Err(r.invalid("magic", format!("{magic:02x?} is not \"EMBR\"")));
            }
            let version = r.u16("version")?;
            let instance = r.u64("instance")?;
            let name_len = r.u16("name_len")? as usize;
            if name_len > NODE_NAME_MAX_BYTES {
                return Err(r.invalid("name_len", format!("{name_len} exceeds 255")));
            }
            let name = r.utf8(name_len, "name")?;
            let node = NodeIdentity { name, instance };
            if header.kind == kind::HELLO {
                Message::Hello { version, node }
            } else {
                Message::HelloAck { version, node }
            }
        }
        kind::ERROR => {
            let code = ErrorCode::from_u16(r.u16("code")?);
            let len = r.u16("message_len")? as usize;
            if len > ERROR_MESSAGE_MAX_BYTES {
                return Err(r.invalid("message_len", format!("{len} exceeds 1024")));
            }
            Message::Error {
                code,
                message: r.utf8(len, "message")?,
            }
        }
        kind::PUT | kind::BLOCK_DATA => {
            let id = r.block_id("block_id")?;
            let record_count = r.u64("record_count")?;
            let crc = r.u32("data_crc32")?;
            // data_crc is Some: the body had at least the block header, or we failed above.
            let data_crc = data_crc.unwrap_or_else(|| block_crc32(&[]));
            if data_crc != crc {
                return Err(r.invalid(
                    "data_crc32",
                    format!("block {id}: data checksum {data_crc:#010x} does not match the block's {crc:#010x}"),
                ));
            }
            let block =
                Block::from_checked_parts(id, body.slice(BLOCK_HEADER_LEN..), record_count, crc);
            r.pos = body.len();
            if header.kind == kind::PUT {
                Message::Put(block)
            } else {
                Message::BlockData(block)
            }
        }
        kind::PUT_ACK => {
            let block = r.block_id("block_id")?;
            let tier = match r.u8("tier")? {
                0 => Tier::Memory,
                1 => Tier::Disk,
                other => return Err(r.invalid("tier", format!("{other} is not 0 or 1"))),
            };
            Message::PutAck { block, tier }
        }
        kind::GET => Message::Get {
            block: r.block_id("block_id")?,
        },
        kind::NOT_FOUND => Message::NotFound {
            block: r.block_id("block_id")?,
        },
        kind::REMOVE => Message::Remove {
            blocks: r.id_list()?,
        },
        kind::REMOVED => Message::Removed {
            count: r.u32("count")?,
        },
        kind::LIST => {
            let flags = r.u8("flags")?;
            let after_bytes = r.array::<{ BlockId::ENCODED_LEN }>("after")?;
            let after = match flags {
                0 if after_bytes == [0u8; BlockId::ENCODED_LEN] => None,
                0 => return Err(r.invalid("after", "must be zero when flags = 0".to_owned())),
                1 => Some(BlockId::from_bytes(&after_bytes)),
                other => return Err(r.invalid("flags", format!("{other} is not 0 or 1"))),
            };
            let limit = r.u32("limit")?;
            if limit == 0 || limit > LIST_LIMIT_MAX {
                return Err(r.invalid("limit", format!("{limit} is not in 1..=65536")));
            }
            Message::List { after, limit }
        }
        kind::LIST_REPLY => {
            let more = match r.u8("more")? {
                0 => false,
                1 => true,
                other => return Err(r.invalid("more", format!("{other} is not 0 or 1"))),
            };
            Message::ListReply {
                blocks: r.id_list()?,
                more,
            }
        }
        kind::PING => Message::Ping,
        kind::PONG => Message::Pong(PeerStats {
            memory_used_bytes: r.u64("memory_used_bytes")?,
            memory_max_bytes: r.u64("memory_max_bytes")?,
            disk_used_bytes: r.u64("disk_used_bytes")?,
            disk_max_bytes: r.u64("disk_max_bytes")?,
            blocks: r.u64("blocks")?,
            corrupt_frames: r.u64("corrupt_frames")?,
        }),
        other => return Err(FrameDefect::UnknownKind { kind: other }),
    };
    r.finish()?;
    Ok(Frame {
        request_id: header.request_id,
        message,
    })
}

/// Decodes one frame from the start of `buf` (a whole-buffer convenience over
/// [`FrameHeader::parse`] and [`decode_body`], for tests and the fuzz target).
/// Returns `Ok(None)` if `buf` holds only part of a frame, else the frame and its length.
pub fn decode_frame(
    buf: &[u8],
    body_max_bytes: u32,
) -> std::result::Result<Option<(Frame, usize)>, FrameDefect> {
    let Some(header_bytes) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let mut header_array = [0u8; FRAME_HEADER_LEN];
    header_array.copy_from_slice(header_bytes);
    let header = FrameHeader::parse(&header_array, body_max_bytes)?;
    let total = FRAME_HEADER_LEN + header.body_len as usize;
    let Some(body) = buf.get(FRAME_HEADER_LEN..total) else {
        return Ok(None);
    };
    let frame = decode_body(&header_array, &header, Bytes::copy_from_slice(body))?;
    Ok(Some((frame, total)))
}

/// How many ids fit in one remove or list-reply frame under `body_max_bytes`.
pub fn ids_per_frame(body_max_bytes: u32) -> usize {
    (body_max_bytes as usize).saturating_sub(8) / BlockId::ENCODED_LEN
}

/// Reads fields from a body, turning every shortfall into a [`FrameDefect`].
struct BodyReader<'a> {
    kind: &'static str,
    body: &'a [u8],
    pos: usize,
}

impl BodyReader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> std::result::Result<&[u8], FrameDefect> {
        let have = self.body.len() - self.pos;
        if n > have {
            return Err(FrameDefect::Truncated {
                kind: self.kind,
                field,
                need: n,
                have,
            });
        }
        let out = &self.body[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> std::result::Result<[u8; N], FrameDefect> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> std::result::Result<u8, FrameDefect> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> std::result::Result<u16, FrameDefect> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> std::result::Result<u32, FrameDefect> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> std::result::Result<u64, FrameDefect> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn block_id(&mut self, field: &'static str) -> std::result::Result<BlockId, FrameDefect> {
        Ok(BlockId::from_bytes(&self.array(field)?))
    }

    fn utf8(
        &mut self,
        len: usize,
        field: &'static str,
    ) -> std::result::Result<String, FrameDefect> {
        let kind = self.kind;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| FrameDefect::InvalidField {
            kind,
            field,
            reason: format!("not UTF-8: {e}"),
        })
    }

    /// `count u32` then exactly `count` ids filling the rest of the body.
    fn id_list(&mut self) -> std::result::Result<Vec<BlockId>, FrameDefect> {
        let count = self.u32("count")? as usize;
        let have = self.body.len() - self.pos;
        // Checked against the bytes present before allocating, so a huge count in a short
        // body cannot make us reserve memory.
        let need = count.saturating_mul(BlockId::ENCODED_LEN);
        if need > have {
            return Err(FrameDefect::Truncated {
                kind: self.kind,
                field: "ids",
                need,
                have,
            });
        }
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            ids.push(self.block_id("ids")?);
        }
        Ok(ids)
    }

    fn invalid(&self, field: &'static str, reason: String) -> FrameDefect {
        FrameDefect::InvalidField {
            kind: self.kind,
            field,
            reason,
        }
    }

    fn finish(&self) -> std::result::Result<(), FrameDefect> {
        let extra = self.body.len() - self.pos;
        if extra == 0 {
            Ok(())
        } else {
            Err(FrameDefect::TrailingBytes {
                kind: self.kind,
                extra,
            })
        }
    }
}

/// Appends an encoded frame to a buffer (tests and tools).
pub fn encode_into(frame: &Frame, body_max_bytes: u32, out: &mut BytesMut) -> Result<()> {
    let encoded = encode(frame, body_max_bytes)?;
    out.extend_from_slice(encoded.head());
    out.extend_from_slice(encoded.data());
    Ok(())
}
