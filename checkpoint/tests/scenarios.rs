//! One named test per crash story, over the simulated page cache (`SimDir`, where the story
//! needs a crash) and real files (`LocalDir`, where it applies), plus the backend
//! conformance suite on both.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use checkpoint::{CheckpointStore, DirBackend, Error, GraphDescription, names};
use common::*;
use wal::fs::{CrashMode, Dir, LocalDir, SimDir};

#[test]
fn conformance_local_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    checkpoint::conformance::run_all(&|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Arc::new(DirBackend::local(tmp.path().join(format!("loc-{n}"))).unwrap())
    });
}

#[test]
fn conformance_sim_dir() {
    checkpoint::conformance::run_all(&|| Arc::new(DirBackend::new(Arc::new(SimDir::new()))));
}

#[test]
fn torn_temp_write_leaves_the_previous_checkpoint_newest() {
    // The story: checkpoint 3 is being written; the temporary file's bytes are in the page
    // cache when the power fails, before its fdatasync. What reaches the disk is a torn
    // prefix of the temporary file (or garbage, or a flipped bit), and the rename never
    // happened. The restart must use checkpoint 2, whole, and clear the temporary file.
    for (i, mode) in [
        CrashMode::TearLastWrite,
        CrashMode::GarbageInLastWrite,
        CrashMode::FlipBitInLastWrite,
        CrashMode::ZeroFillLastWrite,
        CrashMode::KeepPending,
    ]
    .into_iter()
    .enumerate()
    {
        let sim = SimDir::new();
        let store = sim_store(&sim, 3);
        publish_with_state(&store, 1).unwrap();
        let second = publish_with_state(&store, 2).unwrap();
        drop(store);

        // The snapshot of batch 3 is written (1 fdatasync), then the checkpoint's
        // temporary file: the process dies at that second fdatasync.
        let (store, dying) = dying_store(&sim, 3, Death::AtStep(Step::SyncData, 2));
        let err = publish_with_state(&store, 3).unwrap_err();
        assert!(dying.is_dead(), "{mode:?}: {err}");
        let report = sim.crash_with(mode, i as u64);
        assert!(
            sim.contents(&format!("{}.tmp", names::checkpoint_name(3)))
                .is_some(),
            "{mode:?}: the story needs the temporary file on disk: {report}"
        );

        let restarted = sim_store(&sim, 3);
        let restored = restarted.restore().unwrap().unwrap();
        assert_eq!(restored.checkpoint, second, "{mode:?}: {report}");
        assert!(
            restored.skipped.is_empty(),
            "{mode:?}: a temporary file is not a checkpoint"
        );
        assert_eq!(restored.state["counts"], state_body(2));
        let names = sim.handle().list().unwrap();
        assert!(
            !names.iter().any(|n| n.ends_with(".tmp")),
            "{mode:?}: left {names:?}"
        );
        // The sequence of the lost publish is free again.
        publish_with_state(&restarted, 3).unwrap();
        assert_eq!(restarted.latest().unwrap().unwrap().sequence, 3);
    }
}

#[test]
fn torn_checkpoint_under_its_final_name_falls_back() {
    // The story: a file system that does not order data before renames (or a copy of the
    // directory taken mid-write) leaves checkpoint 2 cut short under its final name. The
    // envelope's length says more bytes were written than exist: the reader skips it,
    // names it in a warning, and uses checkpoint 1.
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open_dir(tmp.path(), config(3)).unwrap();
    let first = publish_with_state(&store, 1).unwrap();
    publish_with_state(&store, 2).unwrap();
    drop(store);
    let path = tmp.path().join(names::checkpoint_name(2));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    let store = CheckpointStore::open_dir(tmp.path(), config(3)).unwrap();
    let (restored, logs) = capture_logs(|| store.restore().unwrap().unwrap());
    assert_eq!(restored.checkpoint, first);
    assert_eq!(restored.skipped.len(), 1);
    assert_eq!(restored.skipped[0].name, names::checkpoint_name(2));
    assert!(
        matches!(restored.skipped[0].error, Error::Truncated { .. }),
        "{}",
        restored.skipped[0].error
    );
    assert!(
        logs.contains("WARN") && logs.contains(&names::checkpoint_name(2)),
        "{logs}"
    );
    assert!(logs.contains("torn checkpoint"), "{logs}");
}

