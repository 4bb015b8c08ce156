//! [`DirSegmentStore`]: segments as files in a [`Dir`].

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::{SegmentStore, SegmentWriter};
use crate::fs::{Dir, DirFile};
use crate::lsn::SegmentId;

/// Name of the lock file that keeps a second writer out of a WAL directory.
pub const LOCK_FILE_NAME: &str = "wal.lock";

/// Prefix of the zero-filled files prepared for the next segment (with preallocation):
/// `preallocated-<n>.wal.tmp`. Not segment names, so recovery and the tools ignore them; a
/// writer removes stale ones when it starts preparing.
pub const PREPARED_FILE_PREFIX: &str = "preallocated-";
const PREPARED_FILE_SUFFIX: &str = ".wal.tmp";

/// Most prepared files kept ready (retired segments beyond this are deleted). Two: with
/// regular retention a retired segment is always at hand, so no zeros are written.
pub const PREPARED_FILES_MAX: usize = 2;

/// Average bytes per sync at and above which segments are not zero-filled ahead of use
/// (see `PrepState::zero_fill_pays`). Below it a sync's cost is mostly its fixed latency
/// (about 100 us on the project's machine, the time to move about 100 KB at its ~1 GB/s),
/// and zero-filling in the background uses bandwidth the log leaves idle; above it the log
/// is bandwidth-bound and writing every byte twice costs more than the metadata writes it
/// saves (measured: 4 x 64 KiB per sync, zero-filled 535 MB/s against 743 MB/s
/// appending).
pub const ZERO_FILL_BYTES_PER_SYNC_MAX: u64 = 256 << 10;

/// Bytes per write when zero-filling a prepared segment.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".wal";

/// One file per segment in a directory: `segment-00000000000000000001.wal`, ...
///
/// The 20-digit zero-padded id makes names sort in creation order. Files with other names
/// are ignored (the lock file, the prepared file, an operator's notes).
///
/// # Preallocation
///
/// On most file systems an `fdatasync` after appending to a file must also write the new
/// file length and block allocation (on ext4 with a journal, a journal commit shared with
/// every other writer on the file system; without one, as on the project's machine, an
/// inode write), while an `fdatasync` after overwriting blocks that are already allocated
/// and written only flushes the data. With [`DirSegmentStore::with_preallocation`], a
/// background thread keeps one zero-filled, synced file ready
/// ([`PREPARED_FILE_PREFIX`]), starting when the writer takes the log's lock; `create`
/// writes the header into it and renames it to the
/// segment's name, and appends then overwrite zeros. `finish` (at seal and close) trims
/// the unused zeros, so a sealed segment ends exactly after its last record. A crash
/// leaves zeros after the last record of the newest segment, which recovery treats as the
/// torn tail it is (nothing valid follows) and cuts. When syncs are large (at least
/// [`ZERO_FILL_BYTES_PER_SYNC_MAX`] on average), zero-filling would cost more than it
/// saves and new segments simply grow. Retention recycles: a retired
/// segment becomes the next prepared file (its header zeroed first, durably) instead of
/// being deleted, so in steady state no zeros are written at all. If no prepared file is
/// ready (or
/// preparing fails, for example on a full disk), `create` falls back to a plain file that
/// grows by appending: preallocation only ever changes speed, never what is durable.
#[derive(Debug)]
pub struct DirSegmentStore {
    dir: Arc<dyn Dir>,
    /// A read handle on the segment most recently read with `read_at` (the open segment,
    /// in practice), so reads of recent records do not reopen the file each time.
    reader: Mutex<Option<(SegmentId, Arc<dyn DirFile>)>>,
    preparer: Option<Arc<Preparer>>,
}

impl DirSegmentStore {
    /// A store over `dir`, without preallocation.
    pub fn new(dir: Arc<dyn Dir>) -> DirSegmentStore {
        DirSegmentStore {
            dir,
            reader: Mutex::new(None),
            preparer: None,
        }
    }

