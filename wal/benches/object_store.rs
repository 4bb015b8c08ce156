//! The WAL on an S3-compatible server (moto, started on 127.0.0.1 by the benchmark) next
//! to the local-disk WAL, in the same run: append throughput and latency for 1, 16 and 64
//! concurrent appenders; requests per appended MiB, against one object per record; and
//! recovery time of a log of `--recovery-mib` MiB of segment objects.
//!
//! ```text
//! cargo bench -p wal --bench object_store                  # the full table
//! cargo bench -p wal --bench object_store -- --reps 3 --appenders 1,16,64,256 --recovery-mib 1024
//! ```
//!
//! Options: `--duration-ms N` (measured time per slice, 2000), `--warmup-ms N` (300),
//! `--reps N` (slices per cell and system, 3), `--size N` (record bytes, 1024),
//! `--appenders 1,16,64`, `--recovery-mib N` (1024; 0 skips), `--dir PATH` (local WAL).
//! Needs moto: `scripts/install-deps` (or `EMBER_TEST_DEPS` pointing at its venv).
//!
//! Systems, per number of appenders N (each thread calls `Wal::append_blocking` in a
//! loop; an append returns only once durable):
//! - **local**: `Wal::open_dir` (preallocated segments, group commit, `fdatasync`);
//! - **s3**: `Wal::open_url("s3://...")` on moto, default config: one object per group
//!   commit, created with a conditional put; an append returns after its put's answer;
//! - **s3-per-record**: the same with `SyncPolicy::EveryRecord`, i.e. one object per
//!   record: what a store without group commit pays (Spark's `closeFileAfterWrite`).
//!
//! Requests per MiB count every request the WAL made (puts, gets, lists, deletes) over the
//! MiB of record payload appended. moto is a Python server on the same 2 cores, so its
//! absolute speed says little about S3; the ratios (requests per MiB, s3 against
//! s3-per-record) carry over.
#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark's job is to print a table

mod common;
#[allow(dead_code)] // the shared fixture; not every test file uses all of it
#[path = "../../tests/src/moto.rs"]
mod moto;

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use wal::objstore::{ObjectOptions, ObjectSegmentStore, StorageUrl};
use wal::{Config, SyncPolicy, Wal};

#[derive(Clone, Debug)]
struct Options {
    duration: Duration,
    warmup: Duration,
    reps: usize,
    size: usize,
    appenders: Vec<usize>,
    recovery_mib: u64,
    dir: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        duration: Duration::from_millis(2000),
        warmup: Duration::from_millis(300),
        reps: 3,
        size: 1024,
        appenders: vec![1, 16, 64],
        recovery_mib: 1024,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("object-store-bench"),
    };
    for (flag, value) in common::args() {
        let f = flag.as_str();
        match f {
            "--duration-ms" => o.duration = common::millis(f, &value),
            "--warmup-ms" => o.warmup = common::millis(f, &value),
            "--reps" => o.reps = common::number(f, &value),
            "--size" => o.size = common::number(f, &value),
            "--appenders" => o.appenders = common::list(f, &value),
            "--recovery-mib" => o.recovery_mib = common::number(f, &value),
            "--dir" => o.dir = PathBuf::from(&value),
            _ => common::unknown(f),
        }
    }
    o
}

/// Runs `op` on `threads` threads for warmup + duration; returns appends/s and the
/// latencies (us) of the measured appends.
fn drive(threads: usize, o: &Options, wal: &Arc<Wal>) -> (f64, Vec<u32>) {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let payload = bytes::Bytes::from(vec![0x5Au8; o.size]);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, wal, payload) = (Arc::clone(&barrier), Arc::clone(wal), payload.clone());
            let (warmup, duration) = (o.warmup, o.duration);
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(1 << 14);
                barrier.wait();
                let start = Instant::now();
                let (measure_from, deadline) = (start + warmup, start + warmup + duration);
                loop {
                    let t0 = Instant::now();
                    wal.append_blocking(payload.clone()).unwrap();
                    let t1 = Instant::now();
                    if t0 >= measure_from && t1 <= deadline {
                        latencies.push((t1 - t0).as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    if t1 >= deadline {
                        break;
                    }
                }
                latencies
            })
        })
        .collect();
    barrier.wait();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    (all.len() as f64 / o.duration.as_secs_f64(), all)
}