#[test]
fn rename_not_synced_previous_checkpoint_is_newest() {
    // The story: checkpoint 2's temporary file is written and fdatasynced and renamed to
    // its final name, and the power fails before the directory fsync. The rename lived
    // only in the page cache: after the crash the directory has no checkpoint 2, and the
    // previous checkpoint is the newest. Nothing is torn: the data was synced.
    let sim = SimDir::new();
    let store = sim_store(&sim, 3);
    let first = publish_with_state(&store, 1).unwrap();
    drop(store);
    // put_snapshot's directory fsync is the first; the checkpoint's is the second.
    let (store, dying) = dying_store(&sim, 3, Death::AtStep(Step::SyncDir, 2));
    publish_with_state(&store, 2).unwrap_err();
    assert!(dying.is_dead());
    assert!(
        sim.contents(&names::checkpoint_name(2)).is_some(),
        "renamed in the page cache"
    );
    sim.crash_with(CrashMode::LosePending, 1);

    assert_eq!(sim.contents(&names::checkpoint_name(2)), None);
    let restored = sim_store(&sim, 3).restore().unwrap().unwrap();
    assert_eq!(restored.checkpoint, first);
    assert!(restored.skipped.is_empty());

    // With the rename kept by the crash instead, the in-flight checkpoint is whole.
    let sim = SimDir::new();
    let store = sim_store(&sim, 3);
    publish_with_state(&store, 1).unwrap();
    drop(store);
    let (store, _) = dying_store(&sim, 3, Death::AtStep(Step::SyncDir, 2));
    publish_with_state(&store, 2).unwrap_err();
    sim.crash_with(CrashMode::KeepPending, 1);
    let restored = sim_store(&sim, 3).restore().unwrap().unwrap();
    assert_eq!(restored.sequence, 2);
    assert_eq!(
        restored.checkpoint,
        checkpoint_at(2, restored.checkpoint.parts().state_snapshots.clone())
    );
}

#[test]
fn corrupt_newest_checkpoint_falls_back_with_a_warning() {
    // The story: a bit of the newest checkpoint rots on disk (media corruption, after it
    // was durable). Its CRC no longer matches: the restart skips it with a warning naming
    // the file and uses the previous one.
    let sim = SimDir::new();
    let store = sim_store(&sim, 3);
    publish_with_state(&store, 1).unwrap();
    let second = publish_with_state(&store, 2).unwrap();
    publish_with_state(&store, 3).unwrap();
    drop(store);
    let newest = names::checkpoint_name(3);
    sim.corrupt(&newest, 200, 0x04).unwrap();

    let store = sim_store(&sim, 3);
    let (restored, logs) = capture_logs(|| store.restore().unwrap().unwrap());
    assert_eq!(restored.checkpoint, second);
    assert_eq!(restored.skipped.len(), 1);
    assert_eq!(restored.skipped[0].name, newest);
    assert!(matches!(
        restored.skipped[0].error,
        Error::ChecksumMismatch { .. }
    ));
    assert!(
        logs.contains("WARN") && logs.contains(&newest) && logs.contains("checksum"),
        "{logs}"
    );
    // The damaged file is listed as such, and kept for inspection.
    let info = store.checkpoints();
    assert!(
        info.iter().any(|c| c.name == newest && c.problem.is_some()),
        "{info:?}"
    );
}

#[test]
fn corrupt_newest_checkpoint_falls_back_on_real_files() {
    // The same story on a real file: one byte of the newest checkpoint's body changes.
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open_dir(tmp.path(), config(3)).unwrap();
    let first = publish_with_state(&store, 1).unwrap();
    publish_with_state(&store, 2).unwrap();
    drop(store);
    let path = tmp.path().join(names::checkpoint_name(2));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let restored = CheckpointStore::open_dir(tmp.path(), config(3))
        .unwrap()
        .restore()
        .unwrap()
        .unwrap();
    assert_eq!(restored.checkpoint, first);
    assert!(
        restored.skipped[0]
            .error
            .to_string()
            .contains(&path.display().to_string())
    );
}

