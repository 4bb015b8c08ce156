//! [`SimDir`]: an in-memory [`Dir`] that models the page cache, crashes and failing disks.
//!
//! # The model
//!
//! Each file (an *inode*) has its **durable** bytes, what survives a power loss, and a list
//! of **pending** operations since its last successful `sync_data` (writes at an offset,
//! appends being writes at the end, and length changes). Readers through the running process see the *current* bytes: durable plus
//! every pending operation. The directory has its **durable entries** (name to inode) and
//! the pending changes since the last `sync_dir` (link, unlink, rename), in order.
//!
//! [`SimDir::crash`] turns the state into what a power loss could leave behind:
//!
//! - **Directory:** a prefix of the pending directory changes is applied to the durable
//!   entries, as a journaling file system commits metadata in order. A file whose name did
//!   not survive is lost whole, even if its data was synced.
//! - **Each file:** a prefix of its pending operations is applied in order (page writeback
//!   is modelled as ordered), and the first operation not kept whole may be kept in part:
//!   - *torn*: cut at a random byte;
//!   - *garbage*: cut, then random bytes up to the end of the 512-byte sector the cut is in;
//!   - *bit flip*: cut, and one bit flipped in the last 16 bytes before the cut (the
//!     sector in flight was garbled and nothing after it was written);
//!   - *zero fill*: the length of the whole write survived but its bytes from the cut on
//!     are zeros (metadata written, data not); where the write overwrote existing bytes,
//!     those keep their old content instead.
//!
//!   Damage is only ever at the end of what survives. Durable bytes are never changed by a
//!   crash; media corruption of durable bytes is a separate, explicit call
//!   ([`SimDir::corrupt`]).
//! - Handles opened before the crash stop working (every call fails), as the process that
//!   held them is gone; locks are released.
//!
//! Everything is driven by the seed, so a failing test is replayed exactly from it.
//!
//! # Fault injection
//!
//! - [`SimDir::fail_sync_data_after`] / [`SimDir::fail_sync_dir_after`]: the next
//!   `n + 1`-th call fails with `EIO`. A failing `sync_data` behaves as Linux does after a
//!   writeback error: the pending pages are marked clean without being written, so the
//!   file's durable length grows but the new bytes are zeros (overwritten bytes keep their
//!   old content), and a later `sync_data` succeeds without ever writing them. Retrying a failed fsync therefore "works" and
//!   still loses data, which is exactly what the model is for.
//! - [`SimDir::set_capacity_bytes`]: a full disk. A write that does not fit writes what
//!   fits and fails with `ENOSPC`, like `write(2)` followed by a retry.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{Dir, DirFile, DirLock, check_name};

const SECTOR_BYTES: u64 = 512;
const FLIP_WINDOW_BYTES: u64 = 16;
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// An in-memory directory modelling the page cache. Cheap to clone; clones share state
/// (they are the same directory).
///
/// A handle belongs to the "process" that was running when it was made: after
/// [`SimDir::crash`], every `Dir` call through a handle (and every file opened through
/// it) made before the crash fails, like the handles of a process that died. Make a new
/// handle with [`SimDir::handle`] for the restarted process. The test-only methods
/// (`crash`, `corrupt`, `contents`, faults, `stats`) work through any handle.
#[derive(Clone)]
pub struct SimDir {
    state: Arc<Mutex<State>>,
    generation: u64,
}

/// How [`SimDir::crash_with`] treats pending data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Per file and for the directory, a seeded random choice among the modes below.
    Random,
    /// A power loss right after the last sync: every pending byte and directory change
    /// is lost.
    LosePending,
    /// A process crash (`kill -9`) rather than a power loss: everything written survives,
    /// synced or not, because the kernel still has it.
    KeepPending,
    /// Directory changes survive; in each file the last pending write is cut at a random
    /// byte (everything before it survives).
    TearLastWrite,
    /// Like `TearLastWrite`, and the rest of the sector at the cut holds random bytes.
    GarbageInLastWrite,
    /// Like `TearLastWrite`, and one bit flipped in the last 16 bytes before the cut.
    FlipBitInLastWrite,
    /// The last pending write's full length survives but its bytes from a random cut on
    /// are zeros.
    ZeroFillLastWrite,
}

