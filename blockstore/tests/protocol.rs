//! The wire format, pinned: golden bytes for each frame layout, the same bytes assembled
//! field by field from the spec in the crate docs, rejection of every single-bit flip,
//! and property tests (round trip, canonical encoding, no panic on arbitrary bytes).
#![allow(clippy::unwrap_used)]

use blockstore::protocol::{
    self, BLOCK_HEADER_LEN, FRAME_HEADER_LEN, Frame, FrameHeader, Message, NodeIdentity, Tier,
};
use blockstore::{Block, BlockId, Error, ErrorCode, FrameDefect, PeerStats};
use bytes::Bytes;
use proptest::prelude::*;

const BODY_MAX: u32 = 1 << 20;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Assembles a frame from the layout in the crate docs, independently of the encoder.
fn by_spec(kind: u8, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut covered = Vec::new();
    covered.extend_from_slice(&(body.len() as u32).to_le_bytes());
    covered.push(kind);
    covered.extend_from_slice(&request_id.to_le_bytes());
    covered.extend_from_slice(body);
    let mut frame = crc32fast::hash(&covered).to_le_bytes().to_vec();
    frame.extend_from_slice(&covered);
    frame
}

fn id_bytes(stream: u32, incarnation: u64, sequence: u64) -> Vec<u8> {
    let mut out = stream.to_le_bytes().to_vec();
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out
}

struct Golden {
    frame: Frame,
    hex: &'static str,
    spec: Vec<u8>,
}

fn goldens() -> Vec<Golden> {
    let put_body = {
        let mut b = id_bytes(1, 2, 3);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&0x3610_a686u32.to_le_bytes()); // CRC-32 of "hello"
        b.extend_from_slice(b"hello");
        b
    };
    let hello_body = {
        let mut b = b"EMBR".to_vec();
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        b.extend_from_slice(&3u16.to_le_bytes());
        b.extend_from_slice(b"drv");
        b
    };
    let error_body = {
        let mut b = 3u16.to_le_bytes().to_vec();
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(b"full");
        b
    };
    let list_body = {
        let mut b = vec![1u8];
        b.extend_from_slice(&id_bytes(1, 0, 5));
        b.extend_from_slice(&100u32.to_le_bytes());
        b
    };
    let ack_body = {
        let mut b = id_bytes(1, 2, 3);
        b.push(1);
        b
    };
    vec![
        Golden {
            frame: Frame {
                request_id: 7,
                message: Message::Put(Block::new(
                    BlockId::new(1, 2, 3),
                    Bytes::from_static(b"hello"),
                    1,
                )),
            },
            hex: "c2ec1994250000001007000000000000000100000002000000000000000300000000000000010000000000000086a6103668656c6c6f",
            spec: by_spec(0x10, 7, &put_body),
        },
        Golden {
            frame: Frame {
                request_id: 0,
                message: Message::Hello {
                    version: 1,
                    node: NodeIdentity {
                        name: "drv".into(),
                        instance: 0x0102_0304_0506_0708,
                    },
                },
            },
            hex: "f4aa938a13000000010000000000000000454d4252010008070605040302010300647276",
            spec: by_spec(0x01, 0, &hello_body),
        },
        Golden {
            frame: Frame {
                request_id: 9,
                message: Message::Error {
                    code: ErrorCode::StoreFull,
                    message: "full".into(),
                },
            },
            hex: "eed7323e080000000309000000000000000300040066756c6c",
            spec: by_spec(0x03, 9, &error_body),
        },
        Golden {
            frame: Frame {
                request_id: 10,
                message: Message::List {
                    after: Some(BlockId::new(1, 0, 5)),
                    limit: 100,
                },
            },
            hex: "d983d2c419000000170a0000000000000001010000000000000000000000050000000000000064000000",
            spec: by_spec(0x17, 10, &list_body),
        },
        Golden {
            frame: Frame {
                request_id: 11,
                message: Message::PutAck {
                    block: BlockId::new(1, 2, 3),
                    tier: Tier::Disk,
                },
            },
            hex: "a90e789015000000110b00000000000000010000000200000000000000030000000000000001",
            spec: by_spec(0x11, 11, &ack_body),
        },
        Golden {
            frame: Frame {
                request_id: 12,
                message: Message::Ping,
            },
            hex: "6ed12ada00000000200c00000000000000",
            spec: by_spec(0x20, 12, &[]),
        },
    ]
}

