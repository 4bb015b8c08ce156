//! Put throughput and latency of the replicated block store, against real `ember executor`
//! processes on loopback, beside a local-only put.
//!
//! ```text
//! cargo bench -p blockstore --bench replication [-- --rounds 5 --mib 512 --window-mib 64 --sizes 64K,1M,4M --concurrency 1,4]
//! ```
//!
//! Every round runs every configuration once, in the same order, so the configurations
//! share the machine's noise; the table shows medians over rounds. A put is timed from the
//! received bytes to the resolved `put` (block creation and its checksum included, since
//! a receiver pays for them too). CPU columns are the CPU seconds the driver (this
//! process) and the executors spent per GiB put, read from /proc: they say where the time
//! goes when the wall-clock figures alone do not.
//!
//! The `ember` binary is built in release mode first (or taken from `EMBER_BIN`).

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockstore::{Block, BlockId, Config, ReplicatedStore};
use bytes::Bytes;

struct Options {
    rounds: usize,
    mib: usize,
    window_mib: usize,
    sizes: Vec<usize>,
    concurrency: Vec<usize>,
}

fn parse_size(s: &str) -> usize {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix('K') {
        (n, 1 << 10)
    } else if let Some(n) = s.strip_suffix('M') {
        (n, 1 << 20)
    } else {
        (s, 1)
    };
    num.parse::<usize>().expect("size like 64K, 1M or 4096") * mul
}

fn options() -> Options {
    let mut o = Options {
        rounds: 5,
        mib: 512,
        window_mib: 64,
        sizes: vec![64 << 10, 1 << 20, 4 << 20],
        concurrency: vec![1, 4],
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--rounds" => o.rounds = value.parse().unwrap(),
            "--mib" => o.mib = value.parse().unwrap(),
            "--window-mib" => o.window_mib = value.parse().unwrap(),
            "--sizes" => o.sizes = value.split(',').map(parse_size).collect(),
            "--concurrency" => {
                o.concurrency = value.split(',').map(|c| c.parse().unwrap()).collect()
            }
            _ => {
                i += 1; // `--bench` and other flags cargo passes
                continue;
            }
        }
        i += 2;
    }
    o
}

/// The workspace's `ember` binary, built in release mode unless `EMBER_BIN` names one.
fn ember_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("EMBER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "engine",
            "--bin",
            "ember",
        ])
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "building ember failed");
    profile_dir.join("ember")
}

struct Executor {
    child: Child,
    addr: String,
}

impl Executor {
    fn start(bin: &Path) -> Executor {
        let mut child = Command::new(bin)
            .args([
                "executor",
                "--listen",
                "127.0.0.1:0",
                "--memory-max-bytes",
                "3GiB",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("READY ")
            .expect("READY line")
            .trim()
            .to_owned();
        Executor { child, addr }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process used so far, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // /proc reports in USER_HZ, which is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    LocalOnly,
    Replicas(usize),
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::LocalOnly => "local only".to_owned(),
            Mode::Replicas(n) => format!("{n} replica{}", if n == 1 { "" } else { "s" }),
        }
    }
}

struct Sample {
    mb_per_s: f64,
    blocks_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    driver_cpu_s_per_gib: f64,
    executor_cpu_s_per_gib: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Puts `total_bytes` in blocks of `size` from `concurrency` tasks, keeping at most
/// `window_bytes` stored: like a stream whose batches finish and release their blocks,
/// older blocks are removed (in batches, as the engine will) while new ones arrive. The
/// removals are part of the timed run; latencies are of puts only.
#[allow(clippy::too_many_arguments)]
async fn run_one(
    store: &Arc<ReplicatedStore>,
    executors: &[Executor],
    size: usize,
    concurrency: usize,
    total_bytes: usize,
    window_bytes: usize,
    run: u32,
    data: &Bytes,
) -> Sample {
    let count = (total_bytes / size).max(concurrency * 4);
    let window = (window_bytes / size).max(concurrency * 2) / concurrency;
    let exec_cpu = || {
        executors
            .iter()
            .map(|e| cpu_seconds(e.child.id()))
            .sum::<f64>()
    };
    let (driver_before, exec_before) = (cpu_seconds(std::process::id()), exec_cpu());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let store = Arc::clone(store);
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut held = std::collections::VecDeque::new();
            for seq in (worker..count).step_by(concurrency) {
                let id = BlockId::new(run, 0, seq as u64);
                let t = Instant::now();
                let block = Block::new(id, data.clone(), 1);
                store.put(block).await.unwrap();
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                held.push_back(id);
                if held.len() >= window {
                    // Release the older half, as a finished batch would.
                    let batch: Vec<BlockId> = held.drain(..window / 2).collect();
                    let report = store.remove(&batch).await;
                    assert!(report.failures.0.is_empty(), "{}", report.failures);
                }
            }
            (latencies, held)
        }));
    }
    let mut latencies = Vec::new();
    let mut leftover = Vec::new();
    for t in tasks {
        let (l, h) = t.await.unwrap();
        latencies.extend(l);
        leftover.extend(h);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (driver_after, exec_after) = (cpu_seconds(std::process::id()), exec_cpu());
    let report = store.remove(&leftover).await;
    assert!(report.failures.0.is_empty(), "{}", report.failures);
    latencies.sort_by(|a, b| a.total_cmp(b));
    let gib = (count * size) as f64 / (1u64 << 30) as f64;
    Sample {
        mb_per_s: (count * size) as f64 / 1e6 / elapsed,
        blocks_per_s: count as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        driver_cpu_s_per_gib: (driver_after - driver_before) / gib,
        executor_cpu_s_per_gib: (exec_after - exec_before) / gib,
    }
}