/// What a crash did, for test failure messages.
#[derive(Clone, Debug, Default)]
pub struct CrashReport {
    /// Pending directory changes kept, of those pending.
    pub dir_changes_kept: (usize, usize),
    /// One line per file that had pending data: name and what survived.
    pub files: Vec<String>,
    /// Names that existed before the crash and are gone after it.
    pub names_lost: Vec<String>,
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "directory changes kept {}/{}",
            self.dir_changes_kept.0, self.dir_changes_kept.1
        )?;
        if !self.names_lost.is_empty() {
            write!(f, "; names lost: {}", self.names_lost.join(", "))?;
        }
        for line in &self.files {
            write!(f, "; {line}")?;
        }
        Ok(())
    }
}

/// Call counters, for tests that check what the code under test did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// `sync_data` calls, failed ones included.
    pub sync_data_calls: u64,
    /// `sync_dir` calls, failed ones included.
    pub sync_dir_calls: u64,
    /// `sync_data` and `sync_dir` calls that failed (injected).
    pub sync_failures: u64,
    /// `write_all` calls.
    pub writes: u64,
    /// Crashes simulated.
    pub crashes: u64,
}

#[derive(Default)]
struct State {
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    entries: BTreeMap<String, u64>,
    durable_entries: BTreeMap<String, u64>,
    dir_changes: Vec<DirChange>,
    generation: u64,
    locks: HashMap<String, u64>,
    sync_data_fail_after: Option<u64>,
    /// Only syncs of the file currently under this name count towards the fault.
    sync_data_fail_name: Option<String>,
    sync_dir_fail_after: Option<u64>,
    capacity_bytes: Option<u64>,
    /// How long each `sync_data` takes (slept without holding the state).
    sync_latency: std::time::Duration,
    stats: SimStats,
}

#[derive(Default, Clone)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Clone)]
enum Pending {
    /// Bytes written at an offset (an append is a write at the then end).
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
}

#[derive(Clone, Debug)]
enum DirChange {
    Link { name: String, inode: u64 },
    Unlink { name: String },
    Rename { from: String, to: String },
}

impl DirChange {
    fn apply(&self, entries: &mut BTreeMap<String, u64>) {
        match self {
            DirChange::Link { name, inode } => {
                entries.insert(name.clone(), *inode);
            }
            DirChange::Unlink { name } => {
                entries.remove(name);
            }
            DirChange::Rename { from, to } => {
                if let Some(inode) = entries.remove(from) {
                    entries.insert(to.clone(), inode);
                }
            }
        }
    }
}

impl Default for SimDir {
    fn default() -> Self {
        SimDir::new()
    }
}

impl fmt::Debug for SimDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock_state();
        f.debug_struct("SimDir")
            .field("files", &state.entries.keys().collect::<Vec<_>>())
            .field("generation", &state.generation)
            .finish()
    }
}

impl SimDir {
    /// An empty directory.
    pub fn new() -> SimDir {
        SimDir {
            state: Arc::new(Mutex::new(State::default())),
            generation: 0,
        }
    }

