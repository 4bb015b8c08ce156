//! Behaviour of the log through its public API, run against every storage backend.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Backend, assert_records, payload, read_all, small_segments};
use wal::{Config, Error, Lsn, SyncPolicy, Wal};

for_each_store!(
    append_then_read_back,
    reopen_keeps_every_record_and_continues_the_lsns,
    segments_rotate_at_the_size_limit,
    record_over_the_limit_is_a_clear_error,
    reads_outside_the_log_say_why,
    truncate_before_deletes_only_whole_older_segments,
    iterator_starts_anywhere_and_follows_appends,
    concurrent_appenders_from_threads_share_syncs,
    concurrent_appenders_from_tokio_tasks,
    backpressure_bounds_appends_in_flight,
    second_writer_is_locked_out,
    read_only_open_changes_nothing,
    every_sync_policy_round_trips,
    empty_records_are_records,
    large_and_small_records_mix_across_segments,
);

fn append_then_read_back(backend: &dyn Backend) {
    let wal = backend
        .open(small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT))
        .unwrap();
    let mut written = Vec::new();
    for n in 0..200 {
        let bytes = payload(1, n, 300);
        let lsn = wal.append_blocking(bytes.clone()).unwrap();
        assert_eq!(lsn, Lsn::new(n + 1), "Lsns are dense from 1");
        written.push((lsn, bytes));
    }
    for (lsn, bytes) in &written {
        assert_eq!(
            &wal.read(*lsn).unwrap()[..],
            &bytes[..],
            "{}: read({lsn})",
            backend.name()
        );
    }
    assert_records(&read_all(&wal), &written, "");
    assert_eq!(wal.first_lsn(), Some(Lsn::new(1)));
    assert_eq!(wal.last_lsn(), Some(Lsn::new(200)));
    assert_eq!(wal.durable_lsn(), Some(Lsn::new(200)));
}

fn reopen_keeps_every_record_and_continues_the_lsns(backend: &dyn Backend) {
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let mut written = Vec::new();
    for round in 0..3u64 {
        let wal = backend.open(config).unwrap();
        assert_records(&read_all(&wal), &written, "round {round}: recovered log");
        assert_eq!(wal.recovery().verdict, wal::recovery::Verdict::Clean);
        for n in 0..30 {
            let bytes = payload(round, n, 100);
            let lsn = wal.append_blocking(bytes.clone()).unwrap();
            assert_eq!(lsn, Lsn::new(written.len() as u64 + 1));
            written.push((lsn, bytes));
        }
        wal.close().unwrap();
    }
    let wal = backend.open(config).unwrap();
    assert_records(&read_all(&wal), &written, "");
}

fn segments_rotate_at_the_size_limit(backend: &dyn Backend) {
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    for n in 0..100 {
        wal.append_blocking(payload(2, n, 200)).unwrap();
    }
    let segments = backend.segments();
    assert!(
        segments.len() > 5,
        "expected many 1 KiB segments, got {segments:?}"
    );
    for name in &segments {
        let len = backend.contents(name).len() as u64;
        assert!(
            len <= config.segment_size_max_bytes,
            "{name} is {len} bytes"
        );
    }
    assert_eq!(read_all(&wal).len(), 100);
}

fn record_over_the_limit_is_a_clear_error(backend: &dyn Backend) {
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    let err = wal.append_blocking(vec![0u8; 513]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RecordTooLarge {
                len_bytes: 513,
                max_bytes: 512
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("record_size_max_bytes"), "{err}");
    // Nothing was written and the log still works, from Lsn 1.
    assert_eq!(wal.append_blocking(vec![0u8; 512]).unwrap(), Lsn::new(1));
}

fn reads_outside_the_log_say_why(backend: &dyn Backend) {
    let wal = backend
        .open(small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT))
        .unwrap();
    let err = wal.read(Lsn::new(1)).unwrap_err();
    assert!(
        matches!(err, Error::LsnNotWritten { last: None, .. }),
        "{err}"
    );
    for n in 0..50 {
        wal.append_blocking(payload(3, n, 200)).unwrap();
    }
    let err = wal.read(Lsn::new(51)).unwrap_err();
    assert!(
        matches!(err, Error::LsnNotWritten { last: Some(l), .. } if l == Lsn::new(50)),
        "{err}"
    );
    wal.truncate_before(Lsn::new(30)).unwrap();
    let first = wal.first_lsn().unwrap();
    assert!(
        first > Lsn::new(1) && first <= Lsn::new(30),
        "first {first}"
    );
    let err = wal.read(Lsn::new(1)).unwrap_err();
    assert!(
        matches!(err, Error::LsnTruncated { first: Some(f), .. } if f == first),
        "{err}"
    );
    assert!(err.to_string().contains("retention"), "{err}");
}

