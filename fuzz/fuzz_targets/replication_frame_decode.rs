//! Replication frames (blockstore's wire protocol): decoding arbitrary bytes never panics
//! and allocates no more than the body limit, whatever decodes re-encodes to the same
//! bytes (the encoding is canonical), and encode-then-decode is the identity.
#![no_main]

use arbitrary::Arbitrary;
use blockstore::protocol::{self, FRAME_HEADER_LEN, Frame, FrameHeader, Message, NodeIdentity};
use blockstore::{Block, BlockId, ErrorCode, PeerStats, Tier};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// Bytes from the network, with a body limit.
    Bytes { body_max: u16, data: &'a [u8] },
    /// A frame with a correct CRC around an arbitrary body, so the body decoders see
    /// inputs that random bytes would almost never get past the checksum.
    Body { kind: u8, request_id: u64, body: &'a [u8] },
    /// A message to encode and decode back.
    Message { request_id: u64, message: Msg<'a> },
}

#[derive(Debug, Arbitrary)]
enum Msg<'a> {
    Hello { version: u16, name: &'a str, instance: u64 },
    HelloAck { version: u16, name: &'a str, instance: u64 },
    Error { code: u16, message: &'a str },
    Put { id: (u32, u64, u64), data: &'a [u8], records: u64 },
    PutAck { id: (u32, u64, u64), disk: bool },
    Get { id: (u32, u64, u64) },
    BlockData { id: (u32, u64, u64), data: &'a [u8], records: u64 },
    NotFound { id: (u32, u64, u64) },
    Remove { ids: Vec<(u32, u64, u64)> },
    Removed { count: u32 },
    List { after: Option<(u32, u64, u64)>, limit: u32 },
    ListReply { ids: Vec<(u32, u64, u64)>, more: bool },
    Ping,
    Pong { values: [u64; 6] },
}

fn id((s, i, q): (u32, u64, u64)) -> BlockId {
    BlockId::new(s, i, q)
}

fn node(name: &str, instance: u64) -> NodeIdentity {
    // Names longer than 255 bytes are cut by the encoder; keep them in range so the
    // round trip is exact.
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    NodeIdentity { name: name[..end].to_owned(), instance }
}

fn message(msg: Msg<'_>) -> Message {
    match msg {
        Msg::Hello { version, name, instance } => Message::Hello { version, node: node(name, instance) },
        Msg::HelloAck { version, name, instance } => {
            Message::HelloAck { version, node: node(name, instance) }
        }
        Msg::Error { code, message } => {
            let mut end = message.len().min(1024);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            Message::Error { code: ErrorCode::from_u16(code), message: message[..end].to_owned() }
        }
        Msg::Put { id: i, data, records } => {
            Message::Put(Block::new(id(i), Bytes::copy_from_slice(data), records))
        }
        Msg::PutAck { id: i, disk } => {
            Message::PutAck { block: id(i), tier: if disk { Tier::Disk } else { Tier::Memory } }
        }
        Msg::Get { id: i } => Message::Get { block: id(i) },
        Msg::BlockData { id: i, data, records } => {
            Message::BlockData(Block::new(id(i), Bytes::copy_from_slice(data), records))
        }
        Msg::NotFound { id: i } => Message::NotFound { block: id(i) },
        Msg::Remove { ids } => Message::Remove { blocks: ids.into_iter().map(id).collect() },
        Msg::Removed { count } => Message::Removed { count },
        Msg::List { after, limit } => {
            Message::List { after: after.map(id), limit: limit % 65_536 + 1 }
        }
        Msg::ListReply { ids, more } => {
            Message::ListReply { blocks: ids.into_iter().map(id).collect(), more }
        }
        Msg::Ping => Message::Ping,
        Msg::Pong { values: v } => Message::Pong(PeerStats {
            memory_used_bytes: v[0],
            memory_max_bytes: v[1],
            disk_used_bytes: v[2],
            disk_max_bytes: v[3],
            blocks: v[4],
            corrupt_frames: v[5],
        }),
    }
}

/// Decodes `data` two ways (the whole-buffer helper and the header-then-body path the
/// connections use) and checks they agree and that accepted frames are canonical.
fn check_bytes(data: &[u8], body_max: u32) {
    let whole = protocol::decode_frame(data, body_max);
    if let Ok(Some((frame, used))) = &whole {
        assert!(*used <= data.len());
        assert!(*used - FRAME_HEADER_LEN <= body_max as usize, "body over the limit accepted");
        let again = protocol::encode(frame, body_max).expect("a decoded frame re-encodes");
        assert_eq!(&again.to_vec()[..], &data[..*used], "decode then encode");
    }
    if data.len() >= FRAME_HEADER_LEN {
        let mut header_bytes = [0u8; FRAME_HEADER_LEN];
        header_bytes.copy_from_slice(&data[..FRAME_HEADER_LEN]);
        match FrameHeader::parse(&header_bytes, body_max) {
            Err(_) => assert!(whole.is_err()),
            Ok(header) => {
                let end = FRAME_HEADER_LEN + header.body_len as usize;
                if let Some(body) = data.get(FRAME_HEADER_LEN..end) {
                    let split = protocol::decode_body(&header_bytes, &header, Bytes::copy_from_slice(body));
                    match (&whole, split) {
                        (Ok(Some((a, _))), Ok(b)) => assert_eq!(a, &b),
                        (Err(a), Err(b)) => assert_eq!(a, &b),
                        (a, b) => panic!("decoders disagree: {a:?} vs {b:?}"),
                    }
                }
            }
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Bytes { body_max, data } => check_bytes(data, u32::from(body_max).max(64)),
        Input::Body { kind, request_id, body } => {
            let mut covered = Vec::with_capacity(13 + body.len());
            covered.extend_from_slice(&(body.len() as u32).to_le_bytes());
            covered.push(kind);
            covered.extend_from_slice(&request_id.to_le_bytes());
            covered.extend_from_slice(body);
            let mut frame = crc32fast::hash(&covered).to_le_bytes().to_vec();
            frame.extend_from_slice(&covered);
            check_bytes(&frame, 1 << 20);
        }
        Input::Message { request_id, message: msg } => {
            let frame = Frame { request_id, message: message(msg) };
            let body_max = 1 << 24;
            let bytes = protocol::encode(&frame, body_max).expect("fits the limit").to_vec();
            let (decoded, used) = protocol::decode_frame(&bytes, body_max)
                .expect("an encoded frame decodes")
                .expect("and is complete");
            assert_eq!(used, bytes.len());
            assert_eq!(decoded, frame, "encode then decode");
        }
    }
});
