//! The local store's limits: memory first, spill to disk, bounded waits when both are
//! full, never more than configured, and spilled blocks served again after a restart.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockstore::{BLOCK_MEMORY_OVERHEAD_BYTES, Block, BlockId, BlockManager, Config, Error, Tier};
use bytes::Bytes;

fn block(sequence: u64, len: usize) -> Block {
    let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ sequence) as u8).collect();
    Block::new(BlockId::new(7, 1, sequence), Bytes::from(data), 1)
}

const KIB: u64 = 1024;
const SPILL_HEADER: u64 = blockstore::storage::SPILL_HEADER_LEN as u64;

fn config(dir: &tempfile::TempDir, memory: u64, disk: u64, wait_ms: u64) -> Config {
    Config {
        memory_max_bytes: memory,
        disk_max_bytes: disk,
        data_dir: Some(dir.path().to_owned()),
        put_wait_max_ms: wait_ms,
        ..Config::default()
    }
}

#[tokio::test]
async fn memory_limit_reached_spills_the_incoming_block_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    // Room for exactly two 64 KiB blocks in memory.
    let store = BlockManager::open(&config(
        &dir,
        2 * (64 * KIB + BLOCK_MEMORY_OVERHEAD_BYTES),
        10 << 20,
        100,
    ))
    .unwrap();
    let blocks: Vec<Block> = (0..5).map(|i| block(i, 64 * 1024)).collect();
    let mut tiers = Vec::new();
    for b in &blocks {
        tiers.push(store.put(b.clone()).await.unwrap());
    }
    assert_eq!(
        tiers,
        [
            Tier::Memory,
            Tier::Memory,
            Tier::Disk,
            Tier::Disk,
            Tier::Disk
        ]
    );
    let usage = store.usage();
    assert_eq!(usage.memory_blocks, 2);
    assert_eq!(usage.disk_blocks, 3);
    assert!(usage.memory_used_bytes <= usage.memory_max_bytes);
    assert_eq!(usage.disk_used_bytes, 3 * (64 * KIB + SPILL_HEADER));
    // The spill files exist and every block reads back intact.
    assert_eq!(
        std::fs::read_dir(dir.path().join("blocks"))
            .unwrap()
            .count(),
        3
    );
    for b in &blocks {
        assert_eq!(&store.get(&b.id()).await.unwrap().unwrap(), b);
    }
    // Freeing memory lets the next block into memory again.
    assert!(store.remove(&blocks[0].id()).await.unwrap());
    assert_eq!(store.put(block(10, 64 * 1024)).await.unwrap(), Tier::Memory);
}

#[tokio::test]
async fn both_full_fails_after_the_bounded_wait_naming_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlockManager::open(&config(&dir, 100 * KIB, 100 * KIB, 200)).unwrap();
    store.put(block(1, 90 * 1024)).await.unwrap();
    store.put(block(2, 90 * 1024)).await.unwrap();
    let started = Instant::now();
    let err = store.put(block(3, 90 * 1024)).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(190),
        "gave up after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    match &err {
        Error::StoreFull {
            memory_max_bytes,
            disk_max_bytes,
            len_bytes,
            ..
        } => {
            assert_eq!(
                (*memory_max_bytes, *disk_max_bytes, *len_bytes),
                (100 * KIB, 100 * KIB, 90 * KIB)
            );
        }
        other => panic!("unexpected {other}"),
    }
    let text = err.to_string();
    for needle in [
        "block 7/1/3",
        "memory_max_bytes",
        "disk_max_bytes",
        "put_wait_max_ms",
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
    assert!(!store.contains(&block(3, 1).id()));
}

#[tokio::test]
async fn a_waiting_put_proceeds_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlockManager::open(&config(&dir, 100 * KIB, 0, 5_000)).unwrap();
    store.put(block(1, 90 * 1024)).await.unwrap();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.put(block(2, 90 * 1024)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the put must wait while memory is full"
    );
    assert!(store.remove(&block(1, 1).id()).await.unwrap());
    let tier = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(tier, Tier::Memory);
}

#[tokio::test]
async fn a_block_larger_than_both_limits_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlockManager::open(&config(&dir, 10 * KIB, 20 * KIB, 5_000)).unwrap();
    let started = Instant::now();
    let err = store.put(block(1, 30 * 1024)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "must not wait for space that can never be enough"
    );
    assert!(matches!(err, Error::BlockTooLarge { .. }), "{err}");
}