fn main() {
    let opts = options();
    let bin = ember_bin();
    let executors = vec![Executor::start(&bin), Executor::start(&bin)];
    let peers: Vec<String> = executors.iter().map(|e| e.addr.clone()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let modes = [Mode::LocalOnly, Mode::Replicas(1), Mode::Replicas(2)];
    let stores: Vec<Arc<ReplicatedStore>> = runtime.block_on(async {
        let mut stores = Vec::new();
        for mode in modes {
            let (replicas, peers) = match mode {
                Mode::LocalOnly => (0, Vec::new()),
                Mode::Replicas(n) => (n, peers.clone()),
            };
            let config = Config {
                node_name: "bench-driver".to_owned(),
                peer_replicas: replicas,
                memory_max_bytes: 3 << 30,
                repair_interval_ms: 0,
                ..Config::default()
            };
            let store = ReplicatedStore::open(config, &peers).await.unwrap();
            assert!(
                store
                    .wait_for_peers(peers.len(), Duration::from_secs(5))
                    .await
            );
            stores.push(Arc::new(store));
        }
        stores
    });
    let mut configs = Vec::new();
    for &size in &opts.sizes {
        for &conc in &opts.concurrency {
            for (m, mode) in modes.iter().enumerate() {
                configs.push((size, conc, m, *mode));
            }
        }
    }
    let data: Vec<(usize, Bytes)> = opts
        .sizes
        .iter()
        .map(|&size| {
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            let bytes: Vec<u8> = (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b'a' + (state % 26) as u8
                })
                .collect();
            (size, Bytes::from(bytes))
        })
        .collect();
    let mut samples: Vec<Vec<Sample>> = (0..configs.len()).map(|_| Vec::new()).collect();
    let mut run = 0u32;
    for round in 0..opts.rounds {
        eprintln!("round {}/{}", round + 1, opts.rounds);
        for (c, &(size, conc, m, _)) in configs.iter().enumerate() {
            run += 1;
            let data = &data.iter().find(|(s, _)| *s == size).unwrap().1;
            let execs: &[Executor] = if m == 0 { &[] } else { &executors };
            let sample = runtime.block_on(run_one(
                &stores[m],
                execs,
                size,
                conc,
                opts.mib << 20,
                opts.window_mib << 20,
                run,
                data,
            ));
            samples[c].push(sample);
        }
    }
    println!(
        "\nblockstore put, {} MiB per run, at most {} MiB held, median of {} rounds, 2 executors on loopback\n",
        opts.mib, opts.window_mib, opts.rounds
    );
    println!(
        "| block | puts in flight | mode | MB/s | blocks/s | p50 ms | p99 ms | driver CPU s/GiB | executors CPU s/GiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (c, &(size, conc, _, mode)) in configs.iter().enumerate() {
        let s = &samples[c];
        let mbps = median(s.iter().map(|x| x.mb_per_s).collect());
        let size_label = if size >= 1 << 20 {
            format!("{} MiB", size >> 20)
        } else {
            format!("{} KiB", size >> 10)
        };
        println!(
            "| {size_label} | {conc} | {} | {mbps:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            mode.name(),
            median(s.iter().map(|x| x.blocks_per_s).collect()),
            median(s.iter().map(|x| x.p50_ms).collect()),
            median(s.iter().map(|x| x.p99_ms).collect()),
            median(s.iter().map(|x| x.driver_cpu_s_per_gib).collect()),
            if mode == Mode::LocalOnly {
                "-".to_owned()
            } else {
                format!(
                    "{:.2}",
                    median(s.iter().map(|x| x.executor_cpu_s_per_gib).collect())
                )
            },
        );
    }
}
