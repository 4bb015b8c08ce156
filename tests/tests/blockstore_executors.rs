//! Hot replication against real `ember executor` processes on 127.0.0.1: `kill -9` in the
//! middle of transfers, a restarted executor, a stopped (SIGSTOP) executor, spilling to
//! disk, a corrupt frame, and a restarted driver fetching its blocks by id. The oracle is
//! always the executors themselves (what they list and return), never the driver's own
//! bookkeeping: an acknowledged block must be readable from a surviving replica.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockstore::protocol::{self, Frame, Message, NodeIdentity};
use blockstore::{
    Block, BlockId, Config, Error, ErrorCode, PeerClient, PutReceipt, ReplicatedStore, Tier,
};
use bytes::Bytes;
use tests::processes::{Executor, run_ember};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(name: &str, replicas: usize) -> Config {
    Config {
        node_name: name.to_owned(),
        peer_replicas: replicas,
        memory_max_bytes: 1 << 30,
        // Generous enough for a loaded 2-core machine; failure paths below do not wait
        // for these (a killed process resets its connections at once).
        peer_put_timeout_ms: 5_000,
        peer_request_timeout_ms: 5_000,
        connect_timeout_ms: 500,
        handshake_timeout_ms: 1_000,
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 1_000,
        reconnect_backoff_initial_ms: 20,
        reconnect_backoff_max_ms: 200,
        peer_dead_after_ms: 300,
        repair_interval_ms: 0,
        ..Config::default()
    }
}

/// Deterministic block content: different per block, checkable byte for byte.
fn block(stream: u32, sequence: u64, len: usize) -> Block {
    let mut state = sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    Block::new(
        BlockId::new(stream, 1, sequence),
        Bytes::from(data),
        len as u64 / 76,
    )
}

fn start(n: usize, extra: &[&str]) -> Vec<Executor> {
    (0..n)
        .map(|_| Executor::start("127.0.0.1:0", extra))
        .collect()
}

fn addrs(executors: &[Executor]) -> Vec<String> {
    executors.iter().map(|e| e.addr.clone()).collect()
}

/// What an executor itself says it holds (a direct connection, not the store under test).
async fn held_by(addr: &str) -> HashSet<BlockId> {
    let client = PeerClient::start(addr, config("inspector", 0)).unwrap();
    assert!(
        client.wait_connected(Duration::from_secs(5)).await,
        "inspect {addr}"
    );
    client.list().await.unwrap().into_iter().collect()
}

async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[test]
fn executor_prints_ready_and_stops_cleanly_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let mut executor = Executor::start("127.0.0.1:0", &[]);
        let addr: SocketAddr = executor.addr.parse().unwrap();
        assert_ne!(addr.port(), 0, "READY names the real port");
        std::net::TcpStream::connect(addr).unwrap();
        executor.signal(signal);
        let status = executor
            .wait_exit(Duration::from_secs(10))
            .expect("exits after the signal");
        assert!(
            status.success(),
            "SIG{signal}: {status:?}\n{}",
            executor.log()
        );
        let log = executor.log();
        assert!(
            log.contains(&format!("SIG{signal}")) && log.contains("executor stopped"),
            "{log}"
        );
    }
}

