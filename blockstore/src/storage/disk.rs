//! Spill files: one file per block in `<data_dir>/blocks/`.
//!
//! File name: `<stream:08x>-<incarnation:016x>-<sequence:016x>.blk` (so names sort like
//! ids). Layout, little-endian:
//!
//! ```text
//! offset size field
//!  0      4   magic "EMBK"
//!  4      1   format version (1)
//!  5      3   reserved, zero
//!  8     20   block id (stream u32, incarnation u64, sequence u64)
//! 28      8   record count
//! 36      8   data length
//! 44      4   data CRC-32 (the block's checksum)
//! 48      4   header CRC-32 of bytes 0..48
//! 52      -   data
//! ```
//!
//! A file is written under a temporary name (`.blk.tmp`) and renamed into place, so a
//! process killed mid-write leaves a temporary file (deleted at the next open), never a
//! short `.blk`. Spill files are **not** fsynced: the block store's guarantee is about
//! process failures (a killed executor), for which the page cache keeps the bytes; a
//! machine failure is what the replica on another host is for, and fsyncing every spilled
//! block would make spilling as slow as the write-ahead log it is meant not to be. A file
//! damaged anyway is caught by the header and data checksums.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::block::{Block, BlockId, block_crc32};
use crate::error::{Error, Result};
use crate::storage::BlockStorage;

/// The first bytes of every spill file.
pub const SPILL_MAGIC: [u8; 4] = *b"EMBK";
/// Size of a spill file's header.
pub const SPILL_HEADER_LEN: usize = 52;
const SPILL_VERSION: u8 = 1;
const BLOCK_EXT: &str = "blk";
const TMP_SUFFIX: &str = ".blk.tmp";

/// A block found in the spill directory when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredBlock {
    /// The block.
    pub id: BlockId,
    /// Its data length.
    pub len: u64,
    /// Its checksum (from the header; the data is verified when it is read).
    pub crc32: u32,
    /// The file's size, header included.
    pub file_len: u64,
}

/// The disk backend.
#[derive(Debug)]
pub struct DiskStorage {
    dir: PathBuf,
}

impl DiskStorage {
    /// Opens (creating if needed) `<data_dir>/blocks`, deletes leftover temporary files,
    /// and returns the blocks already there. Files with a damaged header are deleted with a
    /// warning: they can never be served, and keeping them would leak disk space.
    pub fn open(data_dir: &Path) -> Result<(Self, Vec<RecoveredBlock>)> {
        let dir = data_dir.join("blocks");
        fs::create_dir_all(&dir).map_err(|cause| Error::Io {
            op: "create spill directory",
            path: dir.clone(),
            cause,
        })?;
        let storage = DiskStorage { dir };
        let mut recovered = Vec::new();
        for entry in storage.entries()? {
            let (path, name) = entry;
            if name.ends_with(TMP_SUFFIX) {
                tracing::info!(path = %path.display(), "deleting unfinished spill file");
                remove_file_if_exists(&path)?;
                continue;
            }
            let Some(id) = parse_block_file_name(&name) else {
                tracing::warn!(path = %path.display(), "ignoring unknown file in the spill directory");
                continue;
            };
            match read_header(&path, id) {
                Ok(found) => recovered.push(found),
                Err(err) => {
                    tracing::warn!(error = %err, "deleting unreadable spill file");
                    remove_file_if_exists(&path)?;
                }
            }
        }
        recovered.sort_unstable_by_key(|r| r.id);
        Ok((storage, recovered))
    }

    /// The directory holding the spill files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a block's spill file.
    pub fn path_of(&self, id: &BlockId) -> PathBuf {
        self.dir.join(format!("{}.{BLOCK_EXT}", id.file_stem()))
    }

    /// The size of a block's spill file: header plus data.
    pub fn file_len(data_len: u64) -> u64 {
        SPILL_HEADER_LEN as u64 + data_len
    }

    fn entries(&self) -> Result<Vec<(PathBuf, String)>> {
        let read_dir = fs::read_dir(&self.dir).map_err(|cause| Error::Io {
            op: "list spill directory",
            path: self.dir.clone(),
            cause,
        })?;
        let mut out = Vec::new();
        for entry in read_dir {
            let entry = entry.map_err(|cause| Error::Io {
                op: "list spill directory",
                path: self.dir.clone(),
                cause,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push((entry.path(), name));
        }
        Ok(out)
    }
}

impl BlockStorage for DiskStorage {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn put(&self, block: &Block) -> Result<()> {
        let path = self.path_of(&block.id());
        let tmp = self
            .dir
            .join(format!("{}{TMP_SUFFIX}", block.id().file_stem()));
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&encode_header(block))?;
            file.write_all(block.data())?;
            drop(file);
            fs::rename(&tmp, &path)
        };
        write().map_err(|cause| {
            // Best effort: a leftover temporary file is also deleted at the next open.
            let _ = fs::remove_file(&tmp);
            Error::Io {
                op: "write spill file",
                path: path.clone(),
                cause,
            }
        })
    }

