//! The conformance suite every [`CheckpointBackend`] must pass, and the store behaviour
//! built on it. Each backend's tests call [`run_all`] with a factory of fresh, empty
//! locations (the local directory, the simulated page cache, and the object store in memory
//! and on a real S3 server), so all backends are held to one contract.
//!
//! Failures panic with the backend's location and the broken rule: this module is test
//! support, compiled in the library so that backends in other crates can run it.

use std::io;
use std::sync::Arc;

use crate::backend::CheckpointBackend;
use crate::config::Config;
use crate::model::{
    BatchInputs, BlockLocation, BlockRef, Checkpoint, CheckpointParts, GraphDescription, InputData,
    OperatorDesc, StateDesc, StreamInput, WalTruncation,
};
use crate::names;
use crate::store::CheckpointStore;

/// Runs every check, each on a fresh location from `fresh`.
pub fn run_all(fresh: &dyn Fn() -> Arc<dyn CheckpointBackend>) {
    put_new_then_get_and_list(fresh().as_ref());
    put_new_refuses_an_existing_name(fresh().as_ref());
    delete_is_durable_and_idempotent(fresh().as_ref());
    empty_location_has_no_checkpoint(fresh());
    publish_then_latest_round_trips(fresh());
    newest_is_the_highest_sequence(fresh());
    retention_keeps_the_configured_number(fresh());
    snapshots_round_trip_and_are_collected(fresh());
    second_writer_collides(fresh());
}

fn check<T>(result: io::Result<T>, backend: &dyn CheckpointBackend, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{}: {what} failed: {e}", backend.location()),
    }
}

/// `put_new` stores exactly the bytes; `list` shows the name; `get` returns them.
pub fn put_new_then_get_and_list(backend: &dyn CheckpointBackend) {
    let name = names::checkpoint_name(1);
    check(backend.put_new(&name, b"hello"), backend, "put_new");
    assert_eq!(
        check(backend.get(&name), backend, "get"),
        b"hello",
        "{}",
        backend.location()
    );
    let listed = check(backend.list(), backend, "list");
    assert!(
        listed.contains(&name),
        "{}: list {listed:?} lacks {name}",
        backend.location()
    );
    check(
        backend.put_new(&names::checkpoint_name(2), b""),
        backend,
        "put_new of empty bytes",
    );
    assert_eq!(
        check(backend.get(&names::checkpoint_name(2)), backend, "get"),
        b""
    );
}

/// `put_new` of an existing name fails with `AlreadyExists` and keeps the old bytes.
pub fn put_new_refuses_an_existing_name(backend: &dyn CheckpointBackend) {
    let name = names::checkpoint_name(7);
    check(backend.put_new(&name, b"first"), backend, "put_new");
    let err = backend
        .put_new(&name, b"second")
        .expect_err("put_new over an existing name");
    assert_eq!(
        err.kind(),
        io::ErrorKind::AlreadyExists,
        "{}: {err}",
        backend.location()
    );
    assert_eq!(check(backend.get(&name), backend, "get"), b"first");
}

/// `delete` removes the name; deleting it again is `Ok`; `get` of it is `NotFound`.
pub fn delete_is_durable_and_idempotent(backend: &dyn CheckpointBackend) {
    let name = names::snapshot_name("op", 10, 0);
    check(backend.put_new(&name, b"x"), backend, "put_new");
    check(backend.delete(&name), backend, "delete");
    check(backend.delete(&name), backend, "second delete");
    assert!(!check(backend.list(), backend, "list").contains(&name));
    let err = backend.get(&name).expect_err("get of a deleted name");
    assert_eq!(
        err.kind(),
        io::ErrorKind::NotFound,
        "{}: {err}",
        backend.location()
    );
}

fn store(backend: Arc<dyn CheckpointBackend>, retained: usize) -> CheckpointStore {
    let config = Config {
        checkpoints_retained: retained,
        ..Config::default()
    };
    let location = backend.location();
    CheckpointStore::open(backend, config).unwrap_or_else(|e| panic!("{location}: open: {e}"))
}

/// A small valid checkpoint at batch `k` of a 1 s grid, with one WAL block per batch.
pub fn sample_checkpoint(k: u64) -> Checkpoint {
    let zero = 1_700_000_000_000;
    let graph = GraphDescription {
        operators: vec![
            OperatorDesc {
                id: "input-0".to_owned(),
                kind: "socket_input".to_owned(),
                name: "lines".to_owned(),
                parents: vec![],
                input_stream: Some(0),
                output: false,
                state: None,
            },
            OperatorDesc {
                id: "counts".to_owned(),
                kind: "update_state_by_key".to_owned(),
                name: "running counts".to_owned(),
                parents: vec!["input-0".to_owned()],
                input_stream: None,
                output: false,
                state: Some(StateDesc {
                    key_type: "String".to_owned(),
                    state_type: "u64".to_owned(),
                    version: 1,
                }),
            },
        ],
    };
    let pending = (k.saturating_sub(1)..=k)
        .filter(|b| *b >= 1)
        .map(|b| BatchInputs {
            batch_time_ms: zero + b * 1000,
            inputs: vec![StreamInput {
                stream: 0,
                data: InputData::Blocks(vec![BlockRef {
                    seq: b,
                    records: 10,
                    len_bytes: 100,
                    location: BlockLocation::Wal {
                        log_stream: 0,
                        lsn: wal::Lsn::new(b),
                    },
                }]),
            }],
        })
        .collect();
    Checkpoint::new(CheckpointParts {
        batch_time_ms: zero + k * 1000,
        batch_interval_ms: 1000,
        zero_time_ms: zero,
        metadata_log_lsn: wal::Lsn::new(k * 3),
        pending_batches: pending,
        remembered_batches: vec![],
        unallocated: vec![],
        data_wal_truncation: vec![WalTruncation {
            stream: 0,
            truncate_before: wal::Lsn::new(k.max(1)),
        }],
        state_snapshots: vec![],
        graph,
        source_positions: vec![],
    })
    .unwrap_or_else(|e| panic!("sample checkpoint {k}: {e}"))
}

