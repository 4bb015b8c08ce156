//! Shared test harness: the storage backends every suite runs against, seeds, and helpers.
#![allow(dead_code, clippy::unwrap_used)]

pub mod scenarios;

/// The moto S3 server fixture, shared with the `tests` crate (standard library only).
#[path = "../../../tests/src/moto.rs"]
pub mod moto;

use std::io;
use std::sync::Arc;

use wal::fs::{Dir, LocalDir, SimDir};
use wal::store::{DirSegmentStore, SegmentStore};
use wal::{Config, Lsn, SegmentId, SyncPolicy, Wal};

/// A storage backend under test. Every suite runs once per backend.
pub trait Backend: Send + Sync {
    /// Short name for messages.
    fn name(&self) -> &'static str;
    /// The directory the log lives in.
    fn dir(&self) -> Arc<dyn Dir>;
    /// The simulated page cache, if this backend can simulate a power loss.
    fn sim(&self) -> Option<&SimDir>;

    /// Whether the log's segments are preallocated (zero-filled ahead of use).
    fn preallocates(&self) -> bool;

    /// Whether each segment is written whole by one atomic put (object stores): no torn
    /// tails exist, and damage in the newest segment is corruption.
    fn atomic_segments(&self) -> bool {
        false
    }

    /// A fresh store over the same directory (as a restarted process would make), without
    /// preallocation (for read-only use).
    fn store(&self) -> Arc<dyn SegmentStore> {
        Arc::new(DirSegmentStore::new(self.dir()))
    }

    /// Opens the log for writing, preallocating segments of the config's size if this
    /// backend preallocates.
    fn open(&self, config: Config) -> wal::Result<Wal> {
        let store = if self.preallocates() {
            DirSegmentStore::with_preallocation(self.dir(), config.segment_size_max_bytes)
        } else {
            DirSegmentStore::new(self.dir())
        };
        Wal::open(Arc::new(store), config)
    }

    /// Segment file names, oldest first.
    fn segments(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .dir()
            .list()
            .unwrap()
            .into_iter()
            .filter(|n| DirSegmentStore::parse_file_name(n).is_some())
            .collect();
        names.sort();
        names
    }

    fn contents(&self, name: &str) -> Vec<u8> {
        wal::fs::read_all(self.dir().as_ref(), name).unwrap()
    }

    /// Media corruption: XOR `mask` into one byte, durably.
    fn corrupt(&self, name: &str, offset: u64, mask: u8);

    /// Appends raw bytes to a file and syncs them (a write the log did not make).
    fn append_raw(&self, name: &str, bytes: &[u8]) {
        let dir = self.dir();
        let mut file = match dir.open_append(name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => dir.create_new(name).unwrap(),
            Err(e) => panic!("{e}"),
        };
        file.write_all(bytes).unwrap();
        file.sync_data().unwrap();
        dir.sync_dir().unwrap();
    }

    /// Cuts a file to `len` bytes, durably.
    fn truncate_raw(&self, name: &str, len: u64) {
        let mut file = self.dir().open_append(name).unwrap();
        file.set_len(len).unwrap();
        file.sync_data().unwrap();
    }

    /// Removes a file, durably.
    fn remove_raw(&self, name: &str) {
        self.dir().remove(name).unwrap();
        self.dir().sync_dir().unwrap();
    }

    /// Writes a whole file, durably.
    fn write_raw(&self, name: &str, bytes: &[u8]) {
        let dir = self.dir();
        let mut file = dir.create_new(name).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_data().unwrap();
        dir.sync_dir().unwrap();
    }
}

pub struct Local {
    _tmp: tempfile::TempDir,
    dir: Arc<LocalDir>,
    preallocate: bool,
}

impl Local {
    pub fn new() -> Local {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(LocalDir::open(tmp.path()).unwrap());
        Local {
            _tmp: tmp,
            dir,
            preallocate: false,
        }
    }

    pub fn preallocated() -> Local {
        Local {
            preallocate: true,
            ..Local::new()
        }
    }
}