fn truncate_before_deletes_only_whole_older_segments(backend: &dyn Backend) {
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    let mut written = Vec::new();
    for n in 0..120 {
        let bytes = payload(4, n, 150);
        written.push((wal.append_blocking(bytes.clone()).unwrap(), bytes));
    }
    let before = backend.segments().len();
    let cut = Lsn::new(77);
    let deleted = wal.truncate_before(cut).unwrap();
    assert!(deleted > 0 && deleted < before);
    assert_eq!(backend.segments().len(), before - deleted);
    // Every record at or after the cut is still there; whatever is older and still present
    // sits in the segment that also holds records >= cut.
    let first = wal.first_lsn().unwrap();
    assert!(first <= cut);
    let remaining = read_all(&wal);
    assert_records(
        &remaining,
        &written[(first.get() - 1) as usize..],
        "after retention",
    );
    // Retention never deletes the newest segment, even when asked to delete everything.
    wal.truncate_before(Lsn::new(10_000)).unwrap();
    assert_eq!(backend.segments().len(), 1);
    drop(wal);
    let wal = backend.open(config).unwrap();
    let next = wal.append_blocking(b"after retention".to_vec()).unwrap();
    assert_eq!(
        next,
        Lsn::new(121),
        "Lsns continue after retention and reopen"
    );
}

fn iterator_starts_anywhere_and_follows_appends(backend: &dyn Backend) {
    let wal = backend
        .open(small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT))
        .unwrap();
    let mut written = Vec::new();
    for n in 0..60 {
        let bytes = payload(5, n, 400);
        written.push((wal.append_blocking(bytes.clone()).unwrap(), bytes));
    }
    for start in [1u64, 2, 17, 33, 59, 60] {
        let got: Vec<_> = wal
            .iter_from(Lsn::new(start))
            .unwrap()
            .map(|r| r.map(|(l, b)| (l, b.to_vec())).unwrap())
            .collect();
        assert_eq!(got, written[(start - 1) as usize..], "iter_from({start})");
    }
    let mut iter = wal.iter_from(Lsn::new(60)).unwrap();
    assert_eq!(iter.next().unwrap().unwrap().0, Lsn::new(60));
    assert!(iter.next().is_none());
    let lsn = wal.append_blocking(b"later".to_vec()).unwrap();
    let (got, bytes) = iter.next().unwrap().unwrap();
    assert_eq!(
        (got, &bytes[..]),
        (lsn, &b"later"[..]),
        "an iterator follows later appends"
    );
}

fn concurrent_appenders_from_threads_share_syncs(backend: &dyn Backend) {
    if let Some(sim) = backend.sim() {
        // Syncs take time on a disk; that time is what lets concurrent appends join a group.
        sim.set_sync_latency(std::time::Duration::from_micros(300));
    }
    let config = Config {
        segment_size_max_bytes: 64 << 10,
        record_size_max_bytes: 4096,
        ..Config::default()
    };
    let wal = Arc::new(backend.open(config).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|w| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..100u64)
                    .map(|n| (wal.append_blocking(payload(w, n, 300)).unwrap(), w, n))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let lsns: BTreeSet<_> = results.iter().map(|r| r.0).collect();
    assert_eq!(lsns.len(), 800, "every append got its own Lsn");
    assert_eq!(lsns.first(), Some(&Lsn::new(1)));
    assert_eq!(lsns.last(), Some(&Lsn::new(800)));
    for (lsn, w, n) in results {
        assert_eq!(&wal.read(lsn).unwrap()[..], &payload(w, n, 300)[..]);
    }
    let syncs = wal.stats().syncs;
    assert!(
        syncs < 400,
        "8 concurrent appenders should share syncs: {syncs} syncs for 800"
    );
}