#[test]
fn all_checkpoints_corrupt_is_a_clear_error() {
    // The story: every retained checkpoint is damaged (a disk gone bad). There is nothing
    // safe to restart from; starting from scratch would silently drop acknowledged data, so
    // the restart fails with an error that lists each checkpoint and what is wrong with it.
    let sim = SimDir::new();
    let store = sim_store(&sim, 2);
    publish_with_state(&store, 1).unwrap();
    publish_with_state(&store, 2).unwrap();
    drop(store);
    sim.corrupt(&names::checkpoint_name(1), 30, 0x80).unwrap();
    sim.corrupt(&names::checkpoint_name(2), 0, 0x01).unwrap();

    let store = sim_store(&sim, 2);
    let err = store.latest().unwrap_err();
    let Error::NoValidCheckpoint { tried, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(tried.len(), 2, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&names::checkpoint_name(2)) && text.contains("magic"),
        "{text}"
    );
    assert!(
        text.contains(&names::checkpoint_name(1)) && text.contains("checksum"),
        "{text}"
    );
    assert!(matches!(
        store.restore(),
        Err(Error::NoValidCheckpoint { .. })
    ));
}

#[test]
fn checkpoint_from_an_incompatible_graph_is_refused_naming_the_change() {
    // The story: the pipeline is upgraded, and the new code changes the running count's
    // state type from u64 to i64. Restoring the old snapshot into it would misread it: the
    // restart is refused, naming the operator and both types. Adding a stateless output
    // in the same upgrade is fine and is listed as such.
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open_dir(tmp.path(), config(3)).unwrap();
    publish_with_state(&store, 1).unwrap();
    drop(store);
    let store = CheckpointStore::open_dir(tmp.path(), config(3)).unwrap();
    let restored = store.restore().unwrap().unwrap();

    let mut upgraded = graph();
    upgraded.operators[2].state.as_mut().unwrap().state_type = "i64".to_owned();
    upgraded
        .operators
        .push(op("print-4", "print", "", &["counts"], None, None));
    let err = restored
        .check_compatible(&upgraded, INTERVAL_MS)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::IncompatibleGraph { .. }));
    assert!(text.contains(&names::checkpoint_name(1)), "{text}");
    assert!(
        text.contains("stateful operator update_state_by_key \"running counts\" (id counts): state type changed from (String, u64) version 1 to (String, i64) version 1"),
        "{text}"
    );
    assert!(text.contains("operator print (id print-4) added"), "{text}");

    // The same code, or only the compatible part of the upgrade: accepted.
    assert!(
        restored
            .check_compatible(&graph(), INTERVAL_MS)
            .unwrap()
            .is_empty()
    );
    let mut compatible = graph();
    compatible
        .operators
        .push(op("print-4", "print", "", &["counts"], None, None));
    assert_eq!(
        restored
            .check_compatible(&compatible, INTERVAL_MS)
            .unwrap()
            .len(),
        1
    );
    // A different batch interval is refused too.
    let err = restored
        .check_compatible(&graph(), 2 * INTERVAL_MS)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("batch interval changed from 1000 ms to 2000 ms"),
        "{err}"
    );
}