    /// A new handle on the same directory for the process running now (after the latest
    /// crash); it stops working at the next crash.
    pub fn handle(&self) -> SimDir {
        let generation = self.lock_state().generation;
        SimDir {
            state: Arc::clone(&self.state),
            generation,
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The state, for a `Dir` call: fails if this handle predates a crash.
    fn live_state(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = lock(&self.state);
        if state.generation != self.generation {
            return Err(stale());
        }
        Ok(state)
    }

    /// Simulates a power loss with a seeded random outcome ([`CrashMode::Random`]).
    pub fn crash(&self, seed: u64) -> CrashReport {
        self.crash_with(CrashMode::Random, seed)
    }

    /// Simulates a crash with the given mode; `seed` drives every random choice.
    pub fn crash_with(&self, mode: CrashMode, seed: u64) -> CrashReport {
        let mut rng = SplitMix64::new(seed);
        let mut state = self.lock_state();
        let state = &mut *state;
        let mut report = CrashReport::default();

        let pending_changes = state.dir_changes.len();
        let kept_changes = match mode {
            CrashMode::LosePending => 0,
            CrashMode::KeepPending
            | CrashMode::TearLastWrite
            | CrashMode::GarbageInLastWrite
            | CrashMode::FlipBitInLastWrite
            | CrashMode::ZeroFillLastWrite => pending_changes,
            CrashMode::Random => rng.below(pending_changes as u64 + 1) as usize,
        };
        let mut entries = state.durable_entries.clone();
        for change in &state.dir_changes[..kept_changes] {
            change.apply(&mut entries);
        }
        report.dir_changes_kept = (kept_changes, pending_changes);
        report.names_lost = state
            .entries
            .keys()
            .filter(|n| !entries.contains_key(*n))
            .cloned()
            .collect();

        let mut inodes = HashMap::new();
        let mut names: Vec<_> = entries.iter().map(|(n, i)| (n.clone(), *i)).collect();
        names.sort();
        for (name, id) in names {
            if inodes.contains_key(&id) {
                continue;
            }
            let Some(inode) = state.inodes.get(&id) else {
                continue;
            };
            let (bytes, outcome) = crash_file(inode, mode, &mut rng);
            if let Some(outcome) = outcome {
                report.files.push(format!("{name}: {outcome}"));
            }
            inodes.insert(
                id,
                Inode {
                    durable: bytes.clone(),
                    current: bytes,
                    pending: Vec::new(),
                },
            );
        }
        state.inodes = inodes;
        state.entries = entries.clone();
        state.durable_entries = entries;
        state.dir_changes.clear();
        state.generation += 1;
        state.locks.clear();
        state.stats.crashes += 1;
        report
    }

    /// Makes the `n + 1`-th `sync_data` from now fail with `EIO` (`n = 0`: the next one).
    /// `None` clears the fault.
    pub fn fail_sync_data_after(&self, n: Option<u64>) {
        let mut state = self.lock_state();
        state.sync_data_fail_after = n;
        state.sync_data_fail_name = None;
    }

    /// Like [`SimDir::fail_sync_data_after`], counting only syncs of the file that is
    /// under `name` when it is synced (other threads may sync other files meanwhile).
    pub fn fail_sync_data_of(&self, name: &str, n: Option<u64>) {
        let mut state = self.lock_state();
        state.sync_data_fail_after = n;
        state.sync_data_fail_name = Some(name.to_owned());
    }

    /// Makes the `n + 1`-th `sync_dir` from now fail with `EIO`. `None` clears the fault.
    pub fn fail_sync_dir_after(&self, n: Option<u64>) {
        self.lock_state().sync_dir_fail_after = n;
    }

    /// Makes every `sync_data` take this long, like a real disk (default: instant). Other
    /// threads keep working meanwhile, so concurrent writers can share syncs, as they do
    /// on a disk.
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        self.lock_state().sync_latency = latency;
    }

    /// Limits the total bytes of all files; writes beyond fail with `ENOSPC`. `None`: no
    /// limit.
    pub fn set_capacity_bytes(&self, capacity: Option<u64>) {
        self.lock_state().capacity_bytes = capacity;
    }

    /// Total bytes of all files as the running process sees them.
    pub fn used_bytes(&self) -> u64 {
        self.lock_state().used_bytes()
    }

    /// Media corruption: XORs `mask` into the byte at `offset` of a file, in both its
    /// durable and current content (as if the disk returned a wrong byte from now on).
    pub fn corrupt(&self, name: &str, offset: u64, mask: u8) -> io::Result<()> {
        let mut state = self.lock_state();
        let id = *state.entries.get(name).ok_or_else(|| not_found(name))?;
        let inode = state.inodes.get_mut(&id).ok_or_else(|| not_found(name))?;
        let mut hit = false;
        for bytes in [&mut inode.durable, &mut inode.current] {
            if let Some(b) = bytes.get_mut(offset as usize) {
                *b ^= mask;
                hit = true;
            }
        }
        if !hit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} has no byte at offset {offset}"),
            ));
        }
        Ok(())
    }

    /// The file's content as the running process sees it, if the name exists.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.lock_state();
        let id = state.entries.get(name)?;
        state.inodes.get(id).map(|i| i.current.clone())
    }

    /// The file's durable content under its durable name: what a crash that loses every
    /// pending change would leave.
    pub fn durable_contents(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.lock_state();
        let id = state.durable_entries.get(name)?;
        state.inodes.get(id).map(|i| i.durable.clone())
    }

    /// Call counters so far.
    pub fn stats(&self) -> SimStats {
        self.lock_state().stats
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock (a failing assertion in a test thread) must not hide
    // the state from the test's own checks, so poisoning is ignored.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What survives of one file; returns the bytes and a description if anything was pending.
fn crash_file(inode: &Inode, mode: CrashMode, rng: &mut SplitMix64) -> (Vec<u8>, Option<String>) {
    let ops = &inode.pending;
    if ops.is_empty() {
        return (inode.durable.clone(), None);
    }
    #[derive(Clone, Copy, Debug)]
    enum Damage {
        None,
        Tear,
        Garbage,
        Flip,
        Zero,
    }
    let last = ops.len() - 1;
    let (kept_whole, damage) = match mode {
        CrashMode::LosePending => (0, Damage::None),
        CrashMode::KeepPending => (ops.len(), Damage::None),
        CrashMode::TearLastWrite => (last, Damage::Tear),
        CrashMode::GarbageInLastWrite => (last, Damage::Garbage),
        CrashMode::FlipBitInLastWrite => (last, Damage::Flip),
        CrashMode::ZeroFillLastWrite => (last, Damage::Zero),
        CrashMode::Random => {
            let kept = rng.below(ops.len() as u64 + 1) as usize;
            let damage = match rng.below(5) {
                0 => Damage::None,
                1 => Damage::Tear,
                2 => Damage::Garbage,
                3 => Damage::Flip,
                _ => Damage::Zero,
            };
            (kept, damage)
        }
    };
    let mut bytes = inode.durable.clone();
    for op in &ops[..kept_whole] {
        apply(&mut bytes, op);
    }
    let mut outcome = format!("{kept_whole}/{} pending ops kept whole", ops.len());
    if let (Some(Pending::Write { offset, data }), false) =
        (ops.get(kept_whole), matches!(damage, Damage::None))
    {
        let start = *offset;
        let len = data.len() as u64;
        let cut = rng.below(len + 1);
        write_into(&mut bytes, start, &data[..cut as usize]);
        let end = start + cut;
        match damage {
            Damage::None => {}
            Damage::Tear => outcome += &format!(", next write torn at byte {end}"),
            Damage::Garbage => {
                let garbage_end = end.div_ceil(SECTOR_BYTES).max(1) * SECTOR_BYTES;
                let garbage_end = garbage_end.min(start + len);
                let garbage: Vec<u8> = (end..garbage_end).map(|_| rng.next() as u8).collect();
                write_into(&mut bytes, end, &garbage);
                outcome +=
                    &format!(", next write torn at byte {end} then garbage to {garbage_end}");
            }
            Damage::Flip => {
                let window = cut.min(FLIP_WINDOW_BYTES);
                if window > 0 {
                    let at = end - 1 - rng.below(window);
                    let bit = 1u8 << rng.below(8);
                    bytes[at as usize] ^= bit;
                    outcome += &format!(
                        ", next write torn at byte {end} with bit {bit:#04x} flipped at byte {at}"
                    );
                } else {
                    outcome += &format!(", next write torn at byte {end}");
                }
            }
            Damage::Zero => {
                // The file's new length reached the disk, the data from the cut on did not.
                if (bytes.len() as u64) < start + len {
                    bytes.resize((start + len) as usize, 0);
                }
                outcome += &format!(
                    ", next write zero-filled from byte {end} to {}",
                    start + len
                );
            }
        }
    }
    (bytes, Some(outcome))
}

fn apply(bytes: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => write_into(bytes, *offset, data),
        Pending::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// `pwrite` on a byte vector: extends with zeros up to `offset` if needed.
fn write_into(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let offset = offset as usize;
    let end = offset + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset..end].copy_from_slice(data);
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|i| i.current.len() as u64).sum()
    }

    fn inode_of(&self, name: &str) -> io::Result<u64> {
        self.entries
            .get(name)
            .copied()
            .ok_or_else(|| not_found(name))
    }

    /// Counts down an injected fault; true if this call must fail.
    fn trip(counter: &mut Option<u64>) -> bool {
        match counter {
            Some(0) => {
                *counter = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{name}: no such file in SimDir"),
    )
}

fn stale() -> io::Error {
    io::Error::other("SimDir handle was opened before a simulated crash; its process is gone")
}

impl Dir for SimDir {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.live_state()?.entries.keys().cloned().collect())
    }

    fn create_new(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        check_name(name)?;
        let mut state = self.live_state()?;
        if state.entries.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} already exists in SimDir"),
            ));
        }
        state.next_inode += 1;
        let inode = state.next_inode;
        state.inodes.insert(inode, Inode::default());
        state.entries.insert(name.to_owned(), inode);
        state.dir_changes.push(DirChange::Link {
            name: name.to_owned(),
            inode,
        });
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode,
            generation: state.generation,
            writable: true,
        }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        check_name(name)?;
        let state = self.live_state()?;
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode: state.inode_of(name)?,
            generation: state.generation,
            writable: true,
        }))
    }

    fn open_read(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        check_name(name)?;
        let state = self.live_state()?;
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode: state.inode_of(name)?,
            generation: state.generation,
            writable: false,
        }))
    }

    fn read_immutable(&self, name: &str) -> io::Result<Bytes> {
        check_name(name)?;
        let state = self.live_state()?;
        let id = state.inode_of(name)?;
        Ok(Bytes::copy_from_slice(&state.inodes[&id].current))
    }

    fn size_bytes(&self, name: &str) -> io::Result<u64> {
        check_name(name)?;
        let state = self.live_state()?;
        let id = state.inode_of(name)?;
        Ok(state.inodes[&id].current.len() as u64)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        let mut state = self.live_state()?;
        let inode = state.inode_of(from)?;
        state.entries.remove(from);
        state.entries.insert(to.to_owned(), inode);
        state.dir_changes.push(DirChange::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        let mut state = self.live_state()?;
        state.inode_of(name)?;
        state.entries.remove(name);
        state.dir_changes.push(DirChange::Unlink {
            name: name.to_owned(),
        });
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.live_state()?;
        state.stats.sync_dir_calls += 1;
        if State::trip(&mut state.sync_dir_fail_after) {
            state.stats.sync_failures += 1;
            return Err(io::Error::from_raw_os_error(EIO));
        }
        state.durable_entries = state.entries.clone();
        state.dir_changes.clear();
        Ok(())
    }

    fn lock(&self, name: &str) -> io::Result<DirLock> {
        check_name(name)?;
        let mut state = self.live_state()?;
        if state.locks.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{name} is locked by another holder"),
            ));
        }
        let generation = state.generation;
        state.locks.insert(name.to_owned(), generation);
        Ok(DirLock::new(Box::new(SimLockGuard {
            state: Arc::clone(&self.state),
            name: name.to_owned(),
            generation,
        })))
    }

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("sim:/{name}"))
    }

    fn root(&self) -> PathBuf {
        PathBuf::from("sim:/")
    }
}