fn percentiles(mut latencies: Vec<u32>) -> (f64, f64) {
    if latencies.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    latencies.sort_unstable();
    let at = |q: f64| f64::from(latencies[((latencies.len() - 1) as f64 * q).round() as usize]);
    (at(0.50), at(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Sample {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Requests per MiB of payload (object stores only).
    requests_per_mib: Option<f64>,
}

fn s3_options(moto: &moto::Moto) -> ObjectOptions {
    ObjectOptions {
        s3: moto.s3_settings(),
        ..ObjectOptions::default()
    }
}

fn run(system: &str, o: &Options, appenders: usize, moto: &moto::Moto) -> Sample {
    let config = Config {
        sync_policy: if system == "s3-per-record" {
            SyncPolicy::EveryRecord
        } else {
            SyncPolicy::GROUP_COMMIT_DEFAULT
        },
        ..Config::default()
    };
    let (wal, store) = if system == "local" {
        let dir = o.dir.join(format!("local-{appenders}"));
        let _ = std::fs::remove_dir_all(&dir);
        (Wal::open_dir(&dir, config).unwrap(), None)
    } else {
        let url = StorageUrl::parse(&moto.fresh_url(system)).unwrap();
        let store = Arc::new(ObjectSegmentStore::new(
            url.connect(&s3_options(moto)).unwrap(),
        ));
        (Wal::open(store.clone(), config).unwrap(), Some(store))
    };
    let wal = Arc::new(wal);
    let before = store.as_ref().map(|s| s.client().stats());
    let (rate, latencies) = drive(appenders, o, &wal);
    let records = wal.stats().records;
    let requests_per_mib = store.as_ref().zip(before).map(|(s, before)| {
        let after = s.client().stats();
        let requests = (after.puts + after.gets + after.lists + after.deletes)
            - (before.puts + before.gets + before.lists + before.deletes);
        requests as f64 / (records as f64 * o.size as f64 / f64::from(1 << 20))
    });
    drop(wal);
    if system == "local" {
        let _ = std::fs::remove_dir_all(o.dir.join(format!("local-{appenders}")));
    }
    let (p50_us, p99_us) = percentiles(latencies);
    Sample {
        rate,
        p50_us,
        p99_us,
        requests_per_mib,
    }
}

/// Writes `mib` MiB of segment objects (64 appenders of 64 KiB records, so objects of a
/// few MiB), then times opening the log (list, read ahead, scan every CRC) and reading
/// every record.
fn recovery(o: &Options, moto: &moto::Moto) -> (u64, u64, f64, f64) {
    let url = StorageUrl::parse(&moto.fresh_url("recovery")).unwrap();
    let options = s3_options(moto);
    let config = Config::default();
    let wal = Arc::new(Wal::open_url(&url, &options, config).unwrap());
    let record = bytes::Bytes::from(vec![0xA5u8; 64 << 10]);
    let target = o.recovery_mib << 20;
    let per_thread = target / (64 << 10) / 16 + 1;
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (wal, record) = (Arc::clone(&wal), record.clone());
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    wal.append_blocking(record.clone()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(wal);
    let started = Instant::now();
    let wal = Wal::open_url(&url, &options, config).unwrap();
    let open_s = started.elapsed().as_secs_f64();
    let bytes: u64 = wal.recovery().segments.iter().map(|s| s.len_bytes).sum();
    let objects = wal.recovery().segments.len() as u64;
    let started = Instant::now();
    let mut n = 0u64;
    for item in wal.iter_from(wal::Lsn::FIRST).unwrap() {
        item.unwrap();
        n += 1;
    }
    let read_s = started.elapsed().as_secs_f64();
    assert_eq!(n, 16 * per_thread);
    (bytes, objects, open_s, read_s)
}

fn main() {
    let o = options();
    let Some(moto) = moto::Moto::shared() else {
        println!("moto is not installed: run scripts/install-deps first");
        return;
    };
    println!(
        "# WAL on moto S3 vs local disk: {} B records, {} x {:?} slices per cell (after {:?} warm-up), medians",
        o.size, o.reps, o.duration, o.warmup
    );
    println!(
        "| appenders | system | appends/s (median) | MiB/s | p50 ms | p99 ms | requests per MiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    let systems = ["local", "s3", "s3-per-record"];
    for &n in &o.appenders {
        let mut samples: Vec<Vec<Sample>> = systems.iter().map(|_| Vec::new()).collect();
        for rep in 0..o.reps {
            for k in 0..systems.len() {
                let i = (k + rep) % systems.len();
                samples[i].push(run(systems[i], &o, n, moto));
            }
        }
        for (system, s) in systems.iter().zip(samples) {
            let rate = median(s.iter().map(|x| x.rate).collect());
            let p50 = median(s.iter().map(|x| x.p50_us).collect()) / 1000.0;
            let p99 = median(s.iter().map(|x| x.p99_us).collect()) / 1000.0;
            let rpm = s
                .iter()
                .filter_map(|x| x.requests_per_mib)
                .collect::<Vec<_>>();
            let rpm = if rpm.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", median(rpm))
            };
            println!(
                "| {n} | {system} | {rate:.0} | {:.2} | {p50:.2} | {p99:.2} | {rpm} |",
                rate * o.size as f64 / f64::from(1 << 20)
            );
        }
    }
    if o.recovery_mib > 0 {
        let (bytes, objects, open_s, read_s) = recovery(&o, moto);
        println!(
            "\nrecovery: {:.0} MiB in {objects} objects: open (list, read ahead, verify every CRC) {open_s:.2} s = {:.0} MiB/s; then reading every record {read_s:.2} s",
            bytes as f64 / f64::from(1 << 20),
            bytes as f64 / f64::from(1 << 20) / open_s
        );
    }
}
