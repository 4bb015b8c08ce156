//! The WAL on an object store that misbehaves: puts and lists that fail, are delayed or
//! are dropped at seeded points, and puts whose acknowledgement is lost. The oracle, after
//! a recovery with the faults switched off: every acknowledged record is there with its
//! bytes, under the Lsn its append returned; Lsns are dense and unique; no record is
//! stored twice. And a store that stays down stops the writer with a clear error instead
//! of acknowledging what is not stored.
//!
//! Seeds: `FAULT_SEED=<n>` runs one seed instead of the default ones.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use tests::faults::{FaultyStore, Plan, Rates};
use tests::moto::Moto;
use wal::objstore::{ObjectClient, ObjectOptions, ObjectSegmentStore, RetryPolicy, StorageUrl};
use wal::{Config, Lsn, SyncPolicy, Wal};

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("FAULT_SEED") {
        Ok(v) => vec![v.parse().expect("FAULT_SEED is a u64")],
        Err(_) => default.to_vec(),
    }
}

/// Short timeouts, so dropped requests cost little; a generous total, so that seeded
/// faults are ridden out rather than fatal.
fn retry() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_millis(300),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        total_max: Duration::from_secs(20),
    }
}

fn config() -> Config {
    Config {
        segment_size_max_bytes: 256 << 10,
        record_size_max_bytes: 4096,
        sync_policy: SyncPolicy::GroupCommit {
            delay_us_max: 1000,
            bytes_max: 64 << 10,
        },
        ..Config::default()
    }
}

fn open(store: &Arc<dyn ObjectStore>, prefix: &Path, retry: RetryPolicy) -> wal::Result<Wal> {
    let client = ObjectClient::new(
        Arc::clone(store),
        prefix.clone(),
        format!("faulty://{prefix}"),
        retry,
    );
    Wal::open(Arc::new(ObjectSegmentStore::new(client)), config())
}

fn record(w: u64, n: u64) -> Vec<u8> {
    let mut out = format!("writer {w} record {n} ").into_bytes();
    out.resize(
        64 + ((w * 31 + n * 17) % 700) as usize,
        b'a' + (n % 26) as u8,
    );
    out
}

