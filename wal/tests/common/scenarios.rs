//! The named crash scenarios: one function per crash story, each starting with the story.
//! `crash_scenarios.rs` runs them against every backend they apply to; `canary.rs` runs
//! the power-loss ones against a store that skips fsync and checks that they fail.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use wal::format::{self, SEGMENT_HEADER_LEN, SegmentHeader};
use wal::fs::CrashMode;
use wal::recovery::Verdict;
use wal::{Config, Error, Lsn, SegmentId, SyncPolicy, Wal};

use super::{
    Backend, assert_records, payload, read_all, rerun, seed, segment_name, small_segments,
};

const FILE: &str = "crash_scenarios";

/// Appends `count` records (writer id `w`) with group commit and returns them.
fn fill(wal: &Wal, w: u64, count: u64, len_max: usize) -> Vec<(Lsn, Vec<u8>)> {
    (0..count)
        .map(|n| {
            let bytes = payload(w, n, len_max);
            (wal.append_blocking(bytes.clone()).unwrap(), bytes)
        })
        .collect()
}

/// One big segment, so that every record of a test is in the newest segment.
fn one_segment() -> Config {
    Config {
        segment_size_max_bytes: 1 << 20,
        record_size_max_bytes: 4096,
        index_interval_bytes: 256,
        ..Config::default()
    }
}

/// Offset of the frame of the `index`-th record in a segment holding records of
/// `payload(w, n, len_max)` for n = first.., as written by `fill`.
fn frame_offset(records: &[(Lsn, Vec<u8>)], index: usize) -> u64 {
    SEGMENT_HEADER_LEN as u64
        + records[..index]
            .iter()
            .map(|(_, b)| format::frame_len(b.len()))
            .sum::<u64>()
}

pub fn torn_tail_after_last_sync_is_truncated(backend: &dyn Backend) {
    // Story: the process appended and synced records 1..=20, then wrote the frame of
    // record 21 and died in the middle of that write, before any sync. The newest segment
    // ends in a piece of a frame. Opening the log must cut exactly that piece, keep 1..=20,
    // and give the next append Lsn 21 again.
    let config = one_segment();
    let wal = backend.open(config).unwrap();
    let written = fill(&wal, 1, 20, 200);
    drop(wal);
    let segment = backend.segments().pop().unwrap();
    let synced_len = backend.contents(&segment).len() as u64;
    let mut frame = Vec::new();
    format::encode_record(&mut frame, SegmentId::new(1), Lsn::new(21), &[0xAB; 100]);
    backend.append_raw(&segment, &frame[..frame.len() - 37]);

    let wal = backend.open(config).unwrap();
    match &wal.recovery().verdict {
        Verdict::TornTail {
            offset,
            bytes_discarded,
            ..
        } => {
            assert_eq!(*offset, synced_len);
            assert_eq!(*bytes_discarded, (frame.len() - 37) as u64);
        }
        other => panic!("{}: expected a torn tail, got {other}", backend.name()),
    }
    assert_records(&read_all(&wal), &written, "");
    assert_eq!(
        backend.contents(&segment).len() as u64,
        synced_len,
        "the tail was cut"
    );
    assert_eq!(wal.append_blocking(b"next".to_vec()).unwrap(), Lsn::new(21));
}

pub fn zero_filled_tail_is_truncated(backend: &dyn Backend) {
    // Story: the file system persisted the new length of the segment but not the data
    // (ext4 `data=writeback`, or an allocation without the write): the tail reads as
    // zeros. Zeros are not a valid frame (the checksum of an empty record at Lsn 0 is not
    // zero) and nothing valid follows, so it is a torn tail.
    let config = one_segment();
    let wal = backend.open(config).unwrap();
    let written = fill(&wal, 2, 10, 300);
    drop(wal);
    let segment = backend.segments().pop().unwrap();
    backend.append_raw(&segment, &[0u8; 4096]);
    let wal = backend.open(config).unwrap();
    assert!(matches!(
        wal.recovery().verdict,
        Verdict::TornTail {
            bytes_discarded: 4096,
            ..
        }
    ));
    assert_records(&read_all(&wal), &written, "");
}