    /// A store over `dir` that preallocates segments of `segment_bytes` (use the WAL's
    /// `segment_size_max_bytes`). The background thread starts with the first `create`,
    /// so a store only used for reading never writes.
    pub fn with_preallocation(dir: Arc<dyn Dir>, segment_bytes: u64) -> DirSegmentStore {
        let preparer = Arc::new(Preparer {
            dir: Arc::clone(&dir),
            bytes: segment_bytes,
            state: Mutex::new(PrepState::default()),
            wake: Condvar::new(),
        });
        DirSegmentStore {
            dir,
            reader: Mutex::new(None),
            preparer: Some(preparer),
        }
    }

    /// The file name of a segment.
    pub fn file_name(id: SegmentId) -> String {
        format!("{SEGMENT_PREFIX}{:020}{SEGMENT_SUFFIX}", id.get())
    }

    /// The segment id in a file name, if it is a segment file name.
    pub fn parse_file_name(name: &str) -> Option<SegmentId> {
        let digits = name
            .strip_prefix(SEGMENT_PREFIX)?
            .strip_suffix(SEGMENT_SUFFIX)?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits
            .parse::<u64>()
            .ok()
            .filter(|&id| id > 0)
            .map(SegmentId::new)
    }

    /// The directory underneath.
    pub fn dir(&self) -> &Arc<dyn Dir> {
        &self.dir
    }

    /// Prepared files ready to become segments now.
    pub fn prepared_files(&self) -> usize {
        self.preparer.as_ref().map_or(0, |p| p.lock().ready.len())
    }

    /// Waits until a prepared file is ready (true) or `timeout` passes (false). For
    /// benchmarks and tests that measure the steady state of a long-running log.
    pub fn wait_for_prepared(&self, timeout: std::time::Duration) -> bool {
        let Some(preparer) = &self.preparer else {
            return false;
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut state = preparer.lock();
        while state.ready.is_empty() {
            let now = std::time::Instant::now();
            if now >= deadline || state.stop {
                return false;
            }
            state = preparer
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// What preallocation has done so far (all zero without preallocation).
    pub fn stats(&self) -> DirStoreStats {
        self.preparer
            .as_ref()
            .map_or_else(DirStoreStats::default, |p| p.lock().stats)
    }

    /// Retention with preallocation: instead of deleting a retired segment, keep its
    /// (allocated, written) blocks as the next prepared file, so no zeros need writing.
    ///
    /// Order matters. First the rename, made durable like a deletion: until it is, the
    /// file must stay a valid segment, because a crash may bring it back under its name.
    /// Then its header is zeroed, durably, before it may become a new segment: if a crash
    /// then hits before the new segment's header is durable, recovery must see an
    /// unreadable header (a torn newest segment, deleted) rather than the retired
    /// segment's valid one (a foreign file). The retired records after the header carry
    /// the old segment id, so they never verify as the new segment's records.
    fn recycle(&self, name: &str, preparer: &Arc<Preparer>) -> io::Result<()> {
        let spare = preparer.next_name();
        self.dir.rename(name, &spare)?;
        self.dir.sync_dir()?;
        // The retired name is durably gone: what follows only decides whether the file is
        // worth keeping.
        let zeroed = self.dir.open_append(&spare).and_then(|mut file| {
            file.write_at(0, &[0u8; crate::format::SEGMENT_HEADER_LEN])?;
            file.sync_data()?;
            Ok(file)
        });
        match zeroed {
            Ok(file) => {
                preparer.lock().stats.segments_recycled += 1;
                preparer.offer(spare, file);
            }
            Err(e) => {
                tracing::warn!(error = %e, file = %spare, "cannot recycle a retired WAL segment");
                let _ = self.dir.remove(&spare);
            }
        }
        Ok(())
    }

    fn reader(&self, id: SegmentId) -> io::Result<Arc<dyn DirFile>> {
        let mut cached = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_id, file)) = cached.as_ref()
            && *cached_id == id
        {
            return Ok(Arc::clone(file));
        }
        let file: Arc<dyn DirFile> = Arc::from(self.dir.open_read(&Self::file_name(id))?);
        *cached = Some((id, Arc::clone(&file)));
        Ok(file)
    }
}

impl SegmentStore for DirSegmentStore {
    fn location(&self) -> String {
        self.dir.root().display().to_string()
    }

    fn segment_name(&self, id: SegmentId) -> String {
        self.dir.path_of(&Self::file_name(id)).display().to_string()
    }