struct SimLockGuard {
    state: Arc<Mutex<State>>,
    name: String,
    generation: u64,
}

impl Drop for SimLockGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if state.locks.get(&self.name) == Some(&self.generation) {
            state.locks.remove(&self.name);
        }
    }
}

struct SimFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    generation: u64,
    writable: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("inode", &self.inode)
            .finish()
    }
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut state = lock(&self.state);
        if state.generation != self.generation {
            return Err(stale());
        }
        if !state.inodes.contains_key(&self.inode) {
            return Err(stale());
        }
        f(&mut state, self.inode)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "SimDir file opened read-only",
            ))
        }
    }
}

impl DirFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let end = self.size_bytes()?;
        self.write_at(end, buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        self.with(|state, id| {
            state.stats.writes += 1;
            let current = state.inodes.get(&id).map_or(0, |i| i.current.len() as u64);
            // Only bytes beyond the current end take new space.
            let growth = (offset + buf.len() as u64).saturating_sub(current);
            let room = match state.capacity_bytes {
                Some(cap) => cap.saturating_sub(state.used_bytes()),
                None => u64::MAX,
            };
            let fits = if growth <= room {
                buf.len()
            } else {
                // Write up to the end of the free space, like write(2) on a full disk.
                (current + room)
                    .saturating_sub(offset)
                    .min(buf.len() as u64) as usize
            };
            let inode = state.inodes.get_mut(&id).ok_or_else(stale)?;
            if fits > 0 {
                write_into(&mut inode.current, offset, &buf[..fits]);
                inode.pending.push(Pending::Write {
                    offset,
                    data: buf[..fits].to_vec(),
                });
            }
            if fits < buf.len() {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let latency = lock(&self.state).sync_latency;
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        self.with(|state, id| {
            state.stats.sync_data_calls += 1;
            let counts = match &state.sync_data_fail_name {
                None => true,
                Some(name) => state.entries.get(name) == Some(&id),
            };
            let fail = counts && State::trip(&mut state.sync_data_fail_after);
            let inode = state.inodes.get_mut(&id).ok_or_else(stale)?;
            if fail {
                // Writeback failed: the kernel marks the pages clean without writing them.
                // The durable length follows the pending operations, the bytes are zeros.
                for op in std::mem::take(&mut inode.pending) {
                    match op {
                        Pending::Write { offset, data } => {
                            let end = offset as usize + data.len();
                            if inode.durable.len() < end {
                                inode.durable.resize(end, 0);
                            }
                        }
                        Pending::SetLen(len) => inode.durable.resize(len as usize, 0),
                    }
                }
                state.stats.sync_failures += 1;
                return Err(io::Error::from_raw_os_error(EIO));
            }
            // Apply the pending operations rather than copying `current`: bytes whose
            // writeback failed earlier stay lost (zeros) even though the process still
            // sees them, exactly as after a real writeback error.
            for op in std::mem::take(&mut inode.pending) {
                apply(&mut inode.durable, &op);
            }
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with(|state, id| {
            let current = state.inodes.get(&id).map_or(0, |i| i.current.len() as u64);
            if let Some(cap) = state.capacity_bytes
                && len > current
                && state.used_bytes() + (len - current) > cap
            {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            let inode = state.inodes.get_mut(&id).ok_or_else(stale)?;
            inode.current.resize(len as usize, 0);
            inode.pending.push(Pending::SetLen(len));
            Ok(())
        })
    }

    fn size_bytes(&self) -> io::Result<u64> {
        self.with(|state, id| Ok(state.inodes[&id].current.len() as u64))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|state, id| {
            let current = &state.inodes[&id].current;
            let start = (offset as usize).min(current.len());
            let n = buf.len().min(current.len() - start);
            buf[..n].copy_from_slice(&current[start..start + n]);
            Ok(n)
        })
    }
}

/// A small deterministic generator (SplitMix64): enough randomness for crash outcomes,
/// and no dependency.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (0 if `bound` is 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &SimDir, name: &str, data: &[u8]) -> Box<dyn DirFile> {
        let mut f = dir.create_new(name).unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn synced_data_under_a_synced_name_survives_every_crash() {
        for seed in 0..200 {
            let dir = SimDir::new();
            let mut f = write(&dir, "a", b"durable");
            f.sync_data().unwrap();
            dir.sync_dir().unwrap();
            f.write_all(b" and pending").unwrap();
            let report = dir.crash(seed);
            let after = dir
                .contents("a")
                .unwrap_or_else(|| panic!("seed {seed}: {report}"));
            assert!(after.starts_with(b"durable"), "seed {seed}: {report}");
        }
    }

    #[test]
    fn unsynced_name_is_lost_when_pending_changes_are() {
        let dir = SimDir::new();
        let mut f = write(&dir, "a", b"data");
        f.sync_data().unwrap();
        dir.crash_with(CrashMode::LosePending, 1);
        assert_eq!(dir.contents("a"), None);
        assert!(dir.handle().list().unwrap().is_empty());
    }

    #[test]
    fn rename_without_dir_sync_can_revert() {
        let dir = SimDir::new();
        let mut old = write(&dir, "current", b"old");
        old.sync_data().unwrap();
        dir.sync_dir().unwrap();
        let mut new = write(&dir, "current.tmp", b"new");
        new.sync_data().unwrap();
        dir.rename("current.tmp", "current").unwrap();
        dir.crash_with(CrashMode::LosePending, 7);
        assert_eq!(dir.contents("current").unwrap(), b"old");
    }

    #[test]
    fn write_atomic_survives_a_crash_right_after() {
        for seed in 0..100 {
            let dir = SimDir::new();
            crate::fs::write_atomic(&dir, "ckpt", b"version 1").unwrap();
            crate::fs::write_atomic(&dir, "ckpt", b"version 2").unwrap();
            dir.crash(seed);
            assert_eq!(dir.contents("ckpt").unwrap(), b"version 2", "seed {seed}");
        }
    }

    #[test]
    fn failed_sync_loses_the_pending_bytes_even_if_a_retry_succeeds() {
        let dir = SimDir::new();
        let mut f = write(&dir, "a", b"");
        dir.sync_dir().unwrap();
        f.write_all(b"acked?").unwrap();
        dir.fail_sync_data_after(Some(0));
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        // The retry "succeeds", but the bytes were never written: this is why a failed
        // fsync must poison the writer instead of being retried.
        f.sync_data().unwrap();
        dir.crash_with(CrashMode::LosePending, 0);
        assert_eq!(dir.contents("a").unwrap(), vec![0u8; 6]);
    }

    #[test]
    fn full_disk_writes_what_fits_and_fails() {
        let dir = SimDir::new();
        dir.set_capacity_bytes(Some(10));
        let mut f = dir.create_new("a").unwrap();
        f.write_all(b"0123456").unwrap();
        let err = f.write_all(b"789abc").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(dir.contents("a").unwrap(), b"0123456789");
    }

    #[test]
    fn handles_from_before_a_crash_fail() {
        let dir = SimDir::new();
        let mut f = write(&dir, "a", b"x");
        f.sync_data().unwrap();
        dir.sync_dir().unwrap();
        dir.crash(3);
        assert!(f.write_all(b"y").is_err());
        assert!(f.sync_data().is_err());
        assert!(
            dir.create_new("b").is_err(),
            "the dead process cannot create files"
        );
        assert_eq!(dir.contents("a").unwrap(), b"x");
        let restarted = dir.handle();
        restarted.create_new("b").unwrap();
        assert_eq!(
            restarted.list().unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }

    #[test]
    fn crash_damage_is_only_at_the_end_of_the_last_write() {
        for (mode, seed) in [
            (CrashMode::TearLastWrite, 1),
            (CrashMode::GarbageInLastWrite, 2),
            (CrashMode::FlipBitInLastWrite, 3),
            (CrashMode::ZeroFillLastWrite, 4),
        ] {
            let dir = SimDir::new();
            let mut f = write(&dir, "a", &[1u8; 100]);
            f.sync_data().unwrap();
            dir.sync_dir().unwrap();
            f.write_all(&[2u8; 1000]).unwrap();
            f.write_all(&[3u8; 1000]).unwrap();
            let report = dir.crash_with(mode, seed);
            let after = dir.contents("a").unwrap();
            assert_eq!(
                &after[..1100],
                &[&[1u8; 100][..], &[2u8; 1000][..]].concat()[..],
                "{mode:?}: {report}"
            );
            assert!(after.len() <= 2100, "{mode:?}: {report}");
        }
    }

    #[test]
    fn torn_overwrite_keeps_the_old_bytes_after_the_cut() {
        for seed in 0..50 {
            let dir = SimDir::new();
            let mut f = write(&dir, "a", &[0u8; 4096]);
            f.sync_data().unwrap();
            dir.sync_dir().unwrap();
            f.write_at(100, &[9u8; 1000]).unwrap();
            let report = dir.crash_with(CrashMode::ZeroFillLastWrite, seed);
            let after = dir.contents("a").unwrap();
            assert_eq!(
                after.len(),
                4096,
                "an overwrite never changes the length: {report}"
            );
            let nines = after[100..1100].iter().take_while(|&&b| b == 9).count();
            assert!(after[100 + nines..].iter().all(|&b| b == 0), "{report}");
        }
    }

    #[test]
    fn same_seed_same_outcome() {
        let run = |seed| {
            let dir = SimDir::new();
            let mut f = write(&dir, "a", &[7u8; 5000]);
            f.write_all(&[8u8; 5000]).unwrap();
            dir.crash(seed);
            dir.contents("a")
        };
        for seed in 0..20 {
            assert_eq!(run(seed), run(seed));
        }
    }
}
