//! The byte format and the data model: golden bytes, every decode error with its offset,
//! forward compatibility, validation rules, and encode/decode identity over random
//! checkpoints.
#![allow(clippy::unwrap_used)]

mod common;

use checkpoint::format::{self, HEADER_BYTES, Kind};
use checkpoint::{
    BatchInputs, BlockLocation, BlockRef, Checkpoint, CheckpointParts, Error, GraphDescription,
    InputData, OffsetRange, OperatorDesc, SourcePosition, StateDesc, StateRef, StoredCheckpoint,
    StreamInput, WalTruncation,
};
use common::op;
use proptest::prelude::*;
use wal::Lsn;

/// One of everything the format has.
fn golden() -> StoredCheckpoint {
    let parts = CheckpointParts {
        batch_time_ms: 3000,
        batch_interval_ms: 1000,
        zero_time_ms: 0,
        metadata_log_lsn: Lsn::new(7),
        pending_batches: vec![BatchInputs {
            batch_time_ms: 3000,
            inputs: vec![
                StreamInput {
                    stream: 0,
                    data: InputData::Blocks(vec![
                        BlockRef {
                            seq: 5,
                            records: 2,
                            len_bytes: 10,
                            location: BlockLocation::Wal {
                                log_stream: 0,
                                lsn: Lsn::new(9),
                            },
                        },
                        BlockRef {
                            seq: 6,
                            records: 1,
                            len_bytes: 4,
                            location: BlockLocation::Replicas(vec!["10.0.0.2:7070".to_owned()]),
                        },
                        BlockRef {
                            seq: 7,
                            records: 3,
                            len_bytes: 12,
                            location: BlockLocation::MemoryOnly,
                        },
                    ]),
                },
                StreamInput {
                    stream: 1,
                    data: InputData::OffsetRanges(vec![OffsetRange {
                        topic: "t".to_owned(),
                        partition: 0,
                        from_offset: 10,
                        until_offset: 20,
                    }]),
                },
                StreamInput {
                    stream: 2,
                    data: InputData::Files(vec!["a.txt".to_owned()]),
                },
            ],
        }],
        remembered_batches: vec![BatchInputs {
            batch_time_ms: 2000,
            inputs: vec![],
        }],
        unallocated: vec![StreamInput {
            stream: 0,
            data: InputData::Blocks(vec![BlockRef {
                seq: 8,
                records: 1,
                len_bytes: 3,
                location: BlockLocation::MemoryOnly,
            }]),
        }],
        data_wal_truncation: vec![WalTruncation {
            stream: 0,
            truncate_before: Lsn::new(9),
        }],
        state_snapshots: vec![StateRef {
            operator: "c".to_owned(),
            taken_at_ms: 3000,
            object: "state-00000000000000003000-0000abcd-c.snap".to_owned(),
            crc32: 0xabcd,
            len_bytes: 5,
        }],
        graph: GraphDescription {
            operators: vec![
                op("in0", "socket_input", "", &[], Some(0), None),
                op("in1", "kafka_input", "", &[], Some(1), None),
                op("in2", "file_input", "", &[], Some(2), None),
                OperatorDesc {
                    output: true,
                    ..op(
                        "c",
                        "update_state_by_key",
                        "n",
                        &["in0", "in1"],
                        None,
                        Some(("K", "S", 2)),
                    )
                },
            ],
        },
        source_positions: vec![SourcePosition {
            stream: 0,
            position: [("acked_line".to_owned(), "42".to_owned())].into(),
        }],
    };
    StoredCheckpoint {
        sequence: 1,
        checkpoint: Checkpoint::new(parts).unwrap(),
    }
}

