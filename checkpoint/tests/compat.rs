//! The graph compatibility table, row by row, and the cleanup helpers.
#![allow(clippy::unwrap_used)]

mod common;

use checkpoint::compat::{self, GraphChange};
use checkpoint::{
    BatchInputs, BlockId, BlockLocation, BlockRef, Checkpoint, Error, GraphDescription, InputData,
    OffsetRange, References, StreamInput, WalTruncation,
};
use common::*;
use wal::Lsn;

/// The changes from the word-count graph to `edit(graph)`, and whether any is breaking.
fn changes(edit: impl FnOnce(&mut GraphDescription)) -> (Vec<GraphChange>, bool) {
    let mut current = graph();
    edit(&mut current);
    let changes = compat::diff(&graph(), &current);
    let breaking = changes.iter().any(GraphChange::is_breaking);
    (changes, breaking)
}

fn index(g: &GraphDescription, id: &str) -> usize {
    g.operators.iter().position(|o| o.id == id).unwrap()
}

#[test]
fn same_graph_has_no_changes() {
    assert_eq!(changes(|_| {}), (vec![], false));
}

#[test]
fn stateless_changes_are_compatible() {
    // Added output operation.
    let (c, breaking) = changes(|g| {
        g.operators
            .push(op("print", "print", "", &["counts"], None, None))
    });
    assert!(
        !breaking && matches!(c[..], [GraphChange::OperatorAdded { .. }]),
        "{c:?}"
    );
    // Removed output operation.
    let (c, breaking) = changes(|g| g.operators.retain(|o| o.id != "sink-3"));
    assert!(
        !breaking && matches!(c[..], [GraphChange::OperatorRemoved { .. }]),
        "{c:?}"
    );
    // A stateless operator's kind and parents changed.
    let (c, breaking) = changes(|g| {
        let i = index(g, "flat-map-1");
        g.operators[i].kind = "flat_map_values".to_owned();
    });
    assert!(
        !breaking && matches!(c[..], [GraphChange::KindChanged { .. }]),
        "{c:?}"
    );
    // Renamed: same id, other label.
    let (c, breaking) = changes(|g| {
        let i = index(g, "counts");
        g.operators[i].name = "totals".to_owned();
    });
    assert!(!breaking, "{c:?}");
    assert_eq!(
        c[0].to_string(),
        "operator id counts renamed from \"running counts\" to \"totals\""
    );
    // A stateful operator's parents changed: reported, compatible.
    let (c, breaking) = changes(|g| {
        g.operators
            .insert(1, op("filter-9", "filter", "", &["input-0"], None, None));
        let i = index(g, "counts");
        g.operators[i].parents = vec!["filter-9".to_owned()];
    });
    assert!(!breaking, "{c:?}");
    assert!(
        c.iter()
            .any(|c| matches!(c, GraphChange::ParentsChanged { .. })),
        "{c:?}"
    );
}

#[test]
fn added_state_and_inputs_are_compatible() {
    let (c, breaking) = changes(|g| {
        g.operators
            .push(op("input-1", "socket_input", "", &[], Some(1), None));
        g.operators.push(op(
            "window",
            "reduce_by_key_and_window",
            "",
            &["input-1"],
            None,
            Some(("String", "u64", 1)),
        ));
    });
    assert!(!breaking, "{c:?}");
    assert!(
        c[1].to_string()
            .ends_with("added: it starts with empty state"),
        "{}",
        c[1]
    );
    // A stateless operator becoming stateful starts empty too.
    let (c, breaking) = changes(|g| {
        let i = index(g, "flat-map-1");
        g.operators[i].state = Some(checkpoint::StateDesc {
            key_type: "a".to_owned(),
            state_type: "b".to_owned(),
            version: 1,
        });
    });
    assert!(!breaking, "{c:?}");
}