fn concurrent_appenders_from_tokio_tasks(backend: &dyn Backend) {
    let wal = Arc::new(
        backend
            .open(small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT))
            .unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let lsns = runtime.block_on(async {
        let tasks: Vec<_> = (0..32u64)
            .map(|w| {
                let wal = Arc::clone(&wal);
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for n in 0..10u64 {
                        out.push((wal.append(payload(w, n, 100)).await.unwrap(), w, n));
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    assert_eq!(lsns.iter().map(|r| r.0).collect::<BTreeSet<_>>().len(), 320);
    for (lsn, w, n) in lsns {
        assert_eq!(&wal.read(lsn).unwrap()[..], &payload(w, n, 100)[..]);
    }
}

fn backpressure_bounds_appends_in_flight(backend: &dyn Backend) {
    // Two appends in flight at most, two hundred appenders: everyone gets through, in
    // groups of at most two.
    let config = Config {
        appends_in_flight_max: 2,
        ..small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT)
    };
    let wal = Arc::new(backend.open(config).unwrap());
    let threads: Vec<_> = (0..20u64)
        .map(|w| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for n in 0..10 {
                    wal.append_blocking(payload(w, n, 50)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(wal.last_lsn(), Some(Lsn::new(200)));
    assert!(wal.stats().largest_group <= 2, "{:?}", wal.stats());
}

fn second_writer_is_locked_out(backend: &dyn Backend) {
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    let err = backend.open(config).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(wal);
    backend.open(config).unwrap();
}

fn read_only_open_changes_nothing(backend: &dyn Backend) {
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let wal = backend.open(config).unwrap();
    for n in 0..20 {
        wal.append_blocking(payload(6, n, 100)).unwrap();
    }
    let written = read_all(&wal);
    // A torn tail, as a crash would leave it (objects are never torn).
    let last = backend.segments().pop().unwrap();
    if !backend.atomic_segments() {
        backend.append_raw(&last, &[0x55; 7]);
    }
    let before: Vec<_> = backend
        .segments()
        .iter()
        .map(|s| backend.contents(s))
        .collect();
    // Read-only needs no lock, so it works while the writer is open.
    let reader = Wal::open_read_only(backend.store(), config).unwrap();
    assert_records(&read_all(&reader), &written, "");
    assert!(
        matches!(
            reader.recovery().verdict,
            wal::recovery::Verdict::TornTail { .. }
        ) || backend.atomic_segments(),
        "{}",
        reader.recovery().verdict
    );
    let err = reader.append_blocking(b"x".to_vec()).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    let after: Vec<_> = backend
        .segments()
        .iter()
        .map(|s| backend.contents(s))
        .collect();
    assert_eq!(before, after, "a read-only open must not modify anything");
}

fn every_sync_policy_round_trips(backend: &dyn Backend) {
    for (i, policy) in [
        SyncPolicy::EveryRecord,
        SyncPolicy::GroupCommit {
            delay_us_max: 0,
            bytes_max: 1,
        },
        SyncPolicy::GroupCommit {
            delay_us_max: 500,
            bytes_max: 1 << 20,
        },
        SyncPolicy::UnsafeNoSync,
    ]
    .into_iter()
    .enumerate()
    {
        let config = small_segments(policy);
        let wal = backend.open(config).unwrap();
        let start = wal.last_lsn().map_or(1, |l| l.get() + 1);
        for n in 0..40 {
            let lsn = wal.append_blocking(payload(i as u64, n, 120)).unwrap();
            assert_eq!(lsn, Lsn::new(start + n), "{policy:?}");
        }
        let durable = wal.sync_blocking().unwrap();
        assert_eq!(durable, Some(Lsn::new(start + 39)), "{policy:?}");
        wal.close().unwrap();
        let wal = backend.open(config).unwrap();
        for n in 0..40 {
            assert_eq!(
                &wal.read(Lsn::new(start + n)).unwrap()[..],
                &payload(i as u64, n, 120)[..]
            );
        }
    }
}

fn empty_records_are_records(backend: &dyn Backend) {
    let wal = backend
        .open(small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT))
        .unwrap();
    let a = wal.append_blocking(Vec::new()).unwrap();
    let b = wal.append_blocking(b"x".to_vec()).unwrap();
    let c = wal.append_blocking(Vec::new()).unwrap();
    assert_eq!((a, b, c), (Lsn::new(1), Lsn::new(2), Lsn::new(3)));
    drop(wal);
    let wal = backend
        .open(small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT))
        .unwrap();
    assert_eq!(
        read_all(&wal),
        vec![(a, vec![]), (b, b"x".to_vec()), (c, vec![])]
    );
}

fn large_and_small_records_mix_across_segments(backend: &dyn Backend) {
    // Payloads of 4 KiB and more are written without copying (vectored writes) and hashed
    // by the appending thread; smaller ones are copied. Mix both, concurrently, across
    // segment boundaries.
    let config = Config {
        segment_size_max_bytes: 96 << 10,
        record_size_max_bytes: 40 << 10,
        ..Config::default()
    };
    let wal = Arc::new(backend.open(config).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|w| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..40u64)
                    .map(|n| {
                        let len_max = if n % 3 == 0 { 40 << 10 } else { 600 };
                        let bytes = payload(w, n, len_max);
                        (wal.append_blocking(bytes.clone()).unwrap(), bytes)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    written.sort_by_key(|r| r.0);
    assert!(backend.segments().len() > 3);
    assert_records(&read_all(&wal), &written, backend.name());
    drop(wal);
    let wal = backend.open(config).unwrap();
    assert_eq!(wal.recovery().verdict, wal::recovery::Verdict::Clean);
    assert_records(&read_all(&wal), &written, backend.name());
}

#[test]
fn several_logs_in_one_process_are_independent() {
    let tmp = tempfile::tempdir().unwrap();
    let logs: Vec<_> = (0..4)
        .map(|i| {
            Arc::new(
                Wal::open_dir(tmp.path().join(format!("stream-{i}")), Config::default()).unwrap(),
            )
        })
        .collect();
    let threads: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(i, wal)| {
            let wal = Arc::clone(wal);
            std::thread::spawn(move || {
                for n in 0..50 {
                    wal.append_blocking(payload(i as u64, n, 64)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for (i, wal) in logs.iter().enumerate() {
        let all = read_all(wal);
        assert_eq!(all.len(), 50);
        for (n, (lsn, bytes)) in all.iter().enumerate() {
            assert_eq!(*lsn, Lsn::new(n as u64 + 1));
            assert_eq!(bytes, &payload(i as u64, n as u64, 64));
        }
    }
}

#[test]
fn invalid_config_is_refused_before_touching_storage() {
    let backend = common::Sim::new();
    let err = backend
        .open(Config {
            index_interval_bytes: 0,
            ..Config::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("index_interval_bytes"), "{err}");
    assert!(backend.segments().is_empty());
}

#[test]
fn preallocation_prepares_ahead_and_retention_recycles() {
    use wal::store::DirSegmentStore;
    let sim = wal::fs::SimDir::new();
    let config = small_segments(SyncPolicy::GROUP_COMMIT_DEFAULT);
    let store = Arc::new(DirSegmentStore::with_preallocation(
        Arc::new(sim.handle()),
        config.segment_size_max_bytes,
    ));
    let wal = Wal::open(
        Arc::clone(&store) as Arc<dyn wal::store::SegmentStore>,
        config,
    )
    .unwrap();
    assert!(
        store.wait_for_prepared(std::time::Duration::from_secs(30)),
        "nothing prepared"
    );
    let mut written = Vec::new();
    for n in 0..60 {
        let bytes = payload(9, n, 200);
        written.push((wal.append_blocking(bytes.clone()).unwrap(), bytes));
    }
    let before = store.stats();
    // Preparing starts when the writer takes the lock; whether a later segment found a
    // prepared file depends on how fast the preparing thread runs, but the first did.
    assert!(
        before.zero_filled_bytes > 0 && before.segments_preallocated > 0,
        "{before:?}"
    );
    assert_eq!(
        before.segments_preallocated + before.segments_appended,
        wal.stats().segments_created
    );
    wal.truncate_before(Lsn::new(50)).unwrap();
    let after = store.stats();
    assert!(
        after.segments_recycled >= 1,
        "retention recycled nothing: {after:?}"
    );
    for n in 60..120 {
        let bytes = payload(9, n, 200);
        written.push((wal.append_blocking(bytes.clone()).unwrap(), bytes));
    }
    assert!(
        store.stats().segments_preallocated > before.segments_preallocated,
        "{:?}",
        store.stats()
    );
    let first = wal.first_lsn().unwrap();
    assert_records(
        &read_all(&wal),
        &written[(first.get() - 1) as usize..],
        "after recycling",
    );
    // Sealed segments end exactly after their last record: no zeros, no retired records.
    drop(wal);
    let reopened = Wal::open(
        Arc::new(DirSegmentStore::new(Arc::new(sim.handle()))),
        config,
    )
    .unwrap();
    assert_eq!(reopened.recovery().verdict, wal::recovery::Verdict::Clean);
    assert_records(
        &read_all(&reopened),
        &written[(first.get() - 1) as usize..],
        "after reopen",
    );
}