impl Backend for Local {
    fn name(&self) -> &'static str {
        if self.preallocate {
            "local-preallocated"
        } else {
            "local"
        }
    }
    fn preallocates(&self) -> bool {
        self.preallocate
    }
    fn dir(&self) -> Arc<dyn Dir> {
        self.dir.clone()
    }
    fn sim(&self) -> Option<&SimDir> {
        None
    }
    fn corrupt(&self, name: &str, offset: u64, mask: u8) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.path().join(name))
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        byte[0] ^= mask;
        file.write_all_at(&byte, offset).unwrap();
        file.sync_data().unwrap();
    }
}

pub struct Sim {
    pub sim: SimDir,
    pub preallocate: bool,
}

impl Sim {
    pub fn new() -> Sim {
        Sim {
            sim: SimDir::new(),
            preallocate: false,
        }
    }

    pub fn preallocated() -> Sim {
        Sim {
            sim: SimDir::new(),
            preallocate: true,
        }
    }
}

impl Backend for Sim {
    fn name(&self) -> &'static str {
        if self.preallocate {
            "sim-preallocated"
        } else {
            "sim"
        }
    }
    fn preallocates(&self) -> bool {
        self.preallocate
    }
    fn dir(&self) -> Arc<dyn Dir> {
        // A handle for the process running now: one made before a crash is dead after it.
        Arc::new(self.sim.handle())
    }
    fn sim(&self) -> Option<&SimDir> {
        Some(&self.sim)
    }
    fn corrupt(&self, name: &str, offset: u64, mask: u8) {
        self.sim.corrupt(name, offset, mask).unwrap();
    }
}

/// The canary's store: the simulated page cache behind a `Dir` whose `sync_data` and
/// `sync_dir` do nothing. A log on it acknowledges records that a power loss then takes
/// away, so the crash suite must fail on it.
pub struct SkipSync {
    pub sim: SimDir,
}

impl Backend for SkipSync {
    fn name(&self) -> &'static str {
        "sim-without-fsync"
    }
    fn preallocates(&self) -> bool {
        false
    }
    fn dir(&self) -> Arc<dyn Dir> {
        Arc::new(NoSyncDir(self.sim.handle()))
    }
    fn sim(&self) -> Option<&SimDir> {
        Some(&self.sim)
    }
    fn corrupt(&self, name: &str, offset: u64, mask: u8) {
        self.sim.corrupt(name, offset, mask).unwrap();
    }
}

#[derive(Debug)]
struct NoSyncDir(SimDir);

#[derive(Debug)]
struct NoSyncFile(Box<dyn wal::fs::DirFile>);

impl wal::fs::DirFile for NoSyncFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(()) // the bug the canary plants
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size_bytes(&self) -> io::Result<u64> {
        self.0.size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(offset, buf)
    }
}

impl Dir for NoSyncDir {
    fn list(&self) -> io::Result<Vec<String>> {
        self.0.list()
    }
    fn create_new(&self, name: &str) -> io::Result<Box<dyn wal::fs::DirFile>> {
        Ok(Box::new(NoSyncFile(self.0.create_new(name)?)))
    }
    fn open_append(&self, name: &str) -> io::Result<Box<dyn wal::fs::DirFile>> {
        Ok(Box::new(NoSyncFile(self.0.open_append(name)?)))
    }
    fn open_read(&self, name: &str) -> io::Result<Box<dyn wal::fs::DirFile>> {
        self.0.open_read(name)
    }
    fn read_immutable(&self, name: &str) -> io::Result<bytes::Bytes> {
        self.0.read_immutable(name)
    }
    fn size_bytes(&self, name: &str) -> io::Result<u64> {
        self.0.size_bytes(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.0.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        Ok(()) // the bug the canary plants
    }
    fn lock(&self, name: &str) -> io::Result<wal::fs::DirLock> {
        self.0.lock(name)
    }
    fn path_of(&self, name: &str) -> std::path::PathBuf {
        self.0.path_of(name)
    }
    fn root(&self) -> std::path::PathBuf {
        self.0.root()
    }
}

/// The WAL on an object store: in memory (with a put latency, as a real store has), or
/// on the moto S3 server. Raw operations rewrite whole objects, the only way to change
/// one.
pub struct Object {
    name: &'static str,
    store: Arc<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
    location: String,
}

impl Object {
    pub fn memory() -> Object {
        use object_store::throttle::{ThrottleConfig, ThrottledStore};
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let throttle = ThrottleConfig {
            wait_put_per_call: std::time::Duration::from_micros(300),
            ..ThrottleConfig::default()
        };
        Object {
            name: "object-memory",
            store: Arc::new(ThrottledStore::new(
                object_store::memory::InMemory::new(),
                throttle,
            )),
            prefix: object_store::path::Path::from("log"),
            location: format!("memory://test-{n}/log"),
        }
    }