/// Appends from `writers` threads; returns what was acknowledged, by Lsn.
fn append_concurrently(wal: &Arc<Wal>, round: u64, writers: u64, each: u64) -> Vec<(Lsn, Vec<u8>)> {
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let wal = Arc::clone(wal);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0..each {
                    let bytes = record(round * 1000 + w, n);
                    if let Ok(lsn) = wal.append_blocking(bytes.clone()) {
                        acked.push((lsn, bytes));
                    }
                }
                acked
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// The oracle: every acknowledged record present under its Lsn, Lsns dense from 1, no
/// record twice.
fn check_recovered(wal: &Wal, acked: &BTreeMap<Lsn, Vec<u8>>, context: &str) {
    let mut seen = BTreeMap::new();
    let mut expected = Lsn::FIRST;
    for item in wal.iter_from(Lsn::FIRST).unwrap() {
        let (lsn, bytes) = item.unwrap();
        assert_eq!(lsn, expected, "{context}: Lsns not dense");
        expected = lsn.next();
        if let Some(prev) = seen.insert(bytes.to_vec(), lsn) {
            panic!("{context}: a record is stored twice, at Lsn {prev} and {lsn}");
        }
    }
    for (lsn, bytes) in acked {
        assert_eq!(
            seen.get(bytes),
            Some(lsn),
            "{context}: acknowledged record at Lsn {lsn} lost or moved"
        );
    }
}

fn plan(seed: u64) -> Plan {
    Plan {
        seed,
        puts: Rates {
            fail: 80,
            delay: 50,
            drop: 20,
            lost_ack: 80,
        },
        lists: Rates {
            fail: 200,
            delay: 100,
            drop: 50,
            lost_ack: 0,
        },
        delay: Duration::from_millis(40),
        puts_clean_first: 0,
    }
}

fn no_acknowledged_record_lost(inner: Arc<dyn ObjectStore>, seed: u64, label: &str) {
    let faulty = Arc::new(FaultyStore::new(inner, plan(seed)));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let prefix = Path::from(format!("faults-{label}-{seed}-{}", std::process::id()));
    let mut acked = BTreeMap::new();
    // Three incarnations, each recovering (lists under faults) and appending (puts under
    // faults) with 8 concurrent appenders.
    for round in 0..3 {
        let wal = Arc::new(open(&store, &prefix, retry()).unwrap_or_else(|e| {
            panic!("{label} seed {seed} round {round}: open under faults failed: {e}")
        }));
        check_recovered(&wal, &acked, &format!("{label} seed {seed} round {round}"));
        for (lsn, bytes) in append_concurrently(&wal, round, 8, 40) {
            assert!(
                acked.insert(lsn, bytes).is_none(),
                "Lsn {lsn} acknowledged twice"
            );
        }
    }
    let counts = faulty.counts();
    assert!(
        counts.failed > 0 && counts.lost_acks > 0 && counts.dropped + counts.delayed > 0,
        "{label} seed {seed}: the plan injected too little to test anything: {counts:?}"
    );
    assert!(
        acked.len() as u64 >= 3 * 8 * 40 * 9 / 10,
        "{label}: most appends succeed"
    );
    faulty.set_enabled(false);
    let wal = open(&store, &prefix, retry()).unwrap();
    check_recovered(&wal, &acked, &format!("{label} seed {seed}, faults off"));
    eprintln!(
        "{label} seed {seed}: {} records acknowledged; faults {counts:?}",
        acked.len()
    );
}

#[test]
fn no_acknowledged_record_is_lost_or_duplicated_under_faults_in_memory() {
    for seed in seeds(&[1, 2, 3]) {
        no_acknowledged_record_lost(Arc::new(InMemory::new()), seed, "memory");
    }
}

#[test]
fn no_acknowledged_record_is_lost_or_duplicated_under_faults_on_s3() {
    let Some(moto) = Moto::shared() else {
        return;
    };
    let url = StorageUrl::parse(&moto.fresh_url("faults")).unwrap();
    let options = ObjectOptions {
        s3: moto.s3_settings(),
        retry: retry(),
    };
    let client = url.connect(&options).unwrap();
    for seed in seeds(&[7]) {
        no_acknowledged_record_lost(Arc::clone(client.store()), seed, "s3");
    }
}

#[test]
fn lost_acknowledgements_are_recognised_not_written_twice() {
    // Every put loses its acknowledgement: each append's put lands, the client sees an
    // error, retries, finds the object with its own bytes, and resolves. One object per
    // group, no duplicates.
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(InMemory::new()),
        Plan {
            seed: 5,
            puts: Rates {
                lost_ack: 1000,
                ..Rates::default()
            },
            ..Plan::default()
        },
    ));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let prefix = Path::from("lost-acks");
    let client = ObjectClient::new(
        Arc::clone(&store),
        prefix.clone(),
        "faulty://lost-acks",
        retry(),
    );
    let wal = Wal::open(Arc::new(ObjectSegmentStore::new(client)), config()).unwrap();
    let mut acked = BTreeMap::new();
    for n in 0..50 {
        let bytes = record(0, n);
        acked.insert(wal.append_blocking(bytes.clone()).unwrap(), bytes);
    }
    assert_eq!(faulty.counts().lost_acks, 50);
    drop(wal);
    faulty.set_enabled(false);
    let wal = open(&store, &prefix, retry()).unwrap();
    check_recovered(&wal, &acked, "lost acks");
    assert_eq!(wal.last_lsn(), Some(Lsn::new(50)));
}

#[test]
fn a_store_that_stays_down_stops_the_writer_with_a_clear_error() {
    // The story: the object store goes down for longer than the retry bound. The pending
    // appends fail (never acknowledged), the error names the object, the attempts and the
    // bound, and the writer accepts nothing more, even after the store is back, until a
    // restart recovers by listing.
    let faulty = Arc::new(FaultyStore::new(Arc::new(InMemory::new()), Plan::default()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let prefix = Path::from("down");
    let bounded = RetryPolicy {
        total_max: Duration::from_millis(500),
        ..retry()
    };
    let wal = open(&store, &prefix, bounded).unwrap();
    let mut acked = BTreeMap::new();
    for n in 0..10 {
        let bytes = record(1, n);
        acked.insert(wal.append_blocking(bytes.clone()).unwrap(), bytes);
    }
    faulty.set_down(true);
    let started = Instant::now();
    let err = wal.append_blocking(record(1, 10)).unwrap_err();
    let took = started.elapsed();
    assert!(err.is_poisoned(), "{err}");
    let text = err.to_string();
    assert!(text.contains("segment-00000000000000000011.wal"), "{text}");
    assert!(text.contains("gave up after"), "{text}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(10),
        "retries are bounded by total_max: {took:?}"
    );
    faulty.set_down(false);
    let again = wal.append_blocking(record(1, 11)).unwrap_err();
    assert!(again.is_poisoned(), "the writer stops accepting: {again}");
    drop(wal);
    let wal = open(&store, &prefix, retry()).unwrap();
    check_recovered(&wal, &acked, "after the outage");
    assert_eq!(
        wal.last_lsn(),
        Some(Lsn::new(10)),
        "nothing unacknowledged was stored"
    );
    assert_eq!(
        wal.append_blocking(b"after restart".to_vec()).unwrap(),
        Lsn::new(11)
    );
}
