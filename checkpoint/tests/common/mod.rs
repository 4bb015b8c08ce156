//! Shared test support: sample checkpoints, stores over `SimDir`, and [`DyingDir`], a `Dir`
//! whose process "dies" at a chosen step so a crash can land in the middle of a publish.
#![allow(dead_code, clippy::unwrap_used)]

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use checkpoint::{
    BatchInputs, BlockLocation, BlockRef, Checkpoint, CheckpointParts, CheckpointStore, Config,
    DirBackend, GraphDescription, InputData, OperatorDesc, SourcePosition, StateDesc, StateRef,
    StreamInput, WalTruncation,
};
use wal::Lsn;
use wal::fs::{Dir, DirFile, DirLock, SimDir};

pub const ZERO_MS: u64 = 1_700_000_000_000;
pub const INTERVAL_MS: u64 = 1000;

/// The word-count graph: an input, a stateful running count, an output.
pub fn graph() -> GraphDescription {
    GraphDescription {
        operators: vec![
            op("input-0", "socket_input", "lines", &[], Some(0), None),
            op("flat-map-1", "flat_map", "words", &["input-0"], None, None),
            op(
                "counts",
                "update_state_by_key",
                "running counts",
                &["flat-map-1"],
                None,
                Some(("String", "u64", 1)),
            ),
            OperatorDesc {
                output: true,
                ..op(
                    "sink-3",
                    "save_as_text_files",
                    "out",
                    &["counts"],
                    None,
                    None,
                )
            },
        ],
    }
}

pub fn op(
    id: &str,
    kind: &str,
    name: &str,
    parents: &[&str],
    input_stream: Option<u32>,
    state: Option<(&str, &str, u32)>,
) -> OperatorDesc {
    OperatorDesc {
        id: id.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        input_stream,
        output: false,
        state: state.map(|(k, s, v)| StateDesc {
            key_type: k.to_owned(),
            state_type: s.to_owned(),
            version: v,
        }),
    }
}

pub fn batch_ms(k: u64) -> u64 {
    ZERO_MS + k * INTERVAL_MS
}

/// A checkpoint at batch `k`: batches `k-1` and `k` pending with one WAL block each, the
/// given snapshot references, and a source position naming `k` (so each `k` is distinct).
pub fn checkpoint_at(k: u64, state: Vec<StateRef>) -> Checkpoint {
    let pending = (k.saturating_sub(1)..=k)
        .filter(|b| *b >= 1)
        .map(|b| BatchInputs {
            batch_time_ms: batch_ms(b),
            inputs: vec![StreamInput {
                stream: 0,
                data: InputData::Blocks(vec![BlockRef {
                    seq: b,
                    records: 100 + b,
                    len_bytes: 1000 + b,
                    location: BlockLocation::Wal {
                        log_stream: 0,
                        lsn: Lsn::new(b),
                    },
                }]),
            }],
        })
        .collect();
    Checkpoint::new(CheckpointParts {
        batch_time_ms: batch_ms(k),
        batch_interval_ms: INTERVAL_MS,
        zero_time_ms: ZERO_MS,
        metadata_log_lsn: Lsn::new(k * 2),
        pending_batches: pending,
        remembered_batches: vec![],
        unallocated: vec![],
        data_wal_truncation: vec![WalTruncation {
            stream: 0,
            truncate_before: Lsn::new(k.max(1)),
        }],
        state_snapshots: state,
        graph: graph(),
        source_positions: vec![SourcePosition {
            stream: 0,
            position: [("acked_line".to_owned(), (k * 1000).to_string())].into(),
        }],
    })
    .unwrap()
}

/// The state body written at batch `k`.
pub fn state_body(k: u64) -> Vec<u8> {
    format!("counts after batch {k}").into_bytes()
}

/// Writes the snapshot of batch `k` and publishes checkpoint `k` referencing it.
pub fn publish_with_state(store: &CheckpointStore, k: u64) -> checkpoint::Result<Checkpoint> {
    let r = store.put_snapshot("counts", batch_ms(k), &state_body(k))?;
    let c = checkpoint_at(k, vec![r]);
    store.publish(&c)?;
    Ok(c)
}

pub fn config(retained: usize) -> Config {
    Config {
        checkpoints_retained: retained,
        ..Config::default()
    }
}

/// A writer store over the directory as the process running now sees it.
pub fn sim_store(sim: &SimDir, retained: usize) -> CheckpointStore {
    CheckpointStore::open(
        Arc::new(DirBackend::new(Arc::new(sim.handle()))),
        config(retained),
    )
    .unwrap()
}

/// The checkpoint names present, by sequence.
pub fn checkpoint_seqs(dir: &dyn Dir) -> Vec<u64> {
    let mut seqs: Vec<u64> = dir
        .list()
        .unwrap()
        .iter()
        .filter_map(|n| checkpoint::names::parse_checkpoint_name(n))
        .collect();
    seqs.sort_unstable();
    seqs
}

/// A mutating step of the `Dir` layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    CreateNew,
    Rename,
    Remove,
    SyncDir,
    Write,
    SyncData,
    SetLen,
}