#[test]
fn failed_fsync_during_publish_publishes_nothing() {
    // The story: the disk reports EIO on the fdatasync of checkpoint 2's temporary file.
    // The publish fails, no checkpoint 2 appears, the store refuses further writes (a
    // failed fsync is never retried), and after the crash that follows, checkpoint 1 is the
    // newest.
    let sim = SimDir::new();
    let store = sim_store(&sim, 3);
    let first = publish_with_state(&store, 1).unwrap();
    let r = store
        .put_snapshot("counts", batch_ms(2), &state_body(2))
        .unwrap();
    sim.fail_sync_data_after(Some(0));
    let err = store
        .publish(&checkpoint_at(2, vec![r.clone()]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Io {
                op: "publish checkpoint",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&names::checkpoint_name(2)),
        "{err}"
    );
    assert_eq!(checkpoint_seqs(&sim.handle()), vec![1]);
    let again = store.publish(&checkpoint_at(2, vec![r])).unwrap_err();
    assert!(matches!(again, Error::Poisoned { .. }), "{again}");
    assert!(matches!(
        store.put_snapshot("counts", batch_ms(3), b"x"),
        Err(Error::Poisoned { .. })
    ));
    drop(store);
    sim.crash(5);
    let restored = sim_store(&sim, 3).restore().unwrap().unwrap();
    assert_eq!(restored.checkpoint, first);

    // EIO on the directory fsync after the rename instead: the outcome is unknown, so the
    // publish fails and poisons; after a crash either checkpoint is whole, never a mix.
    for seed in 0..20 {
        let sim = SimDir::new();
        let store = sim_store(&sim, 3);
        let first = publish_with_state(&store, 1).unwrap();
        let r = store
            .put_snapshot("counts", batch_ms(2), &state_body(2))
            .unwrap();
        let second = checkpoint_at(2, vec![r]);
        sim.fail_sync_dir_after(Some(0));
        assert!(matches!(store.publish(&second), Err(Error::Io { .. })));
        drop(store);
        sim.crash(seed);
        let restored = sim_store(&sim, 3).restore().unwrap().unwrap();
        assert!(
            restored.checkpoint == first || restored.checkpoint == second,
            "seed {seed}: {:?}",
            restored.checkpoint
        );
        assert!(restored.skipped.is_empty(), "seed {seed}");
    }
}

#[test]
fn retention_keeps_exactly_n() {
    // The story: a long run publishes a checkpoint per batch; only the newest N stay on
    // disk, and their snapshots with them.
    for retained in [1, 2, 5] {
        let sim = SimDir::new();
        let store = sim_store(&sim, retained);
        for k in 1..=12 {
            publish_with_state(&store, k).unwrap();
            let expected: Vec<u64> = (k.saturating_sub(retained as u64) + 1..=k).collect();
            assert_eq!(
                checkpoint_seqs(&sim.handle()),
                expected,
                "N = {retained} after {k}"
            );
        }
        let snapshots = store.snapshots();
        assert_eq!(snapshots.len(), retained, "N = {retained}: {snapshots:?}");
    }
    // And on real files.
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open_dir(tmp.path(), config(3)).unwrap();
    for k in 1..=6 {
        publish_with_state(&store, k).unwrap();
    }
    let dir = LocalDir::open(tmp.path()).unwrap();
    assert_eq!(checkpoint_seqs(&dir), vec![4, 5, 6]);
}

#[test]
fn retention_keeps_n_valid_ones_when_newer_ones_are_damaged() {
    // The story: the two newest checkpoints rot; the restart falls back to the third and
    // publishes on from there. Retention must count only valid checkpoints, or it would
    // delete the last good ones and leave nothing to fall back to.
    let sim = SimDir::new();
    let store = sim_store(&sim, 2);
    for k in 1..=4 {
        publish_with_state(&store, k).unwrap();
    }
    drop(store);
    sim.corrupt(&names::checkpoint_name(4), 100, 1).unwrap();
    let store = sim_store(&sim, 2);
    let restored = store.restore().unwrap().unwrap();
    assert_eq!(restored.sequence, 3);
    publish_with_state(&store, 4).unwrap(); // sequence 5
    // Valid: 5 and 3; damaged 4 sits between them and is kept for inspection.
    assert_eq!(checkpoint_seqs(&sim.handle()), vec![3, 4, 5]);
    publish_with_state(&store, 5).unwrap(); // sequence 6
    assert_eq!(checkpoint_seqs(&sim.handle()), vec![5, 6]);
}

#[test]
fn snapshot_referenced_by_a_retained_checkpoint_is_never_deleted() {
    // The story: state is snapshotted every third batch, and each checkpoint in between
    // references the latest snapshot. With two checkpoints retained, a snapshot must stay
    // until neither retained checkpoint references it, and every retained checkpoint
    // (the fallback target included) must always restore with verified state.
    let sim = SimDir::new();
    let store = sim_store(&sim, 2);
    let mut current = None;
    let mut deleted_at = std::collections::BTreeMap::new();
    for k in 1..=10 {
        if k % 3 == 1 {
            current = Some(
                store
                    .put_snapshot("counts", batch_ms(k), &state_body(k))
                    .unwrap(),
            );
        }
        let r = current.clone().unwrap();
        let published = store.publish(&checkpoint_at(k, vec![r])).unwrap();
        for name in published.deleted_snapshots {
            deleted_at.insert(name, k);
        }
        // Every retained checkpoint restores, snapshot verified.
        for seq in checkpoint_seqs(&sim.handle()) {
            let bytes = sim.contents(&names::checkpoint_name(seq)).unwrap();
            let stored = checkpoint::StoredCheckpoint::decode("retained", &bytes).unwrap();
            for r in &stored.checkpoint.parts().state_snapshots {
                let body = store.load_snapshot(r).unwrap();
                let taken_k = (r.taken_at_ms - ZERO_MS) / INTERVAL_MS;
                assert_eq!(
                    body,
                    state_body(taken_k),
                    "checkpoint {seq} after publish {k}"
                );
            }
        }
    }
    // The snapshot of batch 1 served checkpoints 1-3; with 2 retained, it goes when
    // checkpoint 5 is published (retained: 4 and 5, both on the snapshot of batch 4).
    let first = names::snapshot_name("counts", batch_ms(1), crc32fast::hash(&state_body(1)));
    assert_eq!(deleted_at.get(&first), Some(&5), "{deleted_at:?}");
    let fourth = names::snapshot_name("counts", batch_ms(4), crc32fast::hash(&state_body(4)));
    assert_eq!(deleted_at.get(&fourth), Some(&8), "{deleted_at:?}");
}

#[test]
fn damaged_snapshot_makes_restore_fall_back() {
    // The story: the newest checkpoint is intact but the state snapshot it references has
    // a flipped bit. Restoring it would load wrong state: `restore` verifies the snapshot
    // against the CRC the checkpoint recorded and falls back to the previous checkpoint.
    let sim = SimDir::new();
    let store = sim_store(&sim, 3);
    let first = publish_with_state(&store, 1).unwrap();
    let second = publish_with_state(&store, 2).unwrap();
    drop(store);
    let object = second.parts().state_snapshots[0].object.clone();
    sim.corrupt(&object, 30, 0x10).unwrap();

    let store = sim_store(&sim, 3);
    assert_eq!(
        store.latest().unwrap().unwrap().checkpoint,
        second,
        "latest does not load state"
    );
    let restored = store.restore().unwrap().unwrap();
    assert_eq!(restored.checkpoint, first);
    assert_eq!(restored.state["counts"], state_body(1));
    let reason = restored.skipped[0].error.to_string();
    assert!(reason.contains(&object), "{reason}");

    // A missing snapshot, likewise.
    sim.handle()
        .remove(&first.parts().state_snapshots[0].object)
        .unwrap();
    assert!(matches!(
        store.restore(),
        Err(Error::NoValidCheckpoint { .. })
    ));
}

#[test]
fn newer_format_version_is_refused_not_skipped() {
    // The story: Ember was upgraded, wrote checkpoints in format version 2, and was then
    // rolled back. The old build must not silently fall back to its own older checkpoint
    // (that would rewind the pipeline) nor take the location over (its retention would
    // delete the newer checkpoints): it refuses, naming the file and the version.
    let sim = SimDir::new();
    let store = sim_store(&sim, 3);
    publish_with_state(&store, 1).unwrap();
    drop(store);
    let newer = checkpoint::format::seal_version(checkpoint::format::Kind::Checkpoint, 2, b"{}");
    wal::fs::write_atomic(&sim.handle(), &names::checkpoint_name(2), &newer).unwrap();

    let backend = Arc::new(DirBackend::new(Arc::new(sim.handle())));
    let err = CheckpointStore::open(backend.clone(), config(3)).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { version: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&names::checkpoint_name(2)),
        "{err}"
    );
    let read_only = CheckpointStore::open_read_only(backend, config(3)).unwrap();
    assert!(matches!(
        read_only.latest(),
        Err(Error::UnsupportedVersion { .. })
    ));
    let text = read_only.describe().unwrap().to_string();
    assert!(text.contains("format version 2"), "{text}");
    assert!(matches!(
        read_only.publish(&checkpoint_at(2, vec![])),
        Err(Error::ReadOnly { .. })
    ));
}