#[test]
fn bad_settings_fail_with_a_clear_message_and_a_nonzero_exit() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--listen", "127.0.0.1:0", "--disk-max-bytes", "1MiB"],
            "needs --data-dir",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--memory-max-bytes", "0"],
            "--memory-max-bytes",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--memory-max-bytes", "12TB"],
            "unknown unit",
        ),
        (vec!["--listen", &busy_addr], "listen on"),
        (
            vec!["--listen", "not-an-address"],
            "listen on not-an-address",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["executor"];
        args.extend(&flags);
        let (status, stdout, stderr) = run_ember(&args, Duration::from_secs(10));
        assert!(!status.success(), "{flags:?} succeeded");
        assert!(!stdout.contains("READY"), "{flags:?}: {stdout}");
        assert!(
            stderr.contains(needle),
            "{flags:?}: expected `{needle}` in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_land_on_two_and_three_executors_as_receipts_say() {
    let executors = start(3, &[]);
    let peers = addrs(&executors);
    // Two executors, both replicas required: every block on both.
    let both = ReplicatedStore::open(config("driver-a", 2), &peers[..2])
        .await
        .unwrap();
    // Three executors, one replica each: spread round-robin.
    let spread = ReplicatedStore::open(config("driver-b", 1), &peers)
        .await
        .unwrap();
    let mut expected: Vec<HashSet<BlockId>> = vec![HashSet::new(); 3];
    for i in 0..12 {
        let b = block(1, i, 64 * 1024);
        let r = both.put(b.clone()).await.unwrap();
        assert_eq!(r.replicas.len(), 2);
        expected[0].insert(b.id());
        expected[1].insert(b.id());
        let b = block(2, i, 64 * 1024);
        let r = spread.put(b.clone()).await.unwrap();
        let at = peers.iter().position(|p| *p == r.replicas[0].peer).unwrap();
        expected[at].insert(b.id());
    }
    for (i, peer) in peers.iter().enumerate() {
        assert_eq!(held_by(peer).await, expected[i], "executor {i}");
    }
    assert_eq!(
        expected[2].len(),
        4,
        "round robin gives each of three executors a third"
    );
}

/// Puts 2 MiB blocks from four concurrent putters (so transfers are in flight at every
/// moment) and `kill -9`s one executor after `kill_after` acknowledgements.
async fn kill_mid_transfer(victim: usize, kill_after: usize, seed: u64) {
    let mut executors = start(3, &[]);
    let peers = addrs(&executors);
    let store = Arc::new(
        ReplicatedStore::open(config("driver", 2), &peers)
            .await
            .unwrap(),
    );
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = 32u64;
    let mut putters = Vec::new();
    for worker in 0..4u64 {
        let store = Arc::clone(&store);
        let acked = Arc::clone(&acked);
        putters.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in (worker..total).step_by(4) {
                let b = block(seed as u32, i, 2 << 20);
                let result = store.put(b.clone()).await;
                if result.is_ok() {
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                results.push((b, result));
            }
            results
        }));
    }
    while acked.load(std::sync::atomic::Ordering::SeqCst) < kill_after {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    executors[victim].kill9();
    let mut results: Vec<(Block, Result<PutReceipt, Error>)> = Vec::new();
    for p in putters {
        results.extend(p.await.unwrap());
    }
    let survivors: Vec<String> = peers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p.clone())
        .collect();
    let mut holdings = std::collections::HashMap::new();
    for s in &survivors {
        holdings.insert(s.clone(), held_by(s).await);
    }
    let mut failed_over_from_victim = 0;
    for (b, result) in &results {
        let receipt = match result {
            Ok(receipt) => receipt,
            // With two executors left, a put can still place both replicas, so every put
            // must succeed; a failure here would be a liveness bug worth seeing.
            Err(err) => panic!("seed {seed}: put of {} failed: {err}", b.id()),
        };
        let holders: HashSet<&String> = receipt.replicas.iter().map(|r| &r.peer).collect();
        assert_eq!(holders.len(), 2, "seed {seed}: {receipt:?}");
        // Never an acknowledgement without the replicas: every surviving peer named in
        // the receipt really holds the block.
        for peer in holders {
            if let Some(held) = holdings.get(peer) {
                assert!(
                    held.contains(&b.id()),
                    "seed {seed}: {} acked on {peer}, which lacks it",
                    b.id()
                );
            }
        }
        if receipt
            .failed_over
            .iter()
            .any(|f| f.contains(&peers[victim]))
        {
            failed_over_from_victim += 1;
        }
    }
    assert!(
        failed_over_from_victim > 0,
        "seed {seed}: no put failed over from the killed executor; the kill missed every transfer"
    );
    // The driver dies too (its memory is gone): a new one reads every acknowledged block
    // from the surviving executors, byte for byte.
    drop(store);
    let mut order = peers.clone();
    order.rotate_left(victim);
    let fresh = ReplicatedStore::open(config("driver-restarted", 1), &order)
        .await
        .unwrap();
    for (b, _) in &results {
        let got = fresh
            .get(&b.id())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: acked {} lost: {e}", b.id()));
        assert!(got == *b, "seed {seed}: {} came back different", b.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_an_executor_mid_transfer_loses_no_acknowledged_block() {
    // Seeded kill points: which executor dies and after how many acknowledgements.
    for (seed, victim, kill_after) in [(1u64, 0usize, 3usize), (2, 1, 9), (3, 2, 15)] {
        kill_mid_transfer(victim, kill_after, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_replica_a_killed_executor_is_repaired_and_a_restarted_driver_reads_all() {
    let mut executors = start(2, &[]);
    let peers = addrs(&executors);
    let store = ReplicatedStore::open(
        Config {
            repair_interval_ms: 100,
            ..config("driver", 1)
        },
        &peers,
    )
    .await
    .unwrap();
    let blocks: Vec<Block> = (0..20).map(|i| block(5, i, 256 * 1024)).collect();
    for b in &blocks {
        store.put(b.clone()).await.unwrap();
    }
    let on_victim = held_by(&peers[0]).await;
    assert_eq!(on_victim.len(), 10);
    executors[0].kill9();
    // The background repair notices the lost replicas and copies them to the survivor.
    let repaired = eventually(Duration::from_secs(10), || {
        blocks
            .iter()
            .all(|b| store.live_replicas(&b.id()) == vec![peers[1].clone()])
    })
    .await;
    assert!(repaired, "replicas not repaired: {:?}", store.peers());
    assert_eq!(held_by(&peers[1]).await.len(), 20);
    drop(store);
    let fresh = ReplicatedStore::open(config("driver-restarted", 1), &peers)
        .await
        .unwrap();
    for b in &blocks {
        assert!(fresh.get(&b.id()).await.unwrap() == *b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_executor_rejoins_and_serves_its_spilled_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let mut spilling = Executor::start(
        "127.0.0.1:0",
        &[
            "--data-dir",
            data_dir,
            "--memory-max-bytes",
            "256KiB",
            "--disk-max-bytes",
            "64MiB",
        ],
    );
    let plain = Executor::start("127.0.0.1:0", &[]);
    let client = PeerClient::start(spilling.addr.clone(), config("direct", 0)).unwrap();
    assert!(client.wait_connected(Duration::from_secs(5)).await);
    let blocks: Vec<Block> = (0..10).map(|i| block(6, i, 100 * 1024)).collect();
    let mut tiers = Vec::new();
    for b in &blocks {
        tiers.push(client.put(b.clone()).await.unwrap());
    }
    assert_eq!(
        tiers.iter().filter(|t| **t == Tier::Memory).count(),
        2,
        "{tiers:?}"
    );
    let store = ReplicatedStore::open(
        config("driver", 1),
        &[spilling.addr.clone(), plain.addr.clone()],
    )
    .await
    .unwrap();

    spilling.kill9();
    assert!(eventually(Duration::from_secs(5), || !store.peers()[0].connected).await);
    // While it is down, new blocks go to the other executor.
    for i in 100..104 {
        let r = store.put(block(6, i, 1000)).await.unwrap();
        assert_eq!(r.replicas[0].peer, plain.addr);
    }
    spilling.restart();
    assert!(
        eventually(Duration::from_secs(5), || store.peers()[0].connected).await,
        "rejoins"
    );
    assert_eq!(store.peers()[0].restarts_seen, 1);
    // Memory blocks died with the process; spilled ones are served again, intact.
    assert!(
        client.wait_connected(Duration::from_secs(5)).await,
        "the direct client reconnects too"
    );
    let held = held_by(&spilling.addr).await;
    for (b, tier) in blocks.iter().zip(&tiers) {
        assert_eq!(held.contains(&b.id()), *tier == Tier::Disk, "{}", b.id());
        if *tier == Tier::Disk {
            assert!(client.get(&b.id()).await.unwrap().unwrap() == *b);
        }
    }
    assert!(
        spilling.log().contains("recovered spilled blocks"),
        "{}",
        spilling.log()
    );
    // And it takes new replicas again (round robin reaches it within two puts).
    let mut reached = false;
    for i in 200..202 {
        let r = store.put(block(6, i, 1000)).await.unwrap();
        reached |= r.replicas[0].peer == spilling.addr;
    }
    assert!(reached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_executor_costs_one_bounded_wait_then_puts_fail_over() {
    let executors = start(2, &[]);
    let peers = addrs(&executors);
    let put_timeout_ms = 800;
    let store = ReplicatedStore::open(
        Config {
            peer_put_timeout_ms: put_timeout_ms,
            ..config("driver", 1)
        },
        &peers,
    )
    .await
    .unwrap();
    executors[0].stop();
    let started = Instant::now();
    for i in 0..10 {
        let r = store.put(block(7, i, 64 * 1024)).await.unwrap();
        assert_eq!(r.replicas[0].peer, peers[1], "block {i}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(put_timeout_ms) + Duration::from_secs(2),
        "ten puts took {took:?} with one stopped executor"
    );
    // With only the stopped executor required, the put fails within the bound and says so.
    let alone = ReplicatedStore::open(
        Config {
            peer_put_timeout_ms: put_timeout_ms,
            ..config("driver-2", 1)
        },
        &peers[..1],
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = alone.put(block(7, 99, 1000)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(put_timeout_ms) + Duration::from_secs(2));
    assert!(matches!(err, Error::InsufficientReplicas { .. }), "{err}");
    assert!(err.to_string().contains(&peers[0]), "{err}");
    executors[0].signal("CONT");
    assert!(
        eventually(Duration::from_secs(5), || store.peers()[0].connected).await,
        "resumes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_spills_past_its_memory_limit_and_refuses_past_its_disk_limit() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(
        "127.0.0.1:0",
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--memory-max-bytes",
            "1MiB",
            "--disk-max-bytes",
            "3MiB",
        ],
    );
    let client = PeerClient::start(executor.addr.clone(), config("direct", 0)).unwrap();
    assert!(client.wait_connected(Duration::from_secs(5)).await);
    let blocks: Vec<Block> = (0..14).map(|i| block(8, i, 256 * 1024)).collect();
    let mut tiers = Vec::new();
    for b in &blocks {
        tiers.push(client.put(b.clone()).await.unwrap());
    }
    // 3 blocks fit in 1 MiB of memory (each is charged a little more than 256 KiB); the
    // next 11 fit in the 3 MiB of disk.
    assert_eq!(
        tiers.iter().filter(|t| **t == Tier::Memory).count(),
        3,
        "{tiers:?}"
    );
    let stats = client.ping().await.unwrap();
    assert!(stats.memory_used_bytes <= 1 << 20, "{stats:?}");
    assert!(stats.disk_used_bytes <= 3 << 20, "{stats:?}");
    assert_eq!(stats.blocks, 14);
    assert_eq!(
        std::fs::read_dir(dir.path().join("blocks"))
            .unwrap()
            .count(),
        11
    );
    for b in &blocks {
        assert!(client.get(&b.id()).await.unwrap().unwrap() == *b);
    }
    // Both full: refused after the executor's bounded wait, with its reason.
    let err = client.put(block(8, 99, 256 * 1024)).await.unwrap_err();
    match &err {
        Error::PeerError {
            code: ErrorCode::StoreFull,
            message,
            ..
        } => {
            assert!(message.contains("disk_max_bytes"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_frame_to_a_real_executor_is_refused_counted_and_stores_nothing() {
    let executor = Executor::start("127.0.0.1:0", &[]);
    let body_max = Config::default().frame_body_max_bytes;
    let mut stream = tokio::net::TcpStream::connect(&executor.addr)
        .await
        .unwrap();
    let hello = Frame {
        request_id: 0,
        message: Message::Hello {
            version: 1,
            node: NodeIdentity {
                name: "raw".into(),
                instance: 7,
            },
        },
    };
    stream
        .write_all(&protocol::encode(&hello, body_max).unwrap().to_vec())
        .await
        .unwrap();
    let b = block(9, 1, 100_000);
    let mut put = protocol::encode(
        &Frame {
            request_id: 1,
            message: Message::Put(b.clone()),
        },
        body_max,
    )
    .unwrap()
    .to_vec();
    put[50_000] ^= 0x10;
    stream.write_all(&put).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .unwrap()
        .unwrap();
    let (_, used) = protocol::decode_frame(&received, body_max)
        .unwrap()
        .unwrap();
    let (reply, _) = protocol::decode_frame(&received[used..], body_max)
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            reply.message,
            Message::Error {
                code: ErrorCode::CorruptFrame,
                ..
            }
        ),
        "{reply:?}"
    );
    let client = PeerClient::start(executor.addr.clone(), config("direct", 0)).unwrap();
    assert!(client.wait_connected(Duration::from_secs(5)).await);
    assert_eq!(client.ping().await.unwrap().corrupt_frames, 1);
    assert!(client.list().await.unwrap().is_empty());
    assert!(
        executor.log().contains("corrupt frame"),
        "{}",
        executor.log()
    );
}