/// A location with no checkpoint: `latest` is `None`, not an error.
pub fn empty_location_has_no_checkpoint(backend: Arc<dyn CheckpointBackend>) {
    let location = backend.location();
    let s = store(backend, 3);
    assert!(
        s.latest()
            .unwrap_or_else(|e| panic!("{location}: {e}"))
            .is_none()
    );
}

/// What is published is what `latest` returns, by value.
pub fn publish_then_latest_round_trips(backend: Arc<dyn CheckpointBackend>) {
    let location = backend.location();
    let s = store(Arc::clone(&backend), 3);
    let c = sample_checkpoint(5);
    let published = s
        .publish(&c)
        .unwrap_or_else(|e| panic!("{location}: publish: {e}"));
    assert_eq!(published.sequence, 1);
    drop(s);
    let s = store(backend, 3);
    let restored = s
        .latest()
        .unwrap_or_else(|e| panic!("{location}: latest: {e}"))
        .unwrap_or_else(|| panic!("{location}: no checkpoint after a publish"));
    assert_eq!(restored.checkpoint, c, "{location}");
    assert_eq!(restored.sequence, 1);
    assert!(restored.skipped.is_empty());
}

/// The newest checkpoint is the last published, even if its batch time is older (a restart
/// that fell back republishes older batch times).
pub fn newest_is_the_highest_sequence(backend: Arc<dyn CheckpointBackend>) {
    let location = backend.location();
    let s = store(backend, 5);
    for k in [4, 9, 6] {
        s.publish(&sample_checkpoint(k))
            .unwrap_or_else(|e| panic!("{location}: publish {k}: {e}"));
    }
    let restored = s
        .latest()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{location}: no checkpoint"));
    assert_eq!(restored.checkpoint, sample_checkpoint(6), "{location}");
    assert_eq!(restored.sequence, 3);
}

/// After many publishes exactly `checkpoints_retained` checkpoints remain: the newest.
pub fn retention_keeps_the_configured_number(backend: Arc<dyn CheckpointBackend>) {
    let location = backend.location();
    let s = store(Arc::clone(&backend), 3);
    for k in 1..=7 {
        s.publish(&sample_checkpoint(k))
            .unwrap_or_else(|e| panic!("{location}: publish {k}: {e}"));
    }
    let mut present: Vec<u64> = backend
        .list()
        .unwrap_or_else(|e| panic!("{location}: list: {e}"))
        .iter()
        .filter_map(|n| names::parse_checkpoint_name(n))
        .collect();
    present.sort_unstable();
    assert_eq!(present, vec![5, 6, 7], "{location}");
}

/// A snapshot reads back verified; once no retained checkpoint references it (and a publish
/// has passed since it was written), it is collected.
pub fn snapshots_round_trip_and_are_collected(backend: Arc<dyn CheckpointBackend>) {
    let location = backend.location();
    let s = store(Arc::clone(&backend), 1);
    let r = s
        .put_snapshot("counts", 1_700_000_001_000, b"state one")
        .unwrap_or_else(|e| panic!("{location}: put_snapshot: {e}"));
    assert_eq!(
        s.load_snapshot(&r)
            .unwrap_or_else(|e| panic!("{location}: {e}")),
        b"state one"
    );
    let mut parts = sample_checkpoint(1).into_parts();
    parts.state_snapshots = vec![r.clone()];
    let with_state = Checkpoint::new(parts).unwrap_or_else(|e| panic!("{e}"));
    s.publish(&with_state)
        .unwrap_or_else(|e| panic!("{location}: publish: {e}"));
    let published = s
        .publish(&sample_checkpoint(2))
        .unwrap_or_else(|e| panic!("{location}: publish: {e}"));
    assert_eq!(
        published.deleted_snapshots,
        vec![r.object.clone()],
        "{location}"
    );
    assert!(
        !backend.list().unwrap_or_default().contains(&r.object),
        "{location}"
    );
}

/// Two writers that pick the same sequence: the second publish is a `Conflict`.
pub fn second_writer_collides(backend: Arc<dyn CheckpointBackend>) {
    let location = backend.location();
    let name = names::checkpoint_name(1);
    let s = store(Arc::clone(&backend), 3);
    // The other writer publishes behind this store's back (as a writer on another machine
    // would, where no lock reaches).
    backend
        .put_new(&name, &[])
        .unwrap_or_else(|e| panic!("{location}: put_new: {e}"));
    match s.publish(&sample_checkpoint(1)) {
        Err(crate::Error::Conflict { .. }) => {}
        other => panic!("{location}: expected a conflict, got {other:?}"),
    }
}