#[test]
fn frame_bytes_are_stable() {
    for golden in goldens() {
        let encoded = protocol::encode(&golden.frame, BODY_MAX).unwrap().to_vec();
        assert_eq!(
            hex(&encoded),
            golden.hex,
            "{:?}",
            golden.frame.message.kind_name()
        );
        assert_eq!(
            encoded,
            golden.spec,
            "{} differs from the documented layout",
            golden.frame.message.kind_name()
        );
        let (decoded, used) = protocol::decode_frame(&unhex(golden.hex), BODY_MAX)
            .unwrap()
            .unwrap();
        assert_eq!(used, encoded.len());
        assert_eq!(decoded, golden.frame);
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for golden in goldens() {
        let bytes = unhex(golden.hex);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            match protocol::decode_frame(&flipped, BODY_MAX) {
                // A flipped length can announce more bytes than present: not a frame yet,
                // and on a connection the CRC fails once the bytes arrive (or the read
                // times out).
                Ok(None) => assert!(
                    (4..8).contains(&(bit / 8)),
                    "bit {bit} gave an incomplete frame"
                ),
                Ok(Some((frame, _))) => panic!(
                    "{} with bit {bit} flipped decoded as {frame:?}",
                    golden.frame.message.kind_name()
                ),
                Err(_) => {}
            }
        }
    }
}