    fn seals_on_sync(&self) -> bool {
        false
    }

    fn list(&self) -> io::Result<Vec<SegmentId>> {
        let mut ids: Vec<_> = self
            .dir
            .list()?
            .iter()
            .filter_map(|n| Self::parse_file_name(n))
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn create(&self, id: SegmentId, header: &[u8]) -> io::Result<Box<dyn SegmentWriter>> {
        let name = Self::file_name(id);
        if let Some((prepared, mut file)) = self.preparer.as_ref().and_then(|p| p.take_ready()) {
            // rename() would silently replace an existing segment: refuse, as create_new does.
            match self.dir.size_bytes(&name) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{name} already exists"),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let allocated = file.size_bytes()?;
            // The header goes in before the rename: a segment name never shows another
            // segment's bytes. Until the first sync the header may not be durable; a crash
            // then leaves a newest segment without a valid header, which recovery deletes.
            file.write_at(0, header)?;
            self.dir.rename(&prepared, &name)?;
            return Ok(Box::new(DirSegmentWriter {
                file,
                dir: Arc::clone(&self.dir),
                position: header.len() as u64,
                allocated,
                name_synced: false,
                syncs: 0,
                preparer: self.preparer.clone(),
            }));
        }
        let mut file = self.dir.create_new(&name)?;
        if let Err(e) = file.write_all(header) {
            // Leave no half-made segment behind (a full disk, typically), so that the next
            // attempt with the same id can create it. If the removal fails too, the next
            // create fails with AlreadyExists, naming the file.
            drop(file);
            let _ = self.dir.remove(&name);
            return Err(e);
        }
        Ok(Box::new(DirSegmentWriter {
            file,
            dir: Arc::clone(&self.dir),
            position: header.len() as u64,
            allocated: header.len() as u64,
            name_synced: false,
            syncs: 0,
            preparer: self.preparer.clone(),
        }))
    }

    fn read(&self, id: SegmentId) -> io::Result<Bytes> {
        self.dir.read_immutable(&Self::file_name(id))
    }

    fn read_at(&self, id: SegmentId, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = self.reader(id)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(offset, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()> {
        let mut file = self.dir.open_append(&Self::file_name(id))?;
        file.set_len(len)?;
        file.sync_data()
    }

    fn delete(&self, id: SegmentId) -> io::Result<()> {
        {
            let mut cached = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            if cached
                .as_ref()
                .is_some_and(|(cached_id, _)| *cached_id == id)
            {
                *cached = None;
            }
        }
        let name = Self::file_name(id);
        if let Some(preparer) = &self.preparer
            && preparer.start()
            && preparer.wants_spare(self.dir.size_bytes(&name).unwrap_or(0))
        {
            return self.recycle(&name, preparer);
        }
        self.dir.remove(&name)?;
        self.dir.sync_dir()
    }

    fn lock(&self) -> io::Result<Box<dyn Send + Sync>> {
        let lock = self.dir.lock(LOCK_FILE_NAME)?;
        // Only a writer takes the lock: the moment to start preparing the first segment.
        if let Some(preparer) = &self.preparer
            && preparer.start()
        {
            preparer.request();
        }
        Ok(Box::new(lock))
    }
}

impl Drop for DirSegmentStore {
    fn drop(&mut self) {
        if let Some(preparer) = &self.preparer {
            preparer.stop();
        }
    }
}

/// Counters of [`DirSegmentStore`]'s preallocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStoreStats {
    /// Segments created from a prepared (zero-filled or recycled) file.
    pub segments_preallocated: u64,
    /// Segments created as plain appended files because no prepared file was ready.
    pub segments_appended: u64,
    /// Retired segments kept as prepared files instead of deleted.
    pub segments_recycled: u64,
    /// Zero bytes written to prepare files.
    pub zero_filled_bytes: u64,
}

#[derive(Debug)]
struct DirSegmentWriter {
    file: Box<dyn DirFile>,
    dir: Arc<dyn Dir>,
    /// Where the next append goes: the end of the segment's data.
    position: u64,
    /// The file's length, which exceeds `position` while preallocated zeros remain.
    allocated: u64,
    /// Whether the directory was fsynced since this segment was created. The first sync
    /// of a segment fsyncs the directory too, so the new name survives a crash before any
    /// record in it is acknowledged.
    name_synced: bool,
    /// Syncs of this segment, reported to the preparer with the segment's size.
    syncs: u64,
    preparer: Option<Arc<Preparer>>,
}

impl SegmentWriter for DirSegmentWriter {
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        // On error a prefix may have been written; `position` stays at the last known good
        // end and the WAL calls `rewind(position)` before doing anything else.
        self.file.write_vectored_at(self.position, parts)?;
        self.position += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        self.allocated = self.allocated.max(self.position);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.syncs += 1;
        if !self.name_synced {
            self.dir.sync_dir()?;
            self.name_synced = true;
        }
        Ok(())
    }

    fn rewind(&mut self, len: u64) -> io::Result<()> {
        // Cutting also drops any preallocated zeros: rare (a failed write), and simple.
        self.file.set_len(len)?;
        self.position = len;
        self.allocated = len;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.position
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.allocated > self.position {
            self.file.set_len(self.position)?;
            self.allocated = self.position;
            self.file.sync_data()?;
        }
        if let Some(preparer) = &self.preparer {
            preparer.report(self.position, self.syncs);
        }
        Ok(())
    }
}

/// Keeps prepared files ready for the next segments (see "Preallocation"): retired
/// segments handed over by retention, up to [`PREPARED_FILES_MAX`], else one zero-filled
/// file made when none is left.
#[derive(Debug)]
struct Preparer {
    dir: Arc<dyn Dir>,
    bytes: u64,
    state: Mutex<PrepState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct PrepState {
    /// A prepared file and its name.
    ready: std::collections::VecDeque<(String, Box<dyn DirFile>)>,
    /// Number for the next prepared file's name.
    next_serial: u64,
    stats: DirStoreStats,
    /// Bytes per sync of the last finished segment; `None` until one finished.
    bytes_per_sync: Option<u64>,
    /// A segment was created since the last preparation: prepare one if none is ready.
    wanted: bool,
    stop: bool,
    thread: Option<JoinHandle<()>>,
}

impl PrepState {
    /// Whether zero-filling a file is worth its writes. Preallocation saves each sync a
    /// metadata write (hundreds of microseconds to milliseconds) but zero-filling writes
    /// every byte twice; when syncs carry [`ZERO_FILL_BYTES_PER_SYNC_MAX`]
    /// or more, writing twice costs more than it saves, so new segments just grow.
    /// Recycled segments cost nothing and are always used.
    fn zero_fill_pays(&self) -> bool {
        self.bytes_per_sync
            .is_none_or(|b| b < ZERO_FILL_BYTES_PER_SYNC_MAX)
    }
}

impl Preparer {
    fn lock(&self) -> MutexGuard<'_, PrepState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts preparing, once: removes prepared files left by an earlier process (only
    /// the writer, which holds the log's lock, gets here) and starts the thread. Done
    /// before this process makes prepared files of its own, so it never removes one of
    /// them. Returns false if the preparer is stopped.
    fn start(self: &Arc<Self>) -> bool {
        let mut state = self.lock();
        if state.stop {
            return false;
        }
        if state.thread.is_some() {
            return true;
        }
        if let Ok(names) = self.dir.list() {
            for name in names {
                if name.starts_with(PREPARED_FILE_PREFIX) && name.ends_with(PREPARED_FILE_SUFFIX) {
                    let _ = self.dir.remove(&name);
                }
            }
        }
        let preparer = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("wal-preallocate".to_owned())
            .spawn(move || preparer.run());
        match spawned {
            Ok(handle) => state.thread = Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the WAL preallocation thread");
                state.stop = true;
                return false;
            }
        }
        true
    }

