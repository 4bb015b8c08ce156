//! Read-only memory maps of immutable files: the only `unsafe` code in the `wal` crate.
//!
//! Sealed WAL segments are read through a mapping rather than `read(2)` so that a recovery
//! scan touches each byte once, straight from the page cache, and so that a record read
//! by Lsn is a zero-copy [`Bytes`] slice of the mapping.
//!
//! # Safety
//!
//! `memmap2::Mmap::map` is `unsafe` because Rust assumes the bytes behind a `&[u8]` do not
//! change while the reference lives, and a mapping cannot enforce that: anyone who writes
//! to or truncates the file changes (or removes) the mapped bytes under us. Mapping is
//! sound here because of how the callers use it:
//!
//! 1. [`super::Dir::read_immutable`] is only called for files that are never modified
//!    again. In the WAL these are *sealed* segments: the writer maps a segment only after
//!    it has stopped appending to it for good, and recovery maps a segment only before
//!    this process opens it for writing; the one file recovery may truncate (a torn tail)
//!    has its mapping dropped before the truncation and is mapped again afterwards.
//! 2. Removing a file (retention) does not affect an existing mapping: `unlink(2)` removes
//!    the name, the inode and its pages live until the last mapping is dropped.
//! 3. The WAL holds an exclusive lock on its directory while open, so another Ember
//!    process does not write to these files.
//!
//! What we cannot rule out is a *different* program (or a person) truncating or rewriting
//! a sealed segment while we have it mapped. Rewritten bytes become visible through the
//! mapping; every record is CRC-checked when read, so changed bytes surface as a
//! `Corrupt` error rather than as wrong data (a concurrent change between the check and
//! the use is possible, as with any shared file). Truncation makes accesses past the new
//! end raise `SIGBUS`, which terminates the process: loud, not silent. This is the same
//! contract every mmap-based reader of shared files has (databases included), and the
//! WAL directory is documented as owned by the WAL.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use bytes::Bytes;

/// Maps a whole file read-only and returns its bytes. An empty file gives empty bytes
/// (mapping zero bytes is an error on Linux).
pub(super) fn map_immutable(file: &File) -> io::Result<Bytes> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the caller promises (see `Dir::read_immutable` and the module docs) that the
    // file is not modified or truncated while the returned bytes live; the mapping is
    // read-only and private to this process, and `Bytes::from_owner` keeps it alive for
    // as long as any slice of it exists.
    let map = unsafe { memmap2::MmapOptions::new().map(file)? };
    // Sequential access is the common case (recovery scans, iterators): let the kernel
    // read ahead aggressively. Advice is a hint; failure to apply it changes nothing.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::from_owner(map))
}