    fn get(&self, id: &BlockId) -> Result<Option<Block>> {
        let path = self.path_of(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(cause) if cause.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => {
                return Err(Error::Io {
                    op: "read spill file",
                    path,
                    cause,
                });
            }
        };
        let header = parse_header(&bytes, &path, *id, bytes.len() as u64)?;
        let block = Block::from_parts(
            *id,
            bytes.slice(SPILL_HEADER_LEN..),
            header.record_count,
            header.crc32,
            &format!("spill file {}", path.display()),
        )?;
        Ok(Some(block))
    }

    fn remove(&self, id: &BlockId) -> Result<bool> {
        remove_file_if_exists(&self.path_of(id))
    }

    fn list(&self) -> Result<Vec<BlockId>> {
        let mut ids: Vec<BlockId> = self
            .entries()?
            .iter()
            .filter_map(|(_, name)| parse_block_file_name(name))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

fn parse_block_file_name(name: &str) -> Option<BlockId> {
    BlockId::parse_file_stem(name.strip_suffix(".blk")?)
}

fn remove_file_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(cause) if cause.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(cause) => Err(Error::Io {
            op: "remove spill file",
            path: path.to_owned(),
            cause,
        }),
    }
}

/// The 52-byte header of a block's spill file.
pub(crate) fn encode_header(block: &Block) -> [u8; SPILL_HEADER_LEN] {
    let mut h = [0u8; SPILL_HEADER_LEN];
    h[0..4].copy_from_slice(&SPILL_MAGIC);
    h[4] = SPILL_VERSION;
    h[8..28].copy_from_slice(&block.id().to_bytes());
    h[28..36].copy_from_slice(&block.record_count().to_le_bytes());
    h[36..44].copy_from_slice(&(block.len() as u64).to_le_bytes());
    h[44..48].copy_from_slice(&block.crc32().to_le_bytes());
    let crc = block_crc32(&h[0..48]);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    h
}

struct Header {
    record_count: u64,
    data_len: u64,
    crc32: u32,
}

/// Checks a spill file's header: magic, version, header CRC, that it names the block the
/// file name says, and that the file has exactly the length the header announces.
fn parse_header(bytes: &[u8], path: &Path, id: BlockId, file_len: u64) -> Result<Header> {
    let corrupt = |reason: String| Error::CorruptSpillFile {
        path: path.to_owned(),
        reason,
    };
    let Some(h) = bytes.get(..SPILL_HEADER_LEN) else {
        return Err(corrupt(format!(
            "{} bytes is shorter than the {SPILL_HEADER_LEN}-byte header",
            bytes.len()
        )));
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[0..4] != SPILL_MAGIC {
        return Err(corrupt(format!("bad magic {:02x?}", &h[0..4])));
    }
    let stored = u32_at(48);
    let computed = block_crc32(&h[0..48]);
    if stored != computed {
        return Err(corrupt(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    if h[4] != SPILL_VERSION || h[5..8] != [0, 0, 0] {
        return Err(corrupt(format!("unsupported format version {}", h[4])));
    }
    let mut id_bytes = [0u8; BlockId::ENCODED_LEN];
    id_bytes.copy_from_slice(&h[8..28]);
    let header_id = BlockId::from_bytes(&id_bytes);
    if header_id != id {
        return Err(corrupt(format!(
            "holds block {header_id}, but its name says {id}"
        )));
    }
    let header = Header {
        record_count: u64_at(28),
        data_len: u64_at(36),
        crc32: u32_at(44),
    };
    let expected = DiskStorage::file_len(header.data_len);
    if file_len != expected {
        return Err(corrupt(format!(
            "is {file_len} bytes, but its header announces {expected} ({} of data)",
            header.data_len
        )));
    }
    Ok(header)
}

fn read_header(path: &Path, id: BlockId) -> Result<RecoveredBlock> {
    use std::io::Read;
    let io_err = |cause| Error::Io {
        op: "read spill file",
        path: path.to_owned(),
        cause,
    };
    let mut file = fs::File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut h = Vec::with_capacity(SPILL_HEADER_LEN);
    Read::by_ref(&mut file)
        .take(SPILL_HEADER_LEN as u64)
        .read_to_end(&mut h)
        .map_err(io_err)?;
    let header = parse_header(&h, path, id, file_len)?;
    Ok(RecoveredBlock {
        id,
        len: header.data_len,
        crc32: header.crc32,
        file_len,
    })
}