/// When the process dies.
#[derive(Clone, Copy, Debug)]
pub enum Death {
    /// Never.
    Never,
    /// Before the `n`-th (1-based) occurrence of `step`; that step does not happen.
    AtStep(Step, u64),
    /// After `n` mutating steps: the `n + 1`-th does not happen.
    AfterSteps(u64),
}

/// A `Dir` over a `SimDir` whose process dies at a chosen step: the step fails (and is not
/// done), and so does every later call. Then the test crashes the `SimDir`, which decides
/// what of the unsynced work survives, and restarts on a new handle.
#[derive(Debug, Clone)]
pub struct DyingDir {
    inner: SimDir,
    state: Arc<DyingState>,
}

#[derive(Debug)]
struct DyingState {
    death: Mutex<Death>,
    steps: AtomicU64,
    per_step: Mutex<Vec<(Step, u64)>>,
    dead: AtomicBool,
    /// A broken file system for canaries: `sync_dir` succeeds without syncing.
    skip_sync_dir: AtomicBool,
}

impl DyingDir {
    pub fn new(inner: SimDir, death: Death) -> DyingDir {
        DyingDir {
            inner,
            state: Arc::new(DyingState {
                death: Mutex::new(death),
                steps: AtomicU64::new(0),
                per_step: Mutex::new(Vec::new()),
                dead: AtomicBool::new(false),
                skip_sync_dir: AtomicBool::new(false),
            }),
        }
    }

    pub fn is_dead(&self) -> bool {
        self.state.dead.load(Ordering::SeqCst)
    }

    /// Mutating steps done so far.
    pub fn steps(&self) -> u64 {
        self.state.steps.load(Ordering::SeqCst)
    }

    /// Makes `sync_dir` a no-op that reports success (a canary's broken storage).
    pub fn skip_sync_dir(&self) {
        self.state.skip_sync_dir.store(true, Ordering::SeqCst);
    }

    pub fn set_death(&self, death: Death) {
        *self.state.death.lock().unwrap() = death;
    }
}

impl DyingState {
    fn alive(&self) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated process death"));
        }
        Ok(())
    }

    fn step(&self, step: Step) -> io::Result<()> {
        self.alive()?;
        let nth = {
            let mut per = self.per_step.lock().unwrap();
            match per.iter_mut().find(|(s, _)| *s == step) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    per.push((step, 1));
                    1
                }
            }
        };
        let done = self.steps.load(Ordering::SeqCst);
        let die = match *self.death.lock().unwrap() {
            Death::Never => false,
            Death::AtStep(s, n) => s == step && n == nth,
            Death::AfterSteps(n) => done >= n,
        };
        if die {
            self.dead.store(true, Ordering::SeqCst);
            return Err(io::Error::other(format!(
                "simulated process death before {step:?}"
            )));
        }
        self.steps.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Dir for DyingDir {
    fn list(&self) -> io::Result<Vec<String>> {
        self.state.alive()?;
        self.inner.list()
    }

    fn create_new(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        self.state.step(Step::CreateNew)?;
        let file = self.inner.create_new(name)?;
        Ok(Box::new(DyingFile {
            inner: file,
            state: Arc::clone(&self.state),
        }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        self.state.alive()?;
        let file = self.inner.open_append(name)?;
        Ok(Box::new(DyingFile {
            inner: file,
            state: Arc::clone(&self.state),
        }))
    }

    fn open_read(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        self.state.alive()?;
        self.inner.open_read(name)
    }

    fn read_immutable(&self, name: &str) -> io::Result<Bytes> {
        self.state.alive()?;
        self.inner.read_immutable(name)
    }

    fn size_bytes(&self, name: &str) -> io::Result<u64> {
        self.state.alive()?;
        self.inner.size_bytes(name)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.state.step(Step::Rename)?;
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.state.step(Step::Remove)?;
        self.inner.remove(name)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.state.step(Step::SyncDir)?;
        if self.state.skip_sync_dir.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.sync_dir()
    }

    fn lock(&self, name: &str) -> io::Result<DirLock> {
        self.state.alive()?;
        self.inner.lock(name)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.inner.path_of(name)
    }

    fn root(&self) -> PathBuf {
        self.inner.root()
    }
}

#[derive(Debug)]
struct DyingFile {
    inner: Box<dyn DirFile>,
    state: Arc<DyingState>,
}

impl DirFile for DyingFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.state.step(Step::Write)?;
        self.inner.write_all(buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.state.step(Step::Write)?;
        self.inner.write_at(offset, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.state.step(Step::SyncData)?;
        self.inner.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.state.step(Step::SetLen)?;
        self.inner.set_len(len)
    }

    fn size_bytes(&self) -> io::Result<u64> {
        self.state.alive()?;
        self.inner.size_bytes()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.state.alive()?;
        self.inner.read_at(offset, buf)
    }
}

/// A writer store over a `DyingDir` on the directory as the process running now sees it.
pub fn dying_store(sim: &SimDir, retained: usize, death: Death) -> (CheckpointStore, DyingDir) {
    let dying = DyingDir::new(sim.handle(), death);
    let store = CheckpointStore::open(
        Arc::new(DirBackend::new(Arc::new(dying.clone()))),
        config(retained),
    )
    .unwrap();
    (store, dying)
}

/// Captures `tracing` output of the closure, as text.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}