pub fn corrupt_record_before_valid_records_fails_recovery(backend: &dyn Backend) {
    // Story: a disk returned a flipped bit inside record 5 of 20, all synced long ago.
    // Records 6..=20 are intact. This is not a torn write (valid records follow), so
    // opening must refuse and name the segment file and the byte offset of record 5,
    // instead of silently dropping records 5..=20.
    let config = one_segment();
    let wal = backend.open(config).unwrap();
    let written = fill(&wal, 3, 20, 200);
    drop(wal);
    let segment = backend.segments().pop().unwrap();
    let at = frame_offset(&written, 4);
    backend.corrupt(&segment, at + 16 + (written[4].1.len() as u64 / 2), 0x04);
    let err = backend.open(config).unwrap_err();
    match &err {
        Error::Corrupt {
            segment: name,
            offset,
            lsn,
            reason,
        } => {
            assert!(name.ends_with(&segment), "{err}");
            assert_eq!(*offset, at, "{err}");
            assert_eq!(*lsn, Some(Lsn::new(5)), "{err}");
            assert!(reason.contains("checksum"), "{err}");
        }
        other => panic!("{}: expected Corrupt, got {other}", backend.name()),
    }
    let message = err.to_string();
    assert!(
        message.contains(&segment) && message.contains(&format!("byte {at}")),
        "{message}"
    );
}

pub fn impossible_length_before_valid_records_fails_recovery(backend: &dyn Backend) {
    // Story: the length field of record 3 was damaged into a huge value. Followed blindly
    // it would swallow the rest of the segment as one "torn" record. The scan finds the
    // valid records after it and refuses to open, naming the offset.
    let config = one_segment();
    let wal = backend.open(config).unwrap();
    let written = fill(&wal, 4, 12, 100);
    drop(wal);
    let segment = backend.segments().pop().unwrap();
    let at = frame_offset(&written, 2);
    backend.corrupt(&segment, at + 3, 0x7F); // the length's most significant byte
    let err = backend.open(config).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { offset, reason, .. } if *offset == at && reason.contains("impossible record length")),
        "{}: {err}",
        backend.name()
    );
}

pub fn damage_at_the_end_of_a_sealed_segment_fails_recovery(backend: &dyn Backend) {
    // Story: segment 1 lost its last bytes (a truncation by some other program), while
    // segments 2.. are fine. A segment is fully synced before its successor is created, so
    // this cannot be a torn write: refuse, naming segment 1.
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    fill(&wal, 5, 60, 200);
    drop(wal);
    let first = segment_name(1);
    let len = backend.contents(&first).len() as u64;
    backend.truncate_raw(&first, len - 3);
    let err = backend.open(config).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { segment, .. } if segment.ends_with(&first)),
        "{}: {err}",
        backend.name()
    );
}

pub fn missing_middle_segment_fails_recovery(backend: &dyn Backend) {
    // Story: someone deleted segment 2 by hand. Segments 1 and 3.. are intact, but the log
    // has a hole; opening must refuse rather than skip Lsns.
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    fill(&wal, 6, 60, 200);
    drop(wal);
    assert!(backend.segments().len() >= 3);
    backend.remove_raw(&segment_name(2));
    let err = backend.open(config).unwrap_err();
    match &err {
        Error::MissingSegment {
            segment,
            expected_id,
            ..
        } => {
            assert!(segment.ends_with(&segment_name(3)), "{err}");
            assert_eq!(*expected_id, SegmentId::new(2));
        }
        other => panic!("{}: expected MissingSegment, got {other}", backend.name()),
    }
}

pub fn torn_header_of_newest_segment_is_discarded(backend: &dyn Backend) {
    // Story: the writer sealed segment N and created segment N+1, and the process died
    // while writing the new segment's header, before its first sync. No record in N+1 was
    // ever acknowledged. Opening deletes the torn segment and reuses its id.
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    let written = fill(&wal, 7, 30, 200);
    drop(wal);
    let next_id = backend.segments().len() as u64 + 1;
    let header = SegmentHeader {
        segment_id: SegmentId::new(next_id),
        base_lsn: Lsn::new(31),
    }
    .encode();
    backend.write_raw(&segment_name(next_id), &header[..11]);
    let wal = backend.open(config).unwrap();
    assert!(
        matches!(
            wal.recovery().verdict,
            Verdict::TornSegment { len_bytes: 11, .. }
        ),
        "{:?}",
        wal.recovery().verdict
    );
    assert!(
        !backend.segments().contains(&segment_name(next_id)),
        "torn segment deleted"
    );
    assert_records(&read_all(&wal), &written, "");
    assert_eq!(wal.append_blocking(b"x".to_vec()).unwrap(), Lsn::new(31));
    assert!(
        backend.segments().contains(&segment_name(next_id)),
        "its id is reused"
    );
}