const GOLDEN_JSON: &str = concat!(
    r#"{"sequence":1,"checkpoint":{"batch_time_ms":3000,"batch_interval_ms":1000,"zero_time_ms":0,"#,
    r#""metadata_log_lsn":7,"pending_batches":[{"batch_time_ms":3000,"inputs":["#,
    r#"{"stream":0,"data":{"blocks":["#,
    r#"{"seq":5,"records":2,"len_bytes":10,"location":{"wal":{"log_stream":0,"lsn":9}}},"#,
    r#"{"seq":6,"records":1,"len_bytes":4,"location":{"replicas":["10.0.0.2:7070"]}},"#,
    r#"{"seq":7,"records":3,"len_bytes":12,"location":"memory_only"}]}},"#,
    r#"{"stream":1,"data":{"offset_ranges":[{"topic":"t","partition":0,"from_offset":10,"until_offset":20}]}},"#,
    r#"{"stream":2,"data":{"files":["a.txt"]}}]}],"#,
    r#""remembered_batches":[{"batch_time_ms":2000,"inputs":[]}],"#,
    r#""unallocated":[{"stream":0,"data":{"blocks":[{"seq":8,"records":1,"len_bytes":3,"location":"memory_only"}]}}],"#,
    r#""data_wal_truncation":[{"stream":0,"truncate_before":9}],"#,
    r#""state_snapshots":[{"operator":"c","taken_at_ms":3000,"object":"state-00000000000000003000-0000abcd-c.snap","crc32":43981,"len_bytes":5}],"#,
    r#""graph":{"operators":["#,
    r#"{"id":"in0","kind":"socket_input","name":"","parents":[],"input_stream":0,"output":false,"state":null},"#,
    r#"{"id":"in1","kind":"kafka_input","name":"","parents":[],"input_stream":1,"output":false,"state":null},"#,
    r#"{"id":"in2","kind":"file_input","name":"","parents":[],"input_stream":2,"output":false,"state":null},"#,
    r#"{"id":"c","kind":"update_state_by_key","name":"n","parents":["in0","in1"],"input_stream":null,"output":true,"#,
    r#""state":{"key_type":"K","state_type":"S","version":2}}]},"#,
    r#""source_positions":[{"stream":0,"position":{"acked_line":"42"}}]}}"#,
);

#[test]
fn checkpoint_bytes_are_stable() {
    let bytes = golden().encode();
    let body_len = GOLDEN_JSON.len() as u64;
    assert_eq!(body_len, 1485);
    let mut expected = Vec::new();
    expected.extend_from_slice(b"EMBERCKP");
    expected.extend_from_slice(&1u32.to_le_bytes());
    expected.extend_from_slice(&body_len.to_le_bytes());
    // CRC-32 of bytes 0..20 and the body, computed independently (python3 zlib.crc32).
    expected.extend_from_slice(&0x2fd3_1926u32.to_le_bytes());
    expected.extend_from_slice(GOLDEN_JSON.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&bytes[HEADER_BYTES..]),
        GOLDEN_JSON,
        "the body changed: that is a format change"
    );
    assert_eq!(
        bytes, expected,
        "the envelope changed: that is a format change"
    );
    assert_eq!(
        StoredCheckpoint::decode("golden", &bytes).unwrap(),
        golden()
    );
}

