//! One conformance suite for every storage backend of the `BlockManager` (memory and
//! disk), then the same behaviours through the `BlockManager` itself configured to keep
//! blocks only in memory, only on disk, or both.
#![allow(clippy::unwrap_used)]

use blockstore::storage::{BlockStorage, DiskStorage, MemoryStorage};
use blockstore::{Block, BlockId, BlockManager, Config, Error, Tier};
use bytes::Bytes;

fn block(stream: u32, sequence: u64, len: usize) -> Block {
    let data: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + sequence) as u8).collect();
    Block::new(
        BlockId::new(stream, 1, sequence),
        Bytes::from(data),
        len as u64 / 10,
    )
}

/// The backend contract (see `blockstore::storage::BlockStorage`).
fn conformance(storage: &dyn BlockStorage) {
    let a = block(1, 1, 1000);
    let b = block(1, 2, 0); // empty blocks are valid
    let c = block(2, 1, 3 << 20);

    // Absent ids are `None` / `false`, not errors.
    assert_eq!(storage.get(&a.id()).unwrap(), None);
    assert!(!storage.remove(&a.id()).unwrap());
    assert!(storage.list().unwrap().is_empty());

    // Put then get returns the same block, every field.
    for blk in [&a, &b, &c] {
        storage.put(blk).unwrap();
    }
    for blk in [&a, &b, &c] {
        let got = storage.get(&blk.id()).unwrap().unwrap();
        assert_eq!(&got, blk, "{} backend", storage.name());
        assert_eq!(got.record_count(), blk.record_count());
        assert_eq!(got.crc32(), blk.crc32());
    }

    // List is ascending.
    assert_eq!(storage.list().unwrap(), vec![a.id(), b.id(), c.id()]);

    // Replacing with the same id keeps one copy.
    storage.put(&a).unwrap();
    assert_eq!(storage.list().unwrap().len(), 3);

    // Remove removes exactly one.
    assert!(storage.remove(&b.id()).unwrap());
    assert!(!storage.remove(&b.id()).unwrap());
    assert_eq!(storage.get(&b.id()).unwrap(), None);
    assert_eq!(storage.list().unwrap(), vec![a.id(), c.id()]);
    assert_eq!(storage.get(&a.id()).unwrap().unwrap(), a);
}

#[test]
fn memory_backend_conforms() {
    conformance(&MemoryStorage::new());
}

#[test]
fn disk_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, recovered) = DiskStorage::open(dir.path()).unwrap();
    assert!(recovered.is_empty());
    conformance(&disk);
}

#[test]
fn disk_backend_detects_corruption_and_recovers_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = block(1, 1, 5000);
    let b = block(1, 2, 100);
    {
        let (disk, _) = DiskStorage::open(dir.path()).unwrap();
        disk.put(&a).unwrap();
        disk.put(&b).unwrap();
        // A flipped data byte: the read fails with the file's path, never returns bytes.
        let path = disk.path_of(&a.id());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3000] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = disk.get(&a.id()).unwrap_err();
        assert!(matches!(err, Error::BlockCorrupt { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        // A flipped header byte of the other file.
        let path_b = disk.path_of(&b.id());
        let mut bytes = std::fs::read(&path_b).unwrap();
        bytes[30] ^= 0x01;
        std::fs::write(&path_b, &bytes).unwrap();
        let err = disk.get(&b.id()).unwrap_err();
        assert!(matches!(err, Error::CorruptSpillFile { .. }), "{err}");
        // A write cut short leaves a temporary file.
        std::fs::write(
            disk.dir().join(format!(
                "{}.tmp",
                disk.path_of(&block(9, 9, 1).id())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
            )),
            b"partial",
        )
        .unwrap();
    }
    // Reopen: the damaged-header file and the temporary file are gone; the file with a
    // damaged body is listed (its header is fine) and still fails on read.
    let (disk, recovered) = DiskStorage::open(dir.path()).unwrap();
    let ids: Vec<BlockId> = recovered.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![a.id()]);
    assert_eq!(recovered[0].len, 5000);
    assert_eq!(std::fs::read_dir(disk.dir()).unwrap().count(), 1);
    assert!(disk.get(&a.id()).is_err());
}

fn manager(memory: u64, disk: u64, dir: &tempfile::TempDir) -> BlockManager {
    BlockManager::open(&Config {
        memory_max_bytes: memory,
        disk_max_bytes: disk,
        data_dir: Some(dir.path().to_owned()),
        put_wait_max_ms: 100,
        ..Config::default()
    })
    .unwrap()
}

/// The manager contract, whatever tier the blocks land in.
async fn manager_conformance(store: &BlockManager, expected_tier: Tier) {
    let a = block(1, 1, 1000);
    let b = block(1, 2, 0);
    let c = block(2, 1, 200_000);
    assert_eq!(store.get(&a.id()).await.unwrap(), None);
    assert!(!store.remove(&a.id()).await.unwrap());
    for blk in [&a, &b, &c] {
        assert_eq!(store.put(blk.clone()).await.unwrap(), expected_tier);
        assert!(store.contains(&blk.id()));
        assert_eq!(store.tier_of(&blk.id()), Some(expected_tier));
    }
    for blk in [&a, &b, &c] {
        assert_eq!(&store.get(&blk.id()).await.unwrap().unwrap(), blk);
    }
    assert_eq!(store.list(), vec![a.id(), b.id(), c.id()]);
    assert_eq!(store.list_after(Some(a.id()), 1), (vec![b.id()], true));
    assert_eq!(store.list_after(Some(b.id()), 5), (vec![c.id()], false));

    // Idempotent re-put; a different block under the same id is a conflict.
    assert_eq!(store.put(a.clone()).await.unwrap(), expected_tier);
    let imposter = Block::new(a.id(), Bytes::from_static(b"other bytes"), 2);
    let err = store.put(imposter).await.unwrap_err();
    assert!(matches!(err, Error::BlockConflict { .. }), "{err}");
    assert!(err.to_string().contains("block 1/1/1"), "{err}");

    let usage = store.usage();
    assert_eq!(usage.memory_blocks + usage.disk_blocks, 3);
    for blk in [&a, &b, &c] {
        assert!(store.remove(&blk.id()).await.unwrap());
    }
    let usage = store.usage();
    assert_eq!(
        (usage.memory_used_bytes, usage.disk_used_bytes),
        (0, 0),
        "{usage:?}"
    );
    assert_eq!((usage.memory_blocks, usage.disk_blocks), (0, 0));
    assert!(store.list().is_empty());
}

#[tokio::test]
async fn manager_in_memory_conforms() {
    let dir = tempfile::tempdir().unwrap();
    manager_conformance(&manager(10 << 20, 0, &dir), Tier::Memory).await;
}

#[tokio::test]
async fn manager_on_disk_conforms() {
    let dir = tempfile::tempdir().unwrap();
    manager_conformance(&manager(0, 10 << 20, &dir), Tier::Disk).await;
}
