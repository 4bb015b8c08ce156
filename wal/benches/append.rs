//! Durable append throughput and latency, side by side: Ember's WAL, a raw `write` +
//! `fdatasync` loop on the same disk, and okaywal; plus the recovery scan speed.
//!
//! ```text
//! cargo bench -p wal --bench append                        # the full table
//! cargo bench -p wal --bench append -- --reps 3 --sizes 1024 --appenders 1,64 --scan-mib 0
//! ```
//!
//! Options: `--duration-ms N` (measured time per slice, default 1000), `--warmup-ms N`
//! (200), `--reps N` (slices per cell and system, 5), `--sizes 100,1024,65536`,
//! `--appenders 1,4,16,64`, `--systems ember,ember+retention,raw,raw-prealloc,okaywal`,
//! `--scan-mib N` (1024; 0 skips the scan), `--dir PATH` (default: cargo's target tmp
//! dir, on the same disk as the build).
//!
//! What is measured, per record size and number of concurrent appenders N:
//! - **ember**: N threads call `Wal::append_blocking` in a loop on a log opened like
//!   `Wal::open_dir` (default config: 64 MiB preallocated segments, group commit): every
//!   append returns only after an `fdatasync` covering it. Measured in steady state: a
//!   slice starts once the first preallocated segment is ready. The log only grows, so
//!   every new segment is zero-filled ahead of use.
//! - **ember-async**: the same log, with N tokio tasks on a 2-worker runtime awaiting
//!   `Wal::append` instead of N threads (how the engine appends): no appender ever leads
//!   a commit (rule 12), the writer thread does, and waking a task is cheaper than waking
//!   a thread.
//! - **ember+retention**: the same, with a thread calling `truncate_before(last_lsn)` every
//!   20 ms, as an engine's checkpoints do: retired segments are recycled as the next
//!   segments instead of zero-filling new ones.
//! - **raw**: the physical limit of group commit with N appenders on an appended file: one
//!   thread appends N records with one `write(2)` and then calls `fdatasync(2)`, in a loop.
//!   Each record's latency is its batch's write + sync time. With N = 1 this is the plain
//!   write-and-sync-every-record loop.
//! - **raw-prealloc**: the same loop overwriting a zero-filled, synced 64 MiB file in a
//!   ring (`pwrite` + `fdatasync`), so no sync has to commit a new file length: the
//!   physical limit for a log that preallocates.
//! - **okaywal**: N threads each `begin_entry` / `write_chunk` / `commit` (its commit
//!   returns after its batched `fdatasync`; it preallocates and recycles its files).
//!
//! The machine is shared and noisy, so each cell runs every system in short slices,
//! round-robin with the order rotated every repetition, and the table reports the median
//! of the slices' throughputs and latencies, and the best slice's throughput: interference
//! from other processes only ever slows a slice down, so the best slice estimates what a
//! system does on a quiet disk, and the median what it did in this run.
#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark's job is to print a table

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use wal::store::{DirSegmentStore, SegmentStore};
use wal::{Config, SyncPolicy, Wal};

#[derive(Clone, Debug)]
struct Options {
    duration: Duration,
    warmup: Duration,
    reps: usize,
    sizes: Vec<usize>,
    appenders: Vec<usize>,
    systems: Vec<String>,
    scan_mib: u64,
    dir: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(200),
        reps: 5,
        sizes: vec![100, 1024, 65536],
        appenders: vec![1, 4, 16, 64],
        systems: [
            "ember",
            "ember-async",
            "ember+retention",
            "raw",
            "raw-prealloc",
            "okaywal",
        ]
        .map(str::to_owned)
        .to_vec(),
        scan_mib: 1024,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wal-bench"),
    };
    for (flag, value) in common::args() {
        let f = flag.as_str();
        match f {
            "--duration-ms" => o.duration = common::millis(f, &value),
            "--warmup-ms" => o.warmup = common::millis(f, &value),
            "--reps" => o.reps = common::number(f, &value),
            "--sizes" => o.sizes = common::list(f, &value),
            "--appenders" => o.appenders = common::list(f, &value),
            "--systems" => o.systems = value.split(',').map(str::to_owned).collect(),
            "--scan-mib" => o.scan_mib = common::number(f, &value),
            "--dir" => o.dir = PathBuf::from(value),
            _ => common::unknown(f),
        }
    }
    o
}