    /// On the moto server, or `None` (with a skip message) if moto is not installed.
    pub fn s3() -> Option<Object> {
        let moto = moto::Moto::shared()?;
        let url = wal::objstore::StorageUrl::parse(&moto.fresh_url("wal")).unwrap();
        let options = wal::objstore::ObjectOptions {
            s3: moto.s3_settings(),
            ..Default::default()
        };
        let client = url.connect(&options).unwrap();
        Some(Object {
            name: "object-s3",
            store: Arc::clone(client.store()),
            prefix: client.prefix().clone(),
            location: client.location().to_owned(),
        })
    }

    pub fn client(&self) -> wal::objstore::ObjectClient {
        wal::objstore::ObjectClient::new(
            Arc::clone(&self.store),
            self.prefix.clone(),
            self.location.clone(),
            wal::objstore::RetryPolicy::default(),
        )
    }

    fn rewrite(&self, name: &str, change: impl FnOnce(&mut Vec<u8>)) {
        let client = self.client();
        let mut bytes = match client.get(name) {
            Ok(b) => b.to_vec(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("{e}"),
        };
        change(&mut bytes);
        client.delete(name).unwrap();
        client.put_create(name, bytes.into()).unwrap();
    }
}

impl Backend for Object {
    fn name(&self) -> &'static str {
        self.name
    }
    fn dir(&self) -> Arc<dyn Dir> {
        panic!("{}: an object store has no directory", self.name)
    }
    fn sim(&self) -> Option<&SimDir> {
        None
    }
    fn preallocates(&self) -> bool {
        false
    }
    fn atomic_segments(&self) -> bool {
        true
    }
    fn store(&self) -> Arc<dyn SegmentStore> {
        Arc::new(wal::objstore::ObjectSegmentStore::new(self.client()))
    }
    fn open(&self, config: Config) -> wal::Result<Wal> {
        Wal::open(self.store(), config)
    }
    fn segments(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .client()
            .list()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| DirSegmentStore::parse_file_name(n).is_some())
            .collect();
        names.sort();
        names
    }
    fn contents(&self, name: &str) -> Vec<u8> {
        self.client().get(name).unwrap().to_vec()
    }
    fn corrupt(&self, name: &str, offset: u64, mask: u8) {
        self.rewrite(name, |b| b[offset as usize] ^= mask);
    }
    fn append_raw(&self, name: &str, bytes: &[u8]) {
        self.rewrite(name, |b| b.extend_from_slice(bytes));
    }
    fn truncate_raw(&self, name: &str, len: u64) {
        self.rewrite(name, |b| b.truncate(len as usize));
    }
    fn remove_raw(&self, name: &str) {
        self.client().delete(name).unwrap();
    }
    fn write_raw(&self, name: &str, bytes: &[u8]) {
        self.client()
            .put_create(name, bytes.to_vec().into())
            .unwrap();
    }
}

/// The seed for a seeded test: `WAL_TEST_SEED` if set, else `default`.
pub fn seed(default: u64) -> u64 {
    match std::env::var("WAL_TEST_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("WAL_TEST_SEED={v:?} is not a u64")),
        Err(_) => default,
    }
}