#[test]
fn state_and_input_losses_are_breaking() {
    type Edit = Box<dyn FnOnce(&mut GraphDescription)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "stateful removed",
            Box::new(|g| {
                g.operators.retain(|o| o.id != "counts");
                let i = index(g, "sink-3");
                g.operators[i].parents = vec!["flat-map-1".to_owned()];
            }),
            "stateful operator update_state_by_key \"running counts\" (id counts) removed: its state would be lost",
        ),
        (
            "state type changed",
            Box::new(|g| {
                let i = index(g, "counts");
                g.operators[i].state.as_mut().unwrap().key_type = "Vec<u8>".to_owned();
            }),
            "state type changed from (String, u64) version 1 to (Vec<u8>, u64) version 1",
        ),
        (
            "state version changed",
            Box::new(|g| {
                let i = index(g, "counts");
                g.operators[i].state.as_mut().unwrap().version = 2;
            }),
            "to (String, u64) version 2",
        ),
        (
            "no longer stateful",
            Box::new(|g| {
                let i = index(g, "counts");
                g.operators[i].state = None;
            }),
            "no longer stateful (was (String, u64) version 1): its state would be lost",
        ),
        (
            "stateful kind changed",
            Box::new(|g| {
                let i = index(g, "counts");
                g.operators[i].kind = "map_with_state".to_owned();
            }),
            "kind changed from update_state_by_key to map_with_state: its snapshot is in the update_state_by_key layout",
        ),
        (
            "input removed",
            Box::new(|g| {
                g.operators.retain(|o| o.id != "input-0");
                let i = index(g, "flat-map-1");
                g.operators[i].parents.clear();
            }),
            "input operator socket_input \"lines\" (id input-0, stream 0) removed: data acknowledged for stream 0",
        ),
        (
            "input stream changed",
            Box::new(|g| {
                let i = index(g, "input-0");
                g.operators[i].input_stream = Some(3);
            }),
            "input stream changed from stream 0 to stream 3",
        ),
        (
            "input kind changed",
            Box::new(|g| {
                let i = index(g, "input-0");
                g.operators[i].kind = "kafka_input".to_owned();
            }),
            "kind changed from socket_input to kafka_input",
        ),
        (
            "stateful identity changed",
            Box::new(|g| {
                let i = index(g, "counts");
                g.operators[i].id = "counts-v2".to_owned();
                let j = index(g, "sink-3");
                g.operators[j].parents = vec!["counts-v2".to_owned()];
            }),
            "(id counts) is gone and stateful operator update_state_by_key \"running counts\" (id counts-v2) is new: \
             if it is the same operator, its identity changed (state is keyed by id); give it back id counts",
        ),
    ];
    for (what, edit, message) in cases {
        let (c, breaking) = changes(edit);
        assert!(breaking, "{what}: {c:?}");
        let text: Vec<String> = c
            .iter()
            .filter(|c| c.is_breaking())
            .map(|c| c.to_string())
            .collect();
        assert!(text.iter().any(|t| t.contains(message)), "{what}: {text:?}");
    }
}

#[test]
fn check_lists_breaking_changes_first_and_keeps_the_rest() {
    let c = checkpoint_at(2, vec![]);
    let mut current = graph();
    current
        .operators
        .push(op("print", "print", "", &["counts"], None, None));
    current.operators.retain(|o| o.id != "counts");
    let i = index(&current, "sink-3");
    current.operators[i].parents = vec!["flat-map-1".to_owned()];
    let err = compat::check("cp-2", &c, &current, INTERVAL_MS).unwrap_err();
    let Error::IncompatibleGraph { changes, .. } = &err else {
        panic!("{err}")
    };
    assert!(changes[0].is_breaking(), "{changes:?}");
    assert!(changes.iter().any(|c| !c.is_breaking()), "{changes:?}");
    let text = err.to_string();
    assert!(text.starts_with("checkpoint cp-2 was written by an incompatible pipeline graph; 1 breaking change(s): stateful operator"), "{text}");
    assert!(text.contains("(also changed, compatible: "), "{text}");
    assert!(text.contains("new checkpoint location"), "{text}");
}

fn blocks(stream: u32, refs: &[(u64, BlockLocation)]) -> StreamInput {
    StreamInput {
        stream,
        data: InputData::Blocks(
            refs.iter()
                .map(|(seq, location)| BlockRef {
                    seq: *seq,
                    records: 1,
                    len_bytes: 1,
                    location: location.clone(),
                })
                .collect(),
        ),
    }
}