/// One slice of one system on one cell.
#[derive(Clone, Debug, Default)]
struct Sample {
    appends_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// Average records per sync, where known.
    records_per_sync: Option<f64>,
}

/// Runs `op` on `threads` threads for warmup + duration; measures the ops that start after
/// the warmup and finish before the deadline.
fn drive(threads: usize, o: &Options, op: Arc<dyn Fn(usize) + Send + Sync>) -> (f64, Vec<u32>) {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (barrier, op) = (Arc::clone(&barrier), Arc::clone(&op));
            let (warmup, duration) = (o.warmup, o.duration);
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(1 << 16);
                barrier.wait();
                let start = Instant::now();
                let (measure_from, deadline) = (start + warmup, start + warmup + duration);
                loop {
                    let t0 = Instant::now();
                    op(t);
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
    let rate = all.len() as f64 / o.duration.as_secs_f64();
    (rate, all)
}

/// Like `drive`, with `tasks` tokio tasks on a 2-worker runtime awaiting `Wal::append`.
fn drive_tasks(tasks: usize, o: &Options, wal: Arc<Wal>, payload: bytes::Bytes) -> (f64, Vec<u32>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (warmup, duration) = (o.warmup, o.duration);
    let all = runtime.block_on(async move {
        let start = Instant::now();
        let (measure_from, deadline) = (start + warmup, start + warmup + duration);
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (wal, payload) = (Arc::clone(&wal), payload.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(1 << 14);
                    loop {
                        let t0 = Instant::now();
                        wal.append(payload.clone()).await.unwrap();
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
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    });
    let rate = all.len() as f64 / o.duration.as_secs_f64();
    (rate, all)
}

fn percentiles(mut latencies: Vec<u32>) -> (f64, f64) {
    if latencies.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    latencies.sort_unstable();
    let at = |q: f64| f64::from(latencies[((latencies.len() - 1) as f64 * q).round() as usize]);
    (at(0.50), at(0.99))
}

fn fresh_dir(o: &Options, name: &str) -> PathBuf {
    let dir = o.dir.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ember(o: &Options, size: usize, appenders: usize) -> Sample {
    ember_run(o, size, appenders, false, false)
}

fn ember_async(o: &Options, size: usize, appenders: usize) -> Sample {
    ember_run(o, size, appenders, false, true)
}

fn ember_retention(o: &Options, size: usize, appenders: usize) -> Sample {
    ember_run(o, size, appenders, true, false)
}

fn ember_run(o: &Options, size: usize, appenders: usize, retention: bool, tasks: bool) -> Sample {
    let dir = fresh_dir(o, "ember");
    let config = Config {
        record_size_max_bytes: 1 << 20,
        ..Config::default()
    };
    let local = Arc::new(wal::fs::LocalDir::open(&dir).unwrap());
    let store = Arc::new(DirSegmentStore::with_preallocation(
        local,
        config.segment_size_max_bytes,
    ));
    let wal = Arc::new(Wal::open(Arc::clone(&store) as Arc<dyn SegmentStore>, config).unwrap());
    // Steady state: the first segment is in use and the next one is prepared, as in a
    // long-running log (where preparing happens once per segment, not at every start).
    store.wait_for_prepared(Duration::from_secs(20));
    wal.append_blocking(bytes::Bytes::from_static(b"warm-up"))
        .unwrap();
    store.wait_for_prepared(Duration::from_secs(20));
    let stop = Arc::new(AtomicBool::new(false));
    let retainer = retention.then(|| {
        let (wal, stop) = (Arc::clone(&wal), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(last) = wal.last_lsn() {
                    wal.truncate_before(last).unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    let payload = bytes::Bytes::from(vec![0xA5u8; size]);
    let (rate, latencies) = if tasks {
        drive_tasks(appenders, o, Arc::clone(&wal), payload)
    } else {
        let op = {
            let wal = Arc::clone(&wal);
            Arc::new(move |_t: usize| {
                wal.append_blocking(payload.clone()).unwrap();
            })
        };
        drive(appenders, o, op)
    };
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = retainer {
        t.join().unwrap();
    }
    let stats = wal.stats();
    let store_stats = store.stats();
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "      ({} syncs, {} segments: {} preallocated, {} appended, {} recycled; {} MiB zero-filled)",
        stats.syncs,
        stats.segments_created,
        store_stats.segments_preallocated,
        store_stats.segments_appended,
        store_stats.segments_recycled,
        store_stats.zero_filled_bytes >> 20
    );
    let (p50, p99) = percentiles(latencies);
    Sample {
        appends_per_sec: rate,
        p50_us: p50,
        p99_us: p99,
        records_per_sync: Some(stats.records as f64 / stats.syncs.max(1) as f64),
    }
}

fn raw(o: &Options, size: usize, appenders: usize) -> Sample {
    let dir = fresh_dir(o, "raw");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .unwrap();
    let batch = vec![0xA5u8; size * appenders];
    let file = std::sync::Mutex::new(file);
    let op = Arc::new(move |_t: usize| {
        let mut f = file.lock().unwrap();
        f.write_all(&batch).unwrap();
        f.sync_data().unwrap();
    });
    // One thread; each op carries `appenders` records.
    let (batches_per_sec, latencies) = drive(1, o, op);
    let _ = std::fs::remove_dir_all(&dir);
    let (p50, p99) = percentiles(latencies);
    Sample {
        appends_per_sec: batches_per_sec * appenders as f64,
        p50_us: p50,
        p99_us: p99,
        records_per_sync: Some(appenders as f64),
    }
}

fn raw_prealloc(o: &Options, size: usize, appenders: usize) -> Sample {
    use std::os::unix::fs::FileExt;
    const RING_BYTES: u64 = 64 << 20;
    let dir = fresh_dir(o, "raw-prealloc");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw.log"))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for i in 0..(RING_BYTES / zeros.len() as u64) {
        file.write_all_at(&zeros, i * zeros.len() as u64).unwrap();
    }
    file.sync_data().unwrap();
    let batch = vec![0xA5u8; size * appenders];
    let state = std::sync::Mutex::new((file, 0u64));
    let op = Arc::new(move |_t: usize| {
        let mut guard = state.lock().unwrap();
        let (file, offset) = &mut *guard;
        if *offset + batch.len() as u64 > RING_BYTES {
            *offset = 0;
        }
        file.write_all_at(&batch, *offset).unwrap();
        file.sync_data().unwrap();
        *offset += batch.len() as u64;
    });
    let (batches_per_sec, latencies) = drive(1, o, op);
    let _ = std::fs::remove_dir_all(&dir);
    let (p50, p99) = percentiles(latencies);
    Sample {
        appends_per_sec: batches_per_sec * appenders as f64,
        p50_us: p50,
        p99_us: p99,
        records_per_sync: Some(appenders as f64),
    }
}

fn okaywal(o: &Options, size: usize, appenders: usize) -> Sample {
    let dir = fresh_dir(o, "okaywal");
    let log = okaywal::WriteAheadLog::recover(&dir, okaywal::LogVoid).unwrap();
    let payload = vec![0xA5u8; size];
    let op = {
        let log = log.clone();
        Arc::new(move |_t: usize| {
            let mut entry = log.begin_entry().unwrap();
            entry.write_chunk(&payload).unwrap();
            entry.commit().unwrap();
        })
    };
    let (rate, latencies) = drive(appenders, o, op);
    log.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (p50, p99) = percentiles(latencies);
    Sample {
        appends_per_sec: rate,
        p50_us: p50,
        p99_us: p99,
        records_per_sync: None,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        f64::NAN
    } else {
        values[values.len() / 2]
    }
}

/// Writes a log of about `scan_mib` MiB (no syncs, it is only being built), then times
/// opening it: listing, mapping, checking every record and building the index. The log is
/// in the page cache, having just been written.
fn recovery_scan(o: &Options) -> Option<Vec<(usize, f64, f64)>> {
    if o.scan_mib == 0 {
        return None;
    }
    let mut results = Vec::new();
    for record_len in [1024usize, 64 << 10] {
        let dir = fresh_dir(o, "scan");
        let config = Config {
            record_size_max_bytes: 1 << 20,
            sync_policy: SyncPolicy::UnsafeNoSync,
            ..Config::default()
        };
        let records = (o.scan_mib << 20) / (record_len as u64 + 16);
        {
            let wal = Wal::open_dir(&dir, config).unwrap();
            let payload = bytes::Bytes::from(vec![0x5Au8; record_len]);
            for _ in 0..records {
                wal.append_blocking(payload.clone()).unwrap();
            }
            wal.close().unwrap();
        }
        let bytes_on_disk = dir_bytes(&dir);
        let mut rates = Vec::new();
        for _ in 0..o.reps.max(3) {
            let started = Instant::now();
            let wal = Wal::open_dir(&dir, config).unwrap();
            let elapsed = started.elapsed();
            assert_eq!(wal.last_lsn().unwrap().get(), records);
            drop(wal);
            rates.push(bytes_on_disk as f64 / elapsed.as_secs_f64() / 1e9);
        }
        eprintln!("  scan {record_len} B records: {rates:.2?} GB/s");
        results.push((record_len, median(rates), bytes_on_disk as f64 / 1e9));
        let _ = std::fs::remove_dir_all(&dir);
    }
    Some(results)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Bytes of the log's segment files (prepared files excluded).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| DirSegmentStore::parse_file_name(&e.file_name().to_string_lossy()).is_some())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

type Runner = fn(&Options, usize, usize) -> Sample;

fn main() {
    let o = options();
    std::fs::create_dir_all(&o.dir).unwrap();
    eprintln!("wal append benchmark: {o:?}");
    let runners: Vec<(&str, Runner)> = [
        ("ember", ember as Runner),
        ("ember-async", ember_async),
        ("ember+retention", ember_retention),
        ("raw", raw),
        ("raw-prealloc", raw_prealloc),
        ("okaywal", okaywal),
    ]
    .into_iter()
    .filter(|(name, _)| o.systems.iter().any(|s| s == name))
    .collect();
    let cells: Vec<(usize, usize)> = o
        .sizes
        .iter()
        .flat_map(|&s| o.appenders.iter().map(move |&a| (s, a)))
        .collect();
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); runners.len()]; cells.len()];
    eprintln!("load average at start: {}", load_average());
    for rep in 0..o.reps {
        for (c, &(size, appenders)) in cells.iter().enumerate() {
            // Rotate the order every repetition, so no system always runs first.
            for k in 0..runners.len() {
                let r = (k + rep) % runners.len();
                let (name, run) = runners[r];
                let s = run(&o, size, appenders);
                eprintln!(
                    "rep {rep} {size:>6} B x {appenders:>2} {name:<16} {:>9.0}/s p50 {:>7.0} us p99 {:>7.0} us{}",
                    s.appends_per_sec,
                    s.p50_us,
                    s.p99_us,
                    s.records_per_sync
                        .map_or(String::new(), |g| format!(" ({g:.1} records/sync)"))
                );
                samples[c][r].push(s);
            }
        }
    }
    eprintln!("load average at end: {}", load_average());

    println!();
    println!(
        "Medians of {} slices of {:?} each, per cell and system.",
        o.reps, o.duration
    );
    println!();
    println!(
        "| record | appenders | system | appends/s (median) | best | MB/s | p50 µs | p99 µs | records/sync | vs raw | vs raw-prealloc | vs okaywal | best vs okaywal |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut summary: Vec<((usize, usize, &str), f64)> = Vec::new();
    let mut best_summary: Vec<((usize, usize, &str), f64)> = Vec::new();
    for (c, &(size, appenders)) in cells.iter().enumerate() {
        let rate_of = |r: usize| median(samples[c][r].iter().map(|s| s.appends_per_sec).collect());
        let best_of = |r: usize| {
            samples[c][r]
                .iter()
                .map(|s| s.appends_per_sec)
                .fold(0.0, f64::max)
        };
        let index_of = |name: &str| runners.iter().position(|(n, _)| *n == name);
        for (r, (name, _)) in runners.iter().enumerate() {
            let rate = rate_of(r);
            let p50 = median(samples[c][r].iter().map(|s| s.p50_us).collect());
            let p99 = median(samples[c][r].iter().map(|s| s.p99_us).collect());
            let per_sync: Vec<f64> = samples[c][r]
                .iter()
                .filter_map(|s| s.records_per_sync)
                .collect();
            let per_sync = if per_sync.is_empty() {
                String::new()
            } else {
                format!("{:.1}", median(per_sync))
            };
            let best = best_of(r);
            let ratio = |other: Option<usize>| match other {
                Some(o) if name.starts_with("ember") => format!("{:.2}x", rate / rate_of(o)),
                _ => String::new(),
            };
            let best_ratio = match index_of("okaywal") {
                Some(o) if name.starts_with("ember") => format!("{:.2}x", best / best_of(o)),
                _ => String::new(),
            };
            println!(
                "| {size} B | {appenders} | {name} | {rate:.0} | {best:.0} | {:.1} | {p50:.0} | {p99:.0} | {per_sync} | {} | {} | {} | {best_ratio} |",
                rate * size as f64 / 1e6,
                ratio(index_of("raw")),
                ratio(index_of("raw-prealloc")),
                ratio(index_of("okaywal")),
            );
            summary.push(((size, appenders, name), rate));
            best_summary.push(((size, appenders, name), best));
        }
    }
    for (label, table) in [("median", &summary), ("best slice", &best_summary)] {
        let rate = |size: usize, appenders: usize, name: &str| {
            table
                .iter()
                .find(|((s, a, n), _)| *s == size && *a == appenders && *n == name)
                .map(|x| x.1)
        };
        println!();
        for ember in ["ember", "ember-async", "ember+retention"] {
            if let (Some(one), Some(many)) = (rate(1024, 1, "ember"), rate(1024, 64, ember)) {
                println!(
                    "target ({label}, {ember}): 64 appenders of 1 KiB >= 20x one (blocking) appender: {:.1}x",
                    many / one
                );
            }
            for &a in &o.appenders {
                let raw = ["raw", "raw-prealloc"]
                    .iter()
                    .filter_map(|n| rate(65536, a, n))
                    .reduce(f64::max);
                if let (Some(e), Some(r)) = (rate(65536, a, ember), raw) {
                    println!(
                        "target ({label}, {ember}): 64 KiB x {a}: >= 80% of the better raw loop's bandwidth: {:.0}% ({:.0} vs {:.0} MB/s)",
                        100.0 * e / r,
                        e * 65536.0 / 1e6,
                        r * 65536.0 / 1e6
                    );
                }
            }
            let rows: Vec<_> = table.iter().filter(|((_, _, n), _)| *n == ember).collect();
            let beaten = rows
                .iter()
                .filter(|((s, a, _), e)| rate(*s, *a, "okaywal").is_some_and(|k| *e >= k))
                .count();
            if !rows.is_empty() {
                println!(
                    "target ({label}, {ember}): at least okaywal's throughput on every row: {beaten} of {} rows",
                    rows.len()
                );
            }
        }
    }

    if let Some(scan) = recovery_scan(&o) {
        println!();
        println!(
            "| recovery scan (open: map, check every record, index) | log size | GB/s (median) |"
        );
        println!("|---|---:|---:|");
        for (record_len, gbps, gb) in scan {
            println!("| {record_len} B records, from page cache | {gb:.2} GB | {gbps:.2} |");
        }
    }
}