#[test]
fn decode_errors_name_the_file_and_the_offset() {
    let good = golden().encode();
    let name = "/ckpt/checkpoint-00000000000000000001.ckpt";

    let e = StoredCheckpoint::decode(name, &good[..good.len() - 100]).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(e.to_string().contains(name), "{e}");

    // Valid envelope, body that stops being JSON at byte 12 of the body (the `x`).
    let bad = format::seal(Kind::Checkpoint, br#"{"sequence":x}"#);
    let e = StoredCheckpoint::decode(name, &bad).unwrap_err();
    let Error::Decode { offset, .. } = e else {
        panic!("{e}")
    };
    assert_eq!(offset, HEADER_BYTES as u64 + 12);

    // Valid JSON of the wrong shape: the offset points at the last byte of the bad value.
    let json = GOLDEN_JSON.replace(r#""records":2"#, r#""records":-2"#);
    let e = StoredCheckpoint::decode(name, &format::seal(Kind::Checkpoint, json.as_bytes()))
        .unwrap_err();
    let Error::Decode { offset, reason, .. } = &e else {
        panic!("{e}")
    };
    let at = json.find(r#""records":-2"#).unwrap() + r#""records":-2"#.len() - 1;
    assert_eq!(*offset, (HEADER_BYTES + at) as u64, "{reason}");

    // Well-formed but invalid content: the field is named.
    let json = GOLDEN_JSON.replace(
        r#""batch_time_ms":3000,"batch_interval_ms""#,
        r#""batch_time_ms":3500,"batch_interval_ms""#,
    );
    let e = StoredCheckpoint::decode(name, &format::seal(Kind::Checkpoint, json.as_bytes()))
        .unwrap_err();
    assert!(
        matches!(e, Error::Invalid { ref field, .. } if field == "batch_time_ms"),
        "{e}"
    );
    assert!(e.to_string().contains(name), "{e}");

    // A newer format version, intact: a clear error, not a parse attempt.
    let e = StoredCheckpoint::decode(name, &format::seal_version(Kind::Checkpoint, 9, b"?"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("format version 9; this build reads versions 1 to 1"),
        "{e}"
    );
}

#[test]
fn a_new_optional_field_does_not_break_this_reader_and_old_files_still_read() {
    // A newer writer adds a field this build does not know: it is ignored.
    let json = GOLDEN_JSON.replace(
        r#""zero_time_ms":0,"#,
        r#""zero_time_ms":0,"future_field":{"anything":[1,2,3]},"#,
    );
    let read =
        StoredCheckpoint::decode("x", &format::seal(Kind::Checkpoint, json.as_bytes())).unwrap();
    assert_eq!(read, golden());

    // An older writer that did not have the optional lists: they default to empty.
    let minimal = r#"{"sequence":4,"checkpoint":{"batch_time_ms":0,"batch_interval_ms":10,"zero_time_ms":0,"metadata_log_lsn":0,"graph":{"operators":[]}}}"#;
    let read =
        StoredCheckpoint::decode("x", &format::seal(Kind::Checkpoint, minimal.as_bytes())).unwrap();
    assert_eq!(read.sequence, 4);
    assert!(read.checkpoint.parts().pending_batches.is_empty());
    assert!(read.checkpoint.parts().state_snapshots.is_empty());

    // A required field missing is an error naming it.
    let e = StoredCheckpoint::decode(
        "x",
        &format::seal(
            Kind::Checkpoint,
            br#"{"sequence":1,"checkpoint":{"batch_time_ms":0}}"#,
        ),
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing field"), "{e}");
}

fn minimal_parts() -> CheckpointParts {
    let mut parts = golden().checkpoint.into_parts();
    parts.pending_batches.clear();
    parts.remembered_batches.clear();
    parts.unallocated.clear();
    parts
}

#[track_caller]
fn invalid(parts: CheckpointParts, field: &str, reason_part: &str) {
    let e = Checkpoint::new(parts).unwrap_err();
    let Error::Invalid {
        field: f, reason, ..
    } = &e
    else {
        panic!("{e}")
    };
    assert!(f.starts_with(field), "field {f}, expected {field}: {e}");
    assert!(reason.contains(reason_part), "{e}");
}

#[test]
fn validation_rules() {
    let mut p = minimal_parts();
    p.batch_interval_ms = 0;
    invalid(p, "batch_interval_ms", "at least 1");

    let mut p = minimal_parts();
    p.zero_time_ms = 3001;
    invalid(p, "batch_time_ms", "not on the grid");

    let batch = |t: u64, stream: u32| BatchInputs {
        batch_time_ms: t,
        inputs: vec![StreamInput {
            stream,
            data: InputData::Files(vec!["f".to_owned()]),
        }],
    };
    let mut p = minimal_parts();
    p.pending_batches = vec![batch(2500, 0)];
    invalid(p, "pending_batches[0].batch_time_ms", "not a batch time");
    let mut p = minimal_parts();
    p.pending_batches = vec![batch(4000, 0)];
    invalid(
        p,
        "pending_batches[0].batch_time_ms",
        "after the checkpoint",
    );
    let mut p = minimal_parts();
    p.pending_batches = vec![batch(0, 0)];
    invalid(p, "pending_batches[0].batch_time_ms", "not a batch time");
    let mut p = minimal_parts();
    p.pending_batches = vec![batch(2000, 0), batch(2000, 1)];
    invalid(p, "pending_batches", "appears twice");
    let mut p = minimal_parts();
    p.pending_batches = vec![batch(2000, 0)];
    p.remembered_batches = vec![batch(2000, 0)];
    invalid(p, "remembered_batches", "also pending");
    let mut p = minimal_parts();
    p.pending_batches = vec![batch(2000, 9)];
    invalid(p, "pending_batches[0].inputs[0]", "no input operator");

    let mut p = minimal_parts();
    p.unallocated = vec![StreamInput {
        stream: 0,
        data: InputData::OffsetRanges(vec![OffsetRange {
            topic: "t".to_owned(),
            partition: 1,
            from_offset: 5,
            until_offset: 4,
        }]),
    }];
    invalid(
        p,
        "unallocated.inputs[0].offset_ranges[0]",
        "after until_offset",
    );

    let blocks = |location: BlockLocation| StreamInput {
        stream: 0,
        data: InputData::Blocks(vec![BlockRef {
            seq: 1,
            records: 1,
            len_bytes: 1,
            location,
        }]),
    };
    let mut p = minimal_parts();
    p.unallocated = vec![blocks(BlockLocation::Replicas(vec![]))];
    invalid(p, "unallocated.inputs[0].blocks[0]", "at least one peer");
    let mut p = minimal_parts();
    p.unallocated = vec![blocks(BlockLocation::Wal {
        log_stream: 0,
        lsn: Lsn::new(0),
    })];
    invalid(p, "unallocated.inputs[0].blocks[0]", "at least 1");
    let mut p = minimal_parts();
    p.unallocated = vec![
        blocks(BlockLocation::MemoryOnly),
        blocks(BlockLocation::MemoryOnly),
    ];
    invalid(p, "unallocated.inputs[1]", "appears twice");

    let mut p = minimal_parts();
    p.state_snapshots[0].operator = "in0".to_owned();
    invalid(p, "state_snapshots[0]", "not a stateful operator");
    let mut p = minimal_parts();
    p.state_snapshots[0].object = "../x".to_owned();
    invalid(p, "state_snapshots[0].object", "plain object name");
    let mut p = minimal_parts();
    p.state_snapshots[0].taken_at_ms = 4000;
    invalid(p, "state_snapshots[0].taken_at_ms", "not a batch time");

    let mut p = minimal_parts();
    p.graph.operators[3].parents.push("nope".to_owned());
    invalid(p, "graph.operators[3].parents", "not another operator");
    let mut p = minimal_parts();
    p.graph.operators[1].id = "in0".to_owned();
    invalid(p, "graph.operators[1].id", "duplicate");
    let mut p = minimal_parts();
    p.graph.operators[1].input_stream = Some(0);
    invalid(p, "graph.operators[1].input_stream", "two input operators");
    let mut p = minimal_parts();
    p.graph.operators[1].id = "a/b".to_owned();
    invalid(p, "graph.operators[1].id", "A-Z a-z 0-9");

    let mut p = minimal_parts();
    p.data_wal_truncation[0].truncate_before = Lsn::new(0);
    invalid(p, "data_wal_truncation[0]", "at least Lsn 1");
    let mut p = minimal_parts();
    p.source_positions.push(p.source_positions[0].clone());
    invalid(p, "source_positions[1]", "appears twice");
}

#[test]
fn set_like_lists_are_sorted_and_ordered_lists_kept() {
    let mut p = minimal_parts();
    let files = InputData::Files(vec!["z".to_owned(), "a".to_owned()]);
    p.pending_batches = vec![
        BatchInputs {
            batch_time_ms: 3000,
            inputs: vec![],
        },
        BatchInputs {
            batch_time_ms: 1000,
            inputs: vec![
                StreamInput {
                    stream: 2,
                    data: files.clone(),
                },
                StreamInput {
                    stream: 0,
                    data: InputData::Blocks(vec![]),
                },
            ],
        },
    ];
    let c = Checkpoint::new(p).unwrap();
    let pending = &c.parts().pending_batches;
    assert_eq!(pending[0].batch_time_ms, 1000);
    assert_eq!(pending[0].inputs[0].stream, 0);
    assert_eq!(pending[0].inputs[1].data, files, "file order is data: kept");
}

fn arb_location() -> impl Strategy<Value = BlockLocation> {
    prop_oneof![
        (1u64..1 << 40).prop_map(|lsn| BlockLocation::Wal {
            log_stream: 0,
            lsn: Lsn::new(lsn)
        }),
        proptest::collection::vec("[a-z0-9.:]{1,12}", 1..3).prop_map(BlockLocation::Replicas),
        Just(BlockLocation::MemoryOnly),
    ]
}

fn arb_input(stream: u32) -> impl Strategy<Value = StreamInput> {
    let blocks = proptest::collection::btree_map(
        any::<u64>(),
        (any::<u64>(), any::<u64>(), arb_location()),
        0..4,
    )
    .prop_map(|m| {
        InputData::Blocks(
            m.into_iter()
                .map(|(seq, (records, len_bytes, location))| BlockRef {
                    seq,
                    records,
                    len_bytes,
                    location,
                })
                .collect(),
        )
    });
    let ranges = proptest::collection::btree_map(
        ("\\PC{0,8}", any::<u32>()),
        (any::<u64>(), any::<u64>()),
        0..3,
    )
    .prop_map(|m| {
        InputData::OffsetRanges(
            m.into_iter()
                .map(|((topic, partition), (a, b))| OffsetRange {
                    topic,
                    partition,
                    from_offset: a.min(b),
                    until_offset: a.max(b),
                })
                .collect(),
        )
    });
    let files = proptest::collection::btree_set("\\PC{1,10}", 0..3)
        .prop_map(|s| InputData::Files(s.into_iter().collect()));
    prop_oneof![blocks, ranges, files].prop_map(move |data| StreamInput { stream, data })
}

prop_compose! {
    fn arb_checkpoint()(
        interval in 1u64..100_000,
        zero in 0u64..1 << 45,
        k in 0u64..1000,
        lsn in any::<u64>(),
        pending in proptest::collection::btree_map(1u64..1000, (arb_input(0), arb_input(1)), 0..4),
        unallocated in proptest::option::of(arb_input(1)),
        truncate in proptest::option::of(1u64..u64::MAX),
        snapshot in proptest::option::of((any::<u32>(), any::<u64>())),
        position in proptest::collection::btree_map("\\PC{0,6}", "\\PC{0,6}", 0..3),
        name in "\\PC{0,10}",
    ) -> Checkpoint {
        let batch_time = zero + k * interval;
        let graph = GraphDescription {
            operators: vec![
                op("in-0", "socket_input", &name, &[], Some(0), None),
                op("in-1", "kafka_input", "", &[], Some(1), None),
                OperatorDesc {
                    state: Some(StateDesc { key_type: name.clone(), state_type: "u64".to_owned(), version: 1 }),
                    ..op("st", "map_with_state", "", &["in-0", "in-1"], None, None)
                },
            ],
        };
        let pending_batches = pending
            .into_iter()
            .filter(|(b, _)| *b <= k)
            .map(|(b, (i0, i1))| BatchInputs { batch_time_ms: zero + b * interval, inputs: vec![i0, i1] })
            .collect();
        Checkpoint::new(CheckpointParts {
            batch_time_ms: batch_time,
            batch_interval_ms: interval,
            zero_time_ms: zero,
            metadata_log_lsn: Lsn::new(lsn),
            pending_batches,
            remembered_batches: vec![],
            unallocated: unallocated.into_iter().collect(),
            data_wal_truncation: truncate
                .map(|t| WalTruncation { stream: 0, truncate_before: Lsn::new(t) })
                .into_iter()
                .collect(),
            state_snapshots: snapshot
                .map(|(crc32, len_bytes)| StateRef {
                    operator: "st".to_owned(),
                    taken_at_ms: batch_time,
                    object: checkpoint::names::snapshot_name("st", batch_time, crc32),
                    crc32,
                    len_bytes,
                })
                .into_iter()
                .collect(),
            graph,
            source_positions: vec![SourcePosition { stream: 1, position }],
        })
        .unwrap()
    }
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(checkpoint in arb_checkpoint(), sequence in any::<u64>()) {
        let stored = StoredCheckpoint { sequence, checkpoint };
        let bytes = stored.encode();
        prop_assert_eq!(StoredCheckpoint::decode("p", &bytes).unwrap(), stored);
    }

    #[test]
    fn decode_never_panics_on_damaged_checkpoints(
        checkpoint in arb_checkpoint(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let bytes = StoredCheckpoint { sequence: 1, checkpoint }.encode();
        let _ = StoredCheckpoint::decode("p", &bytes[..cut.index(bytes.len())]);
        let mut flipped = bytes.clone();
        let at = flip.index(bytes.len());
        flipped[at] ^= 1 << bit;
        let e = StoredCheckpoint::decode("p", &flipped).unwrap_err();
        prop_assert!(e.is_damage(), "a flipped bit must read as damage: {}", e);
    }
}