/// How to re-run one seeded test, for failure messages.
pub fn rerun(test_file: &str, test: &str, seed: u64) -> String {
    format!(
        "seed {seed}; re-run with: WAL_TEST_SEED={seed} cargo test -p wal --test {test_file} {test} -- --exact"
    )
}

/// A config with small segments, so tests cross many segment boundaries.
pub fn small_segments(sync_policy: SyncPolicy) -> Config {
    Config {
        segment_size_max_bytes: 1024,
        record_size_max_bytes: 512,
        sync_policy,
        index_interval_bytes: 64,
        append_bytes_in_flight_max: 1 << 20,
        ..Config::default()
    }
}

/// The deterministic payload of record number `n` of a writer `w`: its length varies, and
/// its bytes say who wrote it, so a misplaced record is caught.
pub fn payload(w: u64, n: u64, len_max: usize) -> Vec<u8> {
    let len = ((w * 7919 + n * 104_729) % (len_max as u64 + 1)) as usize;
    let mut out = Vec::with_capacity(len);
    let mut x = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// Every record of the log, in order, checking Lsns are dense.
pub fn read_all(wal: &Wal) -> Vec<(Lsn, Vec<u8>)> {
    let mut out = Vec::new();
    let mut expected: Option<Lsn> = None;
    for item in wal.iter_from(Lsn::FIRST).unwrap() {
        let (lsn, bytes) = item.unwrap();
        if let Some(e) = expected {
            assert_eq!(lsn, e, "iterator skipped or repeated an Lsn");
        }
        expected = Some(lsn.next());
        out.push((lsn, bytes.to_vec()));
    }
    out
}

/// Asserts two record lists are equal, with a short message (counts and the first
/// difference) instead of dumping every byte.
#[track_caller]
pub fn assert_records(got: &[(Lsn, Vec<u8>)], want: &[(Lsn, Vec<u8>)], context: &str) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    let describe = |r: Option<&(Lsn, Vec<u8>)>| {
        r.map_or("nothing".to_owned(), |(lsn, bytes)| {
            format!("Lsn {lsn} ({} bytes)", bytes.len())
        })
    };
    panic!(
        "records differ: got {} records, want {}; first difference at index {first_diff}: got {}, want {}; {context}",
        got.len(),
        want.len(),
        describe(got.get(first_diff)),
        describe(want.get(first_diff)),
    );
}

/// The segment file name for an id.
pub fn segment_name(id: u64) -> String {
    DirSegmentStore::file_name(SegmentId::new(id))
}

/// Runs a test body once per storage backend: [`for_each_backend`]'s directories, then
/// the object store in memory and on the moto S3 server.
#[macro_export]
macro_rules! for_each_store {
    ($($test:ident),* $(,)?) => {
        $crate::for_each_backend!($($test),*);
        $crate::for_each_backend!(@module object_memory, $crate::common::Object::memory(); $($test),*);
        $crate::for_each_backend!(@optional object_s3, $crate::common::Object::s3(); $($test),*);
    };
}

/// Runs a test body once per backend: real files and the simulated page cache, each with
/// and without segment preallocation.
#[macro_export]
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        $crate::for_each_backend!(@module local, $crate::common::Local::new(); $($test),*);
        $crate::for_each_backend!(@module local_preallocated, $crate::common::Local::preallocated(); $($test),*);
        $crate::for_each_backend!(@module sim, $crate::common::Sim::new(); $($test),*);
        $crate::for_each_backend!(@module sim_preallocated, $crate::common::Sim::preallocated(); $($test),*);
    };
    (@optional $module:ident, $make:expr; $($test:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    // `None`: the server is not installed (a skip message was printed).
                    if let Some(backend) = $make {
                        super::$test(&backend);
                    }
                }
            )*
        }
    };
    (@module $module:ident, $make:expr; $($test:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test(&$make);
                }
            )*
        }
    };
}