pub fn unreadable_header_followed_by_records_fails_recovery(backend: &dyn Backend) {
    // Story: the header of the newest segment was damaged after its records were synced.
    // An unreadable header with valid records after it is corruption, not a segment torn
    // while being created: refuse rather than delete acknowledged records.
    let config = one_segment();
    let wal = backend.open(config).unwrap();
    fill(&wal, 8, 10, 100);
    drop(wal);
    let segment = backend.segments().pop().unwrap();
    backend.corrupt(&segment, 13, 0x01); // header checksum
    let err = backend.open(config).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { offset: 0, .. }),
        "{}: {err}",
        backend.name()
    );
}

pub fn segment_of_a_newer_format_version_is_refused(backend: &dyn Backend) {
    // Story: a newer Ember wrote this log, then an older binary tries to open it.
    let config = one_segment();
    let wal = backend.open(config).unwrap();
    fill(&wal, 9, 5, 100);
    drop(wal);
    let segment = backend.segments().pop().unwrap();
    let mut bytes = backend.contents(&segment);
    bytes[8] = 2; // format_version = 2, with a header checksum that matches it
    let mut covered = bytes[0..12].to_vec();
    covered.extend_from_slice(&bytes[16..32]);
    let crc = crc32fast::hash(&covered).to_le_bytes();
    backend.remove_raw(&segment);
    bytes[12..16].copy_from_slice(&crc);
    backend.write_raw(&segment, &bytes);
    let err = backend.open(config).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::UnsupportedVersion {
                version: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

pub fn segment_copied_under_another_name_is_refused(backend: &dyn Backend) {
    // Story: an operator restored segment 1 from a backup under the name of segment 2.
    // Its header says segment 1; every record checksum covers segment 1.
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    fill(&wal, 10, 3, 100);
    drop(wal);
    assert_eq!(backend.segments().len(), 1);
    let copy = backend.contents(&segment_name(1));
    backend.write_raw(&segment_name(2), &copy);
    let err = backend.open(config).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { reason, .. } if reason.contains("belongs to segment 1")),
        "{err}"
    );
}

pub fn record_with_a_valid_checksum_but_wrong_lsn_is_refused(backend: &dyn Backend) {
    // Story: a frame appears that is intact (its checksum verifies) but carries Lsn 15
    // where Lsn 6 belongs: a writer bug or a misdirected write. A torn write cannot produce
    // it, so it is corruption even at the very end.
    let config = one_segment();
    let wal = backend.open(config).unwrap();
    fill(&wal, 11, 5, 100);
    drop(wal);
    let segment = backend.segments().pop().unwrap();
    let mut frame = Vec::new();
    format::encode_record(
        &mut frame,
        SegmentId::new(1),
        Lsn::new(15),
        b"out of sequence",
    );
    backend.append_raw(&segment, &frame);
    let err = backend.open(config).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { reason, lsn: Some(l), .. } if reason.contains("Lsn 15") && *l == Lsn::new(6)),
        "{err}"
    );
}

// ---- Power-loss scenarios: need the simulated page cache. ----