fn wal_at(lsn: u64) -> BlockLocation {
    BlockLocation::Wal {
        log_stream: 0,
        lsn: Lsn::new(lsn),
    }
}

#[test]
fn references_of_one_checkpoint() {
    let mut p = checkpoint_at(5, vec![]).into_parts();
    p.graph
        .operators
        .push(op("input-1", "kafka_input", "", &[], Some(1), None));
    p.pending_batches = vec![BatchInputs {
        batch_time_ms: batch_ms(5),
        inputs: vec![
            blocks(0, &[(10, wal_at(40)), (11, BlockLocation::MemoryOnly)]),
            StreamInput {
                stream: 1,
                data: InputData::OffsetRanges(vec![OffsetRange {
                    topic: "t".to_owned(),
                    partition: 2,
                    from_offset: 100,
                    until_offset: 150,
                }]),
            },
        ],
    }];
    p.remembered_batches = vec![BatchInputs {
        batch_time_ms: batch_ms(3),
        inputs: vec![blocks(0, &[(8, wal_at(35))])],
    }];
    p.unallocated = vec![blocks(0, &[(12, wal_at(45))])];
    p.data_wal_truncation = vec![WalTruncation {
        stream: 0,
        truncate_before: Lsn::new(38),
    }];
    let r = References::of(&Checkpoint::new(p).unwrap());
    assert_eq!(r.oldest_batch_time_ms, batch_ms(3));
    assert_eq!(
        r.metadata_log_truncate_before,
        Lsn::new(11),
        "metadata_log_lsn 10 is covered"
    );
    // Declared 38, but a remembered batch still points at Lsn 35: the lower one wins.
    assert_eq!(r.data_wal_truncation_point(0), Some(Lsn::new(35)));
    assert_eq!(r.data_wal_truncation_point(1), None);
    assert!(r.holds_block(BlockId { stream: 0, seq: 8 }));
    assert!(r.holds_block(BlockId { stream: 0, seq: 12 }));
    assert!(!r.holds_block(BlockId { stream: 0, seq: 9 }));
    assert_eq!(r.offsets_from["t"][&2], 100);
}

#[test]
fn references_combine_to_the_most_conservative() {
    let a = References::of(&checkpoint_at(3, vec![]));
    let mut later = checkpoint_at(6, vec![]).into_parts();
    later
        .graph
        .operators
        .push(op("input-1", "socket_input", "", &[], Some(1), None));
    later.data_wal_truncation.push(WalTruncation {
        stream: 1,
        truncate_before: Lsn::new(500),
    });
    let b = References::of(&Checkpoint::new(later).unwrap());
    let both = References::combine([&b, &a]).unwrap();
    assert_eq!(both.oldest_batch_time_ms, batch_ms(2));
    assert_eq!(both.metadata_log_truncate_before, Lsn::new(7));
    assert_eq!(
        both.data_wal_truncation_point(0),
        Some(Lsn::new(2)),
        "min over checkpoints"
    );
    // Stream 1 is declared by the later checkpoint only: the older one may need all of it.
    assert_eq!(both.data_wal_truncation_point(1), Some(Lsn::FIRST));
    assert_eq!(both.blocks.len(), 4, "{:?}", both.blocks);
    assert!(References::combine([]).is_none());
}

#[test]
fn store_references_cover_every_retained_checkpoint() {
    // The engine truncates by what the store reports after a publish: it must cover the
    // oldest retained checkpoint (the fallback target), not only the newest.
    let sim = wal::fs::SimDir::new();
    let store = sim_store(&sim, 2);
    for k in 1..=5 {
        publish_with_state(&store, k).unwrap();
    }
    let r = store.references().unwrap();
    // Retained: checkpoints 4 and 5; checkpoint 4 has batches 3 and 4 pending.
    assert_eq!(r.oldest_batch_time_ms, batch_ms(3));
    assert_eq!(r.data_wal_truncation_point(0), Some(Lsn::new(3)));
    assert_eq!(r.metadata_log_truncate_before, Lsn::new(9));
    assert_eq!(r.snapshots.len(), 2);
    assert!(sim_store(&wal::fs::SimDir::new(), 2).references().is_none());
}