    /// Takes the prepared file (and its name) if there is one, and asks for the next.
    fn take_ready(self: &Arc<Self>) -> Option<(String, Box<dyn DirFile>)> {
        if !self.start() {
            return None;
        }
        let mut state = self.lock();
        let ready = state.ready.pop_front();
        if ready.is_some() {
            state.stats.segments_preallocated += 1;
        } else {
            state.stats.segments_appended += 1;
        }
        state.wanted = true;
        drop(state);
        self.wake.notify_all();
        ready
    }

    fn run(&self) {
        loop {
            let name = {
                let mut state = self.lock();
                while !(state.stop
                    || (state.wanted && state.ready.is_empty() && state.zero_fill_pays()))
                {
                    state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.stop {
                    return;
                }
                state.wanted = false;
                state.next_serial += 1;
                format!(
                    "{PREPARED_FILE_PREFIX}{}{PREPARED_FILE_SUFFIX}",
                    state.next_serial
                )
            };
            match self.prepare(&name) {
                Ok(Some(file)) => self.offer(name, file),
                Ok(None) => return, // stopped while preparing
                Err(e) => {
                    // Not fatal: segments are then created without preallocation.
                    tracing::warn!(
                        error = %e,
                        file = %self.dir.path_of(&name).display(),
                        "cannot preallocate the next WAL segment"
                    );
                    let _ = self.dir.remove(&name);
                }
            }
        }
    }

    /// Records how the last segment was written, for [`PrepState::zero_fill_pays`].
    fn report(&self, bytes: u64, syncs: u64) {
        if let Some(per_sync) = bytes.checked_div(syncs) {
            self.lock().bytes_per_sync = Some(per_sync);
        }
        self.wake.notify_all();
    }

    /// Asks for a prepared file if none is ready.
    fn request(&self) {
        self.lock().wanted = true;
        self.wake.notify_all();
    }

    /// A fresh name for a prepared file.
    fn next_name(&self) -> String {
        let mut state = self.lock();
        state.next_serial += 1;
        format!(
            "{PREPARED_FILE_PREFIX}{}{PREPARED_FILE_SUFFIX}",
            state.next_serial
        )
    }

    /// Whether a retired segment of `len` bytes is worth keeping as a prepared file: fewer
    /// than [`PREPARED_FILES_MAX`] are ready, and it holds at least half a segment of
    /// allocated blocks.
    fn wants_spare(&self, len: u64) -> bool {
        let state = self.lock();
        !state.stop && state.ready.len() < PREPARED_FILES_MAX && len >= self.bytes / 2
    }

    /// Adds a prepared file to the ready ones, or removes it if enough are ready.
    fn offer(&self, name: String, file: Box<dyn DirFile>) {
        let mut state = self.lock();
        if state.ready.len() < PREPARED_FILES_MAX && !state.stop {
            state.ready.push_back((name, file));
            drop(state);
            self.wake.notify_all();
            return;
        }
        drop(state);
        drop(file);
        let _ = self.dir.remove(&name);
    }

    fn prepare(&self, name: &str) -> io::Result<Option<Box<dyn DirFile>>> {
        let mut file = self.dir.create_new(name)?;
        let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(self.bytes as usize).max(1)];
        let mut written = 0u64;
        while written < self.bytes {
            if self.lock().stop {
                drop(file);
                let _ = self.dir.remove(name);
                return Ok(None);
            }
            let n = (self.bytes - written).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            written += n as u64;
            self.lock().stats.zero_filled_bytes += n as u64;
        }
        // Written and synced zeros, not a hole or an unwritten extent: that is what makes
        // later overwrites data-only for fdatasync.
        file.sync_data()?;
        Ok(Some(file))
    }

    fn stop(&self) {
        let thread = {
            let mut state = self.lock();
            state.stop = true;
            state.thread.take()
        };
        self.wake.notify_all();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        // An unused prepared file is only disk space; remove it (best effort).
        let ready = std::mem::take(&mut self.lock().ready);
        for (name, file) in ready {
            drop(file);
            let _ = self.dir.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_roundtrip_and_sort() {
        let name = DirSegmentStore::file_name(SegmentId::new(42));
        assert_eq!(name, "segment-00000000000000000042.wal");
        assert_eq!(
            DirSegmentStore::parse_file_name(&name),
            Some(SegmentId::new(42))
        );
        assert!(
            DirSegmentStore::file_name(SegmentId::new(9))
                < DirSegmentStore::file_name(SegmentId::new(10))
        );
        for bad in [
            "segment-42.wal",
            "segment-0000000000000000004x.wal",
            "wal.lock",
            "segment-00000000000000000000.wal",
        ] {
            assert_eq!(DirSegmentStore::parse_file_name(bad), None, "{bad}");
        }
    }
}