pub fn acknowledged_records_survive_power_loss_during_concurrent_appends(backend: &dyn Backend) {
    // Story: four threads append with group commit; the power fails at a seeded moment,
    // while appends are in every state (queued, written, being synced). Every append that
    // returned Ok must be in the recovered log with its exact bytes; the log must be a
    // dense prefix of what was written. Repeated for many seeds and crash outcomes.
    let sim = backend.sim().expect("needs the simulated page cache");
    let base = seed(0x5EED_0001);
    for round in 0..12u64 {
        let seed = base.wrapping_add(round);
        let ctx = rerun(
            FILE,
            "acknowledged_records_survive_power_loss_during_concurrent_appends",
            seed,
        );
        let config = Config {
            segment_size_max_bytes: 4096,
            record_size_max_bytes: 1024,
            ..Config::default()
        };
        let wal = Arc::new(
            backend
                .open(config)
                .unwrap_or_else(|e| panic!("open: {e}; {ctx}")),
        );
        let start = wal.last_lsn().map_or(0, Lsn::get);
        let (tx, rx) = mpsc::channel();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4u64)
            .map(|w| {
                let (wal, tx, acked) = (Arc::clone(&wal), tx.clone(), Arc::clone(&acked));
                std::thread::spawn(move || {
                    for n in 0.. {
                        let bytes = payload(seed ^ w, n, 700);
                        match wal.append_blocking(bytes.clone()) {
                            Ok(lsn) => {
                                acked.lock().unwrap().push((lsn, bytes));
                                if tx.send(()).is_err() {
                                    break;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let crash_after = 10 + seed % 150;
        for _ in 0..crash_after {
            rx.recv().unwrap();
        }
        let report = sim.crash(seed);
        drop(rx);
        for t in threads {
            t.join().unwrap();
        }
        drop(wal);
        let wal = backend
            .open(config)
            .unwrap_or_else(|e| panic!("reopen after crash ({report}): {e}; {ctx}"));
        let recovered = read_all(&wal);
        let acked = acked.lock().unwrap();
        assert!(acked.len() as u64 >= crash_after, "{ctx}");
        for (lsn, bytes) in acked.iter() {
            let got = wal
                .read(*lsn)
                .unwrap_or_else(|e| panic!("acknowledged Lsn {lsn} lost ({report}): {e}; {ctx}"));
            assert_eq!(
                &got[..],
                &bytes[..],
                "acknowledged Lsn {lsn} changed ({report}); {ctx}"
            );
        }
        let first = recovered.first().map_or(1, |r| r.0.get());
        assert_eq!(first, 1, "{ctx}");
        assert!(
            recovered.len() as u64 >= start,
            "records from earlier rounds lost; {ctx}"
        );
        drop(wal);
    }
}

pub fn new_segment_is_durable_before_its_records_are_acknowledged(backend: &dyn Backend) {
    // Story: the writer rotated through several segments with group commit, then the
    // power failed right after the last acknowledgement, losing every directory change
    // and every byte not explicitly synced. Each new segment's name must have been made
    // durable (directory fsync) before its first record was acknowledged.
    let sim = backend.sim().expect("needs the simulated page cache");
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    let written = fill(&wal, 12, 50, 200);
    assert!(backend.segments().len() > 3);
    let report = sim.crash_with(CrashMode::LosePending, 1);
    drop(wal);
    let wal = backend
        .open(config)
        .unwrap_or_else(|e| panic!("reopen ({report}): {e}"));
    assert_records(&read_all(&wal), &written, &report.to_string());
}

pub fn power_loss_keeps_a_prefix_of_unsynced_writes(backend: &dyn Backend) {
    // Story: with `UnsafeNoSync`, records are acknowledged before they are durable; the
    // log is synced explicitly now and then. A power loss may keep any prefix of the
    // unsynced writes, torn, zero-filled or with a flipped bit at its end. Recovery must
    // keep everything synced and return a prefix of what was written, never a record with
    // wrong bytes.
    let sim = backend.sim().expect("needs the simulated page cache");
    let base = seed(0x5EED_0002);
    for round in 0..40u64 {
        let seed = base.wrapping_add(round);
        let ctx = rerun(FILE, "power_loss_keeps_a_prefix_of_unsynced_writes", seed);
        let config = small_segments(SyncPolicy::UnsafeNoSync);
        let wal = backend.open(config).unwrap();
        let mut written = read_all(&wal);
        let synced_before = written.len();
        for n in 0..(20 + seed % 40) {
            let bytes = payload(seed, n, 300);
            written.push((wal.append_blocking(bytes.clone()).unwrap(), bytes));
        }
        let synced = if seed % 3 == 0 {
            written.len()
        } else {
            synced_before
        };
        if seed % 3 == 0 {
            wal.sync_blocking().unwrap();
        }
        for n in 0..(seed % 30) {
            let bytes = payload(seed + 1, n, 300);
            written.push((wal.append_blocking(bytes.clone()).unwrap(), bytes));
        }
        let report = sim.crash(seed);
        drop(wal);
        let wal = backend
            .open(config)
            .unwrap_or_else(|e| panic!("reopen ({report}): {e}; {ctx}"));
        let recovered = read_all(&wal);
        assert!(
            recovered.len() >= synced,
            "synced records lost ({report}); {ctx}"
        );
        assert_records(
            &recovered,
            &written[..recovered.len().min(written.len())],
            &format!("not a prefix ({report}); {ctx}"),
        );
        drop(wal);
    }
}

pub fn failed_fsync_poisons_the_log_and_is_never_retried(backend: &dyn Backend) {
    // Story: the disk reports EIO on an fdatasync. The dirty pages may be gone; a retry
    // could "succeed" without writing them (the simulated page cache does exactly that).
    // The append must fail, every later call must fail with Poisoned naming the original
    // failure, no further sync may be attempted, and after a restart the log holds every
    // record acknowledged before the failure and none after.
    let sim = backend.sim().expect("needs the simulated page cache");
    let config = one_segment();
    let wal = backend.open(config).unwrap();
    let written = fill(&wal, 13, 5, 100);
    sim.fail_sync_data_of(&segment_name(1), Some(0));
    let err = wal.append_blocking(b"doomed".to_vec()).unwrap_err();
    let syncs_after_failure = sim.stats().sync_data_calls;
    match &err {
        Error::Poisoned { cause, .. } => {
            let cause = cause.to_string();
            assert!(cause.contains("sync segment"), "{err}");
        }
        other => panic!("expected Poisoned, got {other}"),
    }
    assert!(
        err.to_string().contains("os error 5") || err.to_string().contains("Input/output"),
        "{err}"
    );
    for later in [
        wal.append_blocking(b"later".to_vec()).map(|_| ()),
        wal.sync_blocking().map(|_| ()),
        wal.read(Lsn::new(1)).map(|_| ()),
        wal.truncate_before(Lsn::new(2)).map(|_| ()),
        wal.iter_from(Lsn::new(1)).map(|_| ()),
    ] {
        let later = later.unwrap_err();
        assert!(later.is_poisoned(), "{later}");
        assert!(
            later.to_string().contains("sync segment"),
            "names the original failure: {later}"
        );
    }
    assert_eq!(
        sim.stats().sync_data_calls,
        syncs_after_failure,
        "a failed fsync must never be retried"
    );
    let close = wal.close().unwrap_err();
    assert!(close.is_poisoned());
    let report = sim.crash_with(CrashMode::LosePending, 2);
    let wal = backend
        .open(config)
        .unwrap_or_else(|e| panic!("reopen ({report}): {e}"));
    assert_records(&read_all(&wal), &written, "");
    assert_eq!(
        wal.append_blocking(b"after restart".to_vec()).unwrap(),
        Lsn::new(6)
    );
}

pub fn failed_directory_fsync_poisons_the_log(backend: &dyn Backend) {
    // Story: the directory fsync that makes a new segment's name durable fails. Records in
    // that segment must not be acknowledged; the log is poisoned.
    let sim = backend.sim().expect("needs the simulated page cache");
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    fill(&wal, 14, 3, 100); // first segment created and synced
    sim.fail_sync_dir_after(Some(0));
    let mut acked = 3;
    let err = loop {
        match wal.append_blocking(payload(14, acked, 300)) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
    };
    assert!(err.is_poisoned(), "{err}");
    assert!(
        wal.append_blocking(b"x".to_vec())
            .unwrap_err()
            .is_poisoned()
    );
    drop(wal);
    sim.crash_with(CrashMode::LosePending, 3);
    let wal = backend.open(config).unwrap();
    assert_eq!(read_all(&wal).len() as u64, acked);
}

pub fn full_disk_fails_appends_clearly_and_recovers_when_space_frees(backend: &dyn Backend) {
    // Story: the disk fills up. The append that does not fit fails with an error naming
    // the segment and ENOSPC (a partial write is cut; a segment that cannot be created is
    // removed again); the log is not poisoned (no sync failed), and once space is freed
    // appending continues with the very Lsn that failed. Nothing half-written survives a
    // restart. (With preallocation the writes go into space reserved earlier, so the disk
    // runs out when a new segment is needed; without, in the middle of a write.)
    let sim = backend.sim().expect("needs the simulated page cache");
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    let mut written = fill(&wal, 15, 5, 100);
    sim.set_capacity_bytes(Some(sim.used_bytes() + 1500));
    let mut n = 0;
    let err = loop {
        let bytes = payload(16, n, 400);
        match wal.append_blocking(bytes.clone()) {
            Ok(lsn) => written.push((lsn, bytes)),
            Err(e) => break e,
        }
        n += 1;
        assert!(n < 1000, "the disk never filled up");
    };
    match &err {
        Error::Io {
            op, target, source, ..
        } => {
            assert!(*op == "write segment" || *op == "create segment", "{err}");
            assert!(target.contains("segment-"), "{err}");
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{err}");
        }
        other => panic!("expected Io(StorageFull), got {other}"),
    }
    assert!(!err.is_poisoned());
    let (last_lsn, last_bytes) = written.last().unwrap().clone();
    assert_eq!(
        wal.read(last_lsn).unwrap()[..],
        last_bytes[..],
        "reads still work"
    );
    sim.set_capacity_bytes(None);
    let lsn = wal.append_blocking(vec![8u8; 400]).unwrap();
    assert_eq!(lsn, last_lsn.next(), "the failed append gave its Lsn back");
    written.push((lsn, vec![8u8; 400]));
    drop(wal);
    let wal = backend.open(config).unwrap();
    assert_eq!(wal.recovery().verdict, Verdict::Clean);
    assert_records(&read_all(&wal), &written, backend.name());
}

pub fn crash_during_retention_leaves_a_contiguous_log(backend: &dyn Backend) {
    // Story: retention deletes old segments, oldest first, and the power fails part way
    // (here: a directory fsync fails, which poisons the log, then the power fails with a
    // seeded outcome for the unsynced deletions). The recovered log must be contiguous
    // (no hole where a younger segment vanished before an older one) and keep every
    // record at or after the retention point.
    let sim = backend.sim().expect("needs the simulated page cache");
    let base = seed(0x5EED_0003);
    for round in 0..10u64 {
        let seed = base.wrapping_add(round);
        let ctx = rerun(FILE, "crash_during_retention_leaves_a_contiguous_log", seed);
        let fresh = super::Sim {
            sim: wal::fs::SimDir::new(),
            preallocate: backend.preallocates(),
        };
        let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
        let wal = fresh.open(config).unwrap();
        let written = fill(&wal, seed, 80, 200);
        fresh.sim.fail_sync_dir_after(Some(seed % 4));
        let cut = Lsn::new(50);
        let result = wal.truncate_before(cut);
        drop(wal);
        let report = fresh.sim.crash(seed);
        let wal = fresh
            .open(config)
            .unwrap_or_else(|e| panic!("reopen ({report}, retention {result:?}): {e}; {ctx}"));
        let recovered = read_all(&wal);
        let first = recovered.first().unwrap().0;
        assert!(first <= cut, "{ctx}");
        assert_records(&recovered, &written[(first.get() - 1) as usize..], &ctx);
    }
    let _ = sim;
}

pub fn recycled_segments_never_resurface_after_power_loss(backend: &dyn Backend) {
    // Story: with preallocation, retention recycles retired segments: their files become
    // the next segments, still full of old records after the new header. The power fails
    // at a seeded moment while new records overwrite them. Recovery must return exactly a
    // prefix of the appended records, never a retired record, whatever survived.
    let sim = backend.sim().expect("needs the simulated page cache");
    let base = seed(0x5EED_0004);
    for round in 0..20u64 {
        let seed = base.wrapping_add(round);
        let ctx = rerun(
            FILE,
            "recycled_segments_never_resurface_after_power_loss",
            seed,
        );
        let fresh = super::Sim {
            sim: wal::fs::SimDir::new(),
            preallocate: true,
        };
        let config = small_segments(if seed % 2 == 0 {
            SyncPolicy::UnsafeNoSync
        } else {
            SyncPolicy::GROUP_COMMIT_DEFAULT
        });
        let wal = fresh.open(config).unwrap();
        let mut written = fill(&wal, seed, 40, 200);
        wal.sync_blocking().unwrap();
        wal.truncate_before(Lsn::new(35)).unwrap(); // retires (recycles) old segments
        for n in 0..(5 + seed % 30) {
            let bytes = payload(seed + 7, n, 200);
            written.push((wal.append_blocking(bytes.clone()).unwrap(), bytes));
        }
        let report = fresh.sim.crash(seed);
        drop(wal);
        let wal = fresh
            .open(config)
            .unwrap_or_else(|e| panic!("reopen ({report}): {e}; {ctx}"));
        let recovered = read_all(&wal);
        let first = recovered.first().map_or(wal.next_lsn(), |r| r.0);
        assert!(first <= Lsn::new(35), "{ctx}");
        let end = first.get() as usize - 1 + recovered.len();
        assert_records(
            &recovered,
            &written[first.get() as usize - 1..end],
            &format!("{report}; {ctx}"),
        );
    }
    let _ = sim;
}
