//! A directory of files, modelled as exactly the POSIX subset durable storage code needs.
//!
//! [`Dir`] is that subset: list, create a new file exclusively, open for writing or read,
//! append or write at an offset (`pwrite`), `fdatasync`, truncate, rename, remove, fsync the
//! directory, file length, and an advisory lock. It has two implementations:
//!
//! - [`LocalDir`]: real files. `sync_data` is `fdatasync(2)`, `sync_dir` is `fsync(2)` on the
//!   directory, and [`Dir::read_immutable`] maps the file with memmap2.
//! - [`SimDir`]: in memory, modelling the page cache. Each file has *durable* bytes (what a
//!   power loss keeps) and *pending* writes (what it may lose); each directory change
//!   (create, rename, remove) is pending until the next `sync_dir`. [`SimDir::crash`]
//!   deterministically loses what was pending, tears the last write or flips a bit in it,
//!   and fault injection makes a chosen `sync_data`/`sync_dir` fail or the disk fill up.
//!
//! The layer knows nothing about WALs. The WAL builds its segment store on it
//! ([`crate::store::DirSegmentStore`]); the `checkpoint` crate builds its atomic publish on
//! it ([`write_atomic`]) and tests its crash stories ("rename not synced", "torn checkpoint
//! file") against [`SimDir`].
//!
//! # Durability rules (what callers must do; nothing here does it for them)
//! 1. Bytes written to a file survive a crash only after a successful
//!    [`DirFile::sync_data`] on that file.
//! 2. A created, renamed or removed name survives a crash only after a successful
//!    [`Dir::sync_dir`]. A file whose data was synced but whose name was not is lost whole.
//! 3. A failed `sync_data` or `sync_dir` leaves the state unknown: the kernel may have
//!    dropped the dirty pages and a retry can then report success without having written
//!    them. Never retry; treat the writer as poisoned and recover by restarting.
//!
//! # Names
//! Files are addressed by a plain name inside the directory (no `/`, not `.` or `..`);
//! [`Dir::path_of`] gives the path to show in messages.

mod local;
mod mmap;
mod sim;

use std::fmt;
use std::io;
use std::path::PathBuf;

use bytes::Bytes;

pub use local::LocalDir;
pub use sim::{CrashMode, CrashReport, SimDir, SimStats};

/// A directory of files: the POSIX subset durable storage needs. See the module docs for
/// the durability rules.
///
/// Implementations are shared between threads (`Send + Sync`); each call is atomic with
/// respect to the others.
pub trait Dir: Send + Sync + fmt::Debug {
    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Creates a new, empty file opened for writing and reading. Fails with
    /// `AlreadyExists` if the name exists (`O_CREAT | O_EXCL`). The name is durable only
    /// after [`Dir::sync_dir`].
    fn create_new(&self, name: &str) -> io::Result<Box<dyn DirFile>>;

    /// Opens an existing file for writing and reading.
    fn open_append(&self, name: &str) -> io::Result<Box<dyn DirFile>>;

    /// Opens an existing file for reading only; writes through the handle fail.
    fn open_read(&self, name: &str) -> io::Result<Box<dyn DirFile>>;

    /// The whole content of a file that will not be modified again while the returned
    /// bytes live. [`LocalDir`] maps it read-only (memmap2, see its safety argument);
    /// [`SimDir`] copies it. Use only for files nobody appends to or truncates any more.
    fn read_immutable(&self, name: &str) -> io::Result<Bytes>;

    /// Length of a file in bytes.
    fn size_bytes(&self, name: &str) -> io::Result<u64>;

    /// Atomically renames `from` to `to`, replacing `to` if it exists. Durable only after
    /// [`Dir::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Removes a file. Durable only after [`Dir::sync_dir`]. Open handles and mappings of
    /// the file stay valid.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Makes every earlier create, rename and remove in this directory durable
    /// (`fsync(2)` on the directory).
    fn sync_dir(&self) -> io::Result<()>;