#[test]
fn misplaced_checkpoint_file_is_skipped() {
    // The story: someone copies checkpoint 1 over the name of checkpoint 3 to "roll back".
    // Its content says it is checkpoint 1: the reader skips it as misplaced rather than
    // treat old content as the newest.
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open_dir(tmp.path(), config(5)).unwrap();
    publish_with_state(&store, 1).unwrap();
    let second = publish_with_state(&store, 2).unwrap();
    drop(store);
    std::fs::copy(
        tmp.path().join(names::checkpoint_name(1)),
        tmp.path().join(names::checkpoint_name(3)),
    )
    .unwrap();
    let restored = CheckpointStore::open_dir(tmp.path(), config(5))
        .unwrap()
        .latest()
        .unwrap()
        .unwrap();
    assert_eq!(restored.checkpoint, second);
    assert!(matches!(restored.skipped[0].error, Error::Misplaced { .. }));
}

#[test]
fn second_writer_is_locked_out() {
    // The story: a second driver is started on the same checkpoint directory while the
    // first still runs. Two writers would interleave sequences; the second is refused.
    let tmp = tempfile::tempdir().unwrap();
    let first = CheckpointStore::open_dir(tmp.path(), config(3)).unwrap();
    let err = CheckpointStore::open_dir(tmp.path(), config(3)).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    // A reader (inspect) is not a writer and is let in.
    let reader = CheckpointStore::open_read_only(
        Arc::new(DirBackend::local_existing(tmp.path()).unwrap()),
        config(3),
    )
    .unwrap();
    assert!(reader.latest().unwrap().is_none());
    drop(first);
    CheckpointStore::open_dir(tmp.path(), config(3)).unwrap();
}

