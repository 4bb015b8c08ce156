//! [`DirSegmentStore`]: segments as files in a [`Dir`].

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{SegmentStore, SegmentWriter};
use crate::fs::{Dir, DirFile};
use crate::lsn::SegmentId;

/// Name of the lock file that keeps a second writer out of a WAL directory.
pub const LOCK_FILE_NAME: &str = "wal.lock";

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".wal";

/// One file per segment in a directory: `segment-00000000000000000001.wal`, ...
///
/// The 20-digit zero-padded id makes names sort in creation order. Files with other names
/// are ignored (the lock file, an operator's notes).
#[derive(Debug)]
pub struct DirSegmentStore {
    dir: Arc<dyn Dir>,
    /// A read handle on the segment most recently read with `read_at` (the open segment,
    /// in practice), so reads of recent records do not reopen the file each time.
    reader: Mutex<Option<(SegmentId, Arc<dyn DirFile>)>>,
}

impl DirSegmentStore {
    /// A store over `dir`.
    pub fn new(dir: Arc<dyn Dir>) -> DirSegmentStore {
        DirSegmentStore {
            dir,
            reader: Mutex::new(None),
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
            len: header.len() as u64,
            name_synced: false,
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
        self.dir.remove(&Self::file_name(id))?;
        self.dir.sync_dir()
    }

    fn lock(&self) -> io::Result<Box<dyn Send + Sync>> {
        Ok(Box::new(self.dir.lock(LOCK_FILE_NAME)?))
    }
}

#[derive(Debug)]
struct DirSegmentWriter {
    file: Box<dyn DirFile>,
    dir: Arc<dyn Dir>,
    len: u64,
    /// Whether the directory was fsynced since this segment was created. The first sync
    /// of a segment fsyncs the directory too, so the new name survives a crash before any
    /// record in it is acknowledged.
    name_synced: bool,
}

impl SegmentWriter for DirSegmentWriter {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        // On error a prefix may have been written; `len` stays at the last known good end
        // and the WAL calls `rewind(len)` before doing anything else.
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        if !self.name_synced {
            self.dir.sync_dir()?;
            self.name_synced = true;
        }
        Ok(())
    }

    fn rewind(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.len
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