    /// Takes an exclusive advisory lock on the named lock file (created if missing), held
    /// until the returned guard drops. Fails with `WouldBlock` if another holder has it.
    fn lock(&self, name: &str) -> io::Result<DirLock>;

    /// The path of a file in this directory, for messages.
    fn path_of(&self, name: &str) -> PathBuf;

    /// The directory's own path, for messages.
    fn root(&self) -> PathBuf;
}

/// An open file of a [`Dir`]. One writer per file: a handle that writes assumes nobody
/// else changes the file meanwhile.
pub trait DirFile: Send + Sync + fmt::Debug {
    /// Appends all of `buf` at the end of the file. On error, a prefix of `buf` may have
    /// been written (for example up to a full disk); use [`DirFile::set_len`] to cut it.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Writes all of `buf` at `offset` (`pwrite(2)`), overwriting what is there and
    /// extending the file if it ends before `offset + buf.len()` (a gap reads as zeros).
    /// On error, a prefix of `buf` may have been written.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Writes `bufs`, one after the other, at `offset`, as [`DirFile::write_at`] would
    /// their concatenation (`writev(2)` where the implementation can, saving a copy).
    /// On error, a prefix may have been written.
    fn write_vectored_at(&mut self, mut offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        for buf in bufs {
            self.write_at(offset, buf)?;
            offset += buf.len() as u64;
        }
        Ok(())
    }

    /// Makes the file's content and length durable (`fdatasync(2)`). Not the name: see
    /// [`Dir::sync_dir`].
    fn sync_data(&mut self) -> io::Result<()>;

    /// Truncates or extends (with zeros) the file to `len` bytes. Durable only after
    /// [`DirFile::sync_data`].
    fn set_len(&mut self, len: u64) -> io::Result<()>;

    /// Current length in bytes, including writes not yet synced.
    fn size_bytes(&self) -> io::Result<u64>;

    /// Reads up to `buf.len()` bytes at `offset`; returns the number read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(offset, buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ends before byte {}", offset + buf.len() as u64),
                    ));
                }
                Ok(n) => {
                    offset += n as u64;
                    buf = &mut buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An exclusive advisory lock on a [`Dir`]; released on drop.
pub struct DirLock {
    _guard: Box<dyn Send + Sync>,
}

impl DirLock {
    /// Wraps whatever keeps the lock held (a locked `File`, a flag reset on drop, ...).
    pub fn new(guard: Box<dyn Send + Sync>) -> DirLock {
        DirLock { _guard: guard }
    }
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirLock")
    }
}

/// Reads a whole file through an ordinary read handle (not a mapping), for files that may
/// still change, such as small metadata files.
pub fn read_all(dir: &dyn Dir, name: &str) -> io::Result<Vec<u8>> {
    let file = dir.open_read(name)?;
    let len = usize::try_from(file.size_bytes()?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file larger than memory"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(0, &mut buf)?;
    Ok(buf)
}

/// Publishes `bytes` under `name` atomically and durably: after `Ok`, a crash leaves either
/// the complete new content under `name`, never a partial one; before `Ok` returns, a
/// crash leaves the previous content (or no file).
///
/// Steps: write `name.tmp` (removing a stale one first), `sync_data` it, rename it over
/// `name`, then `sync_dir`. The directory fsync is what makes the rename itself survive a
/// crash; without it a crash can bring back the previous file.
///
/// A failed `sync_data` or `sync_dir` is returned as is; per the module's rule 3 the
/// caller must not retry but treat the outcome as unknown.
pub fn write_atomic(dir: &dyn Dir, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    match dir.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = dir.create_new(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    dir.rename(&tmp, name)?;
    dir.sync_dir()
}

/// Checks that `name` is a plain file name inside the directory.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid file name {name:?}: must be a plain name inside the directory"),
        ));
    }
    Ok(())
}