#[test]
fn crash_at_every_step_of_a_publish() {
    // The story, exhaustively: the process dies before each mutating step of a publish
    // (snapshot write, temporary file, fdatasync, rename, directory fsync, retention and
    // snapshot deletes), and the power fails with each kind of damage. After every one the
    // restart finds the previous checkpoint or the new one, whole, with its state.
    let modes = [
        CrashMode::LosePending,
        CrashMode::KeepPending,
        CrashMode::TearLastWrite,
        CrashMode::Random,
    ];
    let mut steps = 0;
    loop {
        let mut completed = false;
        for (m, mode) in modes.into_iter().enumerate() {
            let sim = SimDir::new();
            let store = sim_store(&sim, 1);
            publish_with_state(&store, 1).unwrap();
            let before = publish_with_state(&store, 2).unwrap();
            drop(store);
            let (store, dying) = dying_store(&sim, 1, Death::AfterSteps(steps));
            let outcome = publish_with_state(&store, 3);
            completed = outcome.is_ok();
            let acked = outcome.as_ref().ok().cloned();
            drop(store);
            let report = sim.crash_with(mode, steps * 10 + m as u64);
            let restored = sim_store(&sim, 1).restore().unwrap().unwrap();
            let seen = restored.checkpoint.batch_time_ms();
            match &acked {
                Some(after) => assert_eq!(
                    &restored.checkpoint, after,
                    "step {steps} {mode:?}: {report}"
                ),
                None => assert!(
                    restored.checkpoint == before || seen == batch_ms(3),
                    "step {steps} {mode:?} (died: {}): {report}",
                    dying.is_dead()
                ),
            }
            let k = (seen - ZERO_MS) / INTERVAL_MS;
            assert_eq!(
                restored.state["counts"],
                state_body(k),
                "step {steps} {mode:?}"
            );
        }
        if completed {
            break;
        }
        steps += 1;
        assert!(steps < 100, "a publish takes a bounded number of steps");
    }
    assert!(
        steps >= 8,
        "the publish was cut at every step ({steps} steps)"
    );
}

#[test]
fn describe_shows_what_a_restart_would_use() {
    let sim = SimDir::new();
    let store = sim_store(&sim, 3);
    publish_with_state(&store, 1).unwrap();
    publish_with_state(&store, 2).unwrap();
    drop(store);
    sim.corrupt(&names::checkpoint_name(2), 50, 2).unwrap();
    let store = sim_store(&sim, 3);
    let text = store.describe().unwrap().to_string();
    for expected in [
        "checkpoint location sim:/ (2 checkpoint(s), retaining 3 valid)",
        &format!(
            "{}  UNUSABLE: corrupt checkpoint",
            names::checkpoint_name(2)
        ),
        &format!(
            "{}  batch {} ms  ok  <- a restart uses this one",
            names::checkpoint_name(1),
            batch_ms(1)
        ),
        &format!(
            "batch {} ms: stream 0: 1 block(s), 101 records, 1001 bytes (1 from WAL)",
            batch_ms(1)
        ),
        "metadata log covered through Lsn 2 (replay from Lsn 3)",
        "operator counts at batch",
        "present)",
        "source position of stream 0: acked_line=1000",
        "counts update_state_by_key \"running counts\" [state (String, u64) version 1] <- flat-map-1",
        "data WAL of stream 0 may be truncated below Lsn 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let empty = sim_store(&SimDir::new(), 3).describe().unwrap().to_string();
    assert!(empty.contains("no checkpoint"), "{empty}");
    let _ = GraphDescription::default();
}