/// A block whose bytes change after its checksum was taken (a buffer reused too early, a
/// bad DIMM): the data lives in a shared file mapping here, so the test can change it
/// under the `Bytes` the way a bug would.
#[tokio::test]
async fn bytes_changed_after_creation_are_caught_on_put_read_and_send() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer");
    std::fs::write(&path, vec![7u8; 4096]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: the file is private to this test; the mapping is only read through `Bytes`,
    // and the writes below go through the file, which is exactly the concurrent change
    // this test wants the checksums to catch.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let shared = Bytes::from_owner(map);
    let block = Block::new(BlockId::new(1, 1, 1), shared.clone(), 1);
    let store = BlockManager::open(&config(&dir, 10 << 20, 0, 100)).unwrap();
    assert_eq!(store.put(block.clone()).await.unwrap(), Tier::Memory);
    assert_eq!(store.get(&block.id()).await.unwrap().unwrap(), block);

    let mut writer = &file;
    writer.seek(SeekFrom::Start(100)).unwrap();
    writer.write_all(&[8]).unwrap();
    assert_eq!(shared[100], 8, "the mapping shows the change");

    // Read from memory: refused, naming the block and where.
    let err = store.get(&block.id()).await.unwrap_err();
    assert!(matches!(err, Error::BlockCorrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("block 1/1/1") && err.to_string().contains("memory"),
        "{err}"
    );
    // Sent to a peer: refused while encoding.
    let frame = blockstore::protocol::Frame {
        request_id: 1,
        message: blockstore::protocol::Message::Put(block.clone()),
    };
    let err = blockstore::protocol::encode(&frame, 1 << 20).unwrap_err();
    assert!(matches!(err, Error::BlockCorrupt { .. }), "{err}");
    // Handed to another store: refused before anything is stored.
    let other = BlockManager::open(&config(&dir, 10 << 20, 0, 100)).unwrap();
    let err = other.put(block.clone()).await.unwrap_err();
    assert!(matches!(err, Error::BlockCorrupt { .. }), "{err}");
    assert!(other.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_never_exceed_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let memory_max = 300 * KIB;
    let disk_max = 300 * KIB;
    let store = BlockManager::open(&config(&dir, memory_max, disk_max, 2_000)).unwrap();
    let peak = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let store = store.clone();
        let peak = Arc::clone(&peak);
        tasks.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let b = block(worker * 1000 + i, 20 * 1024 + (i as usize % 7) * 1000);
                store.put(b.clone()).await.unwrap();
                let u = store.usage();
                {
                    let mut p = peak.lock().unwrap();
                    p.0 = p.0.max(u.memory_used_bytes);
                    p.1 = p.1.max(u.disk_used_bytes);
                }
                assert_eq!(store.get(&b.id()).await.unwrap().unwrap(), b);
                assert!(store.remove(&b.id()).await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (memory_peak, disk_peak) = *peak.lock().unwrap();
    assert!(memory_peak <= memory_max, "memory peaked at {memory_peak}");
    assert!(disk_peak <= disk_max, "disk peaked at {disk_peak}");
    let u = store.usage();
    assert_eq!(
        (
            u.memory_used_bytes,
            u.disk_used_bytes,
            u.memory_blocks,
            u.disk_blocks
        ),
        (0, 0, 0, 0)
    );
}

#[tokio::test]
async fn spilled_blocks_are_served_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, 0, 10 << 20, 100);
    let blocks: Vec<Block> = (0..4).map(|i| block(i, 10_000 + i as usize)).collect();
    {
        let store = BlockManager::open(&cfg).unwrap();
        for b in &blocks {
            assert_eq!(store.put(b.clone()).await.unwrap(), Tier::Disk);
        }
    }
    let store = BlockManager::open(&cfg).unwrap();
    assert_eq!(
        store.list(),
        blocks.iter().map(Block::id).collect::<Vec<_>>()
    );
    let usage = store.usage();
    assert_eq!(usage.disk_blocks, 4);
    let expected: u64 = blocks.iter().map(|b| b.len() as u64 + SPILL_HEADER).sum();
    assert_eq!(usage.disk_used_bytes, expected);
    for b in &blocks {
        assert_eq!(&store.get(&b.id()).await.unwrap().unwrap(), b);
    }
}

#[test]
fn disk_limit_without_a_directory_is_a_config_error() {
    let err = BlockManager::open(&Config {
        disk_max_bytes: 1,
        data_dir: None,
        ..Config::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                setting: "disk_max_bytes",
                ..
            }
        ),
        "{err}"
    );
}