#[test]
fn checksum_mismatch_is_reported_with_both_values() {
    let mut bytes = unhex(goldens()[0].hex);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // a data byte of the put
    let err = protocol::decode_frame(&bytes, BODY_MAX).unwrap_err();
    assert!(
        matches!(
            err,
            FrameDefect::ChecksumMismatch {
                stored: 0x9419_ecc2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn oversized_length_is_refused_before_reading_the_body() {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = FrameHeader::parse(&header, BODY_MAX).unwrap_err();
    assert_eq!(
        err,
        FrameDefect::BodyTooLarge {
            len_bytes: u64::from(u32::MAX),
            max_bytes: u64::from(BODY_MAX)
        }
    );
    assert!(err.to_string().contains("frame_body_max_bytes"), "{err}");
}

#[test]
fn truncated_input_is_incomplete_not_an_error() {
    let bytes = unhex(goldens()[0].hex);
    for len in 0..bytes.len() {
        assert_eq!(
            protocol::decode_frame(&bytes[..len], BODY_MAX).unwrap(),
            None,
            "prefix of {len}"
        );
    }
}

#[test]
fn unknown_kind_and_bad_fields_are_defects() {
    let unknown = by_spec(0x7e, 1, &[]);
    assert_eq!(
        protocol::decode_frame(&unknown, BODY_MAX).unwrap_err(),
        FrameDefect::UnknownKind { kind: 0x7e }
    );
    let bad_magic = by_spec(0x01, 1, b"EMBX\x01\x00\0\0\0\0\0\0\0\0\0\0");
    assert!(matches!(
        protocol::decode_frame(&bad_magic, BODY_MAX).unwrap_err(),
        FrameDefect::InvalidField { field: "magic", .. }
    ));
    let bad_tier = {
        let mut body = id_bytes(1, 1, 1);
        body.push(2);
        by_spec(0x11, 1, &body)
    };
    assert!(matches!(
        protocol::decode_frame(&bad_tier, BODY_MAX).unwrap_err(),
        FrameDefect::InvalidField { field: "tier", .. }
    ));
    let trailing = by_spec(0x20, 1, &[0]);
    assert!(matches!(
        protocol::decode_frame(&trailing, BODY_MAX).unwrap_err(),
        FrameDefect::TrailingBytes { extra: 1, .. }
    ));
    // A remove claiming four billion ids in a 4-byte body must not allocate for them.
    let huge_count = by_spec(0x15, 1, &u32::MAX.to_le_bytes());
    assert!(matches!(
        protocol::decode_frame(&huge_count, BODY_MAX).unwrap_err(),
        FrameDefect::Truncated { field: "ids", .. }
    ));
    // A put whose carried block CRC disagrees with its data, though the frame CRC is right.
    let lying_put = {
        let mut b = id_bytes(1, 2, 3);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        b.extend_from_slice(b"hello");
        by_spec(0x10, 1, &b)
    };
    assert!(matches!(
        protocol::decode_frame(&lying_put, BODY_MAX).unwrap_err(),
        FrameDefect::InvalidField {
            field: "data_crc32",
            ..
        }
    ));
}

#[test]
fn a_block_corrupted_in_memory_is_not_sent() {
    // Data changed after the checksum was taken: the encoder must refuse it.
    let good = Block::new(BlockId::new(1, 1, 1), Bytes::from_static(b"abc"), 1);
    let bad = Block::from_parts(
        good.id(),
        Bytes::from_static(b"abd"),
        1,
        good.crc32(),
        "test",
    );
    assert!(bad.is_err(), "from_parts must verify");
    // Encoding checks too: build a frame by hand around a block whose data was swapped.
    let frame = Frame {
        request_id: 1,
        message: Message::Put(good.clone()),
    };
    assert!(protocol::encode(&frame, BODY_MAX).is_ok());
    let too_small = protocol::encode(&frame, (BLOCK_HEADER_LEN + 2) as u32).unwrap_err();
    assert!(
        matches!(
            too_small,
            Error::BlockTooLarge {
                setting: "frame_body_max_bytes",
                ..
            }
        ),
        "{too_small}"
    );
}

fn arb_id() -> impl Strategy<Value = BlockId> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(s, i, q)| BlockId::new(s, i, q))
}

fn arb_block() -> impl Strategy<Value = Block> {
    (
        arb_id(),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<u64>(),
    )
        .prop_map(|(id, data, count)| Block::new(id, Bytes::from(data), count))
}

fn arb_message() -> impl Strategy<Value = Message> {
    let node = ("[a-z0-9-]{1,40}", any::<u64>())
        .prop_map(|(name, instance)| NodeIdentity { name, instance });
    prop_oneof![
        (any::<u16>(), node.clone()).prop_map(|(version, node)| Message::Hello { version, node }),
        (any::<u16>(), node).prop_map(|(version, node)| Message::HelloAck { version, node }),
        (any::<u16>(), ".{0,200}").prop_map(|(code, message)| Message::Error {
            code: ErrorCode::from_u16(code),
            message
        }),
        arb_block().prop_map(Message::Put),
        (arb_id(), any::<bool>()).prop_map(|(block, disk)| Message::PutAck {
            block,
            tier: if disk { Tier::Disk } else { Tier::Memory }
        }),
        arb_id().prop_map(|block| Message::Get { block }),
        arb_block().prop_map(Message::BlockData),
        arb_id().prop_map(|block| Message::NotFound { block }),
        proptest::collection::vec(arb_id(), 0..20).prop_map(|blocks| Message::Remove { blocks }),
        any::<u32>().prop_map(|count| Message::Removed { count }),
        (proptest::option::of(arb_id()), 1u32..=65_536)
            .prop_map(|(after, limit)| Message::List { after, limit }),
        (proptest::collection::vec(arb_id(), 0..20), any::<bool>())
            .prop_map(|(blocks, more)| Message::ListReply { blocks, more }),
        Just(Message::Ping),
        any::<[u64; 6]>().prop_map(|v| Message::Pong(PeerStats {
            memory_used_bytes: v[0],
            memory_max_bytes: v[1],
            disk_used_bytes: v[2],
            disk_max_bytes: v[3],
            blocks: v[4],
            corrupt_frames: v[5],
        })),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(message in arb_message(), request_id in any::<u64>()) {
        let frame = Frame { request_id, message };
        let bytes = protocol::encode(&frame, BODY_MAX).unwrap().to_vec();
        let (decoded, used) = protocol::decode_frame(&bytes, BODY_MAX).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(decoded, frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_frames_are_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(Some((frame, used))) = protocol::decode_frame(&bytes, BODY_MAX) {
            let again = protocol::encode(&frame, BODY_MAX).unwrap().to_vec();
            prop_assert_eq!(&again[..], &bytes[..used]);
        }
    }

    #[test]
    fn valid_header_with_random_body_never_panics(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..120)) {
        // Random bytes rarely pass the CRC; building the CRC right sends them into the
        // body decoders, which is where a panic would hide.
        let bytes = by_spec(kind, 1, &body);
        if let Ok(Some((frame, used))) = protocol::decode_frame(&bytes, BODY_MAX) {
            prop_assert_eq!(used, bytes.len());
            let again = protocol::encode(&frame, BODY_MAX).unwrap().to_vec();
            prop_assert_eq!(again, bytes);
        }
    }
}
