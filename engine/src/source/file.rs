//! The directory source: new text files, by modification time (Spark's `textFileStream`).
//!
//! When a batch at time `t` is generated, the directory is listed and a file is picked if
//! - its name does not start with `.` (write files under a hidden name and rename them in:
//!   a file is read when its batch runs, so it must be complete when it appears),
//! - it is a regular file modified at or before `t`, and not before the context started
//!   (only new files; with one second of slack, since file systems stamp files with a
//!   coarse clock that can lag the system clock) nor more than `file_stream_remember_ms`
//!   before `t`,
//! - it was not picked before.
//!
//! Each picked file is one block of the batch; the block records the file's path, length and
//! modification time, and its bytes are read (again) when the batch runs, so a batch re-run
//! after a crash re-reads exactly the same files (upstream replay). A file that changed
//! length after it was picked fails the batch; a file that disappeared is a lost block.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::DirectInput;
use super::text::check_lines;
use crate::block::{Block, BlockId, StoredBlock, StreamId};
use crate::clock::BoxFuture;
use crate::config::InvalidUtf8Policy;
use crate::dstream::node::lock;
use crate::error::{Error, Result};
use crate::handler::ReceivedBlockHandler;
use crate::time::BatchTime;

/// Files modified this long before the stream started still count as new: file systems
/// stamp modification times from a coarse clock (a jiffy behind on Linux, up to two
/// seconds on some), so a file written just after the start can look older than it.
const MTIME_SLACK_MS: u64 = 1_000;

/// What a file block's locator holds (postcard).
#[derive(Debug, Serialize, Deserialize)]
struct FileLocator {
    path: PathBuf,
    len_bytes: u64,
    modified_ms: u64,
}

/// The file a directory-source block was read from (for checkpoints and inspection).
pub(crate) fn locator_path(stored: &StoredBlock) -> Option<PathBuf> {
    postcard::from_bytes::<FileLocator>(&stored.locator)
        .ok()
        .map(|l| l.path)
}

pub(crate) struct FileInput {
    pub dir: PathBuf,
    /// When the stream started (the original grid's zero after a restart).
    pub start_ms: AtomicU64,
    pub remember_ms: u64,
    pub reader: Arc<FileReader>,
    pub seen: Mutex<HashMap<PathBuf, u64>>,
    pub next_seq: AtomicU64,
}

impl FileInput {
    pub fn new(
        name: String,
        dir: PathBuf,
        start_ms: u64,
        remember_ms: u64,
        policy: InvalidUtf8Policy,
    ) -> Self {
        FileInput {
            dir,
            start_ms: AtomicU64::new(start_ms),
            remember_ms,
            reader: Arc::new(FileReader {
                name,
                policy,
                invalid: AtomicU64::new(0),
            }),
            seen: Mutex::default(),
            next_seq: AtomicU64::new(0),
        }
    }
}

fn modified_ms(meta: &fs::Metadata) -> Option<u64> {
    let t = meta.modified().ok()?;
    Some(u64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).unwrap_or(u64::MAX))
}

impl DirectInput for FileInput {
    fn handler(&self) -> Arc<dyn ReceivedBlockHandler> {
        Arc::clone(&self.reader) as Arc<dyn ReceivedBlockHandler>
    }

    fn recovered(&self, zero: BatchTime, blocks: &[StoredBlock]) {
        // Files of recovered batches were read already (re-runs read them from their
        // locators), and files written while the pipeline was down count as new.
        self.start_ms.store(zero.as_millis(), Ordering::Relaxed);
        let mut seen = lock(&self.seen);
        for b in blocks {
            if let Ok(l) = postcard::from_bytes::<FileLocator>(&b.locator) {
                seen.insert(l.path, l.modified_ms);
            }
            self.next_seq
                .fetch_max(b.id.seq.saturating_add(1), Ordering::Relaxed);
        }
    }

    fn plan(&self, stream: StreamId, time: BatchTime) -> Result<Vec<StoredBlock>> {
        let now = time.as_millis();
        let threshold = self
            .start_ms
            .load(Ordering::Relaxed)
            .saturating_sub(MTIME_SLACK_MS)
            .max(now.saturating_sub(self.remember_ms));
        let mut seen = lock(&self.seen);
        let mut picked: Vec<(u64, PathBuf, u64)> = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(|e| Error::io("list directory", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list directory", &self.dir, e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            }; // removed since listed
            let Some(mtime) = modified_ms(&meta) else {
                continue;
            };
            if !meta.is_file() || mtime < threshold || mtime > now || seen.contains_key(&path) {
                continue;
            }
            picked.push((mtime, path, meta.len()));
        }
        picked.sort();
        let mut blocks = Vec::with_capacity(picked.len());
        for (mtime, path, len) in picked {
            // Read now to count the lines (the batch's record count) and to apply the UTF-8
            // policy once; the bytes are read again when the batch runs.
            let bytes = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            let checked = check_lines(
                Bytes::from(bytes),
                self.reader.policy,
                &self.reader.name,
                &path.display().to_string(),
                1,
            )?;
            self.reader
                .invalid
                .fetch_add(checked.invalid, Ordering::Relaxed);
            let locator = FileLocator {
                path: path.clone(),
                len_bytes: len,
                modified_ms: mtime,
            };
            let id = BlockId {
                stream,
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            };
            blocks.push(StoredBlock {
                id,
                records: checked.records,
                len_bytes: len,
                locator: postcard::to_stdvec(&locator).map_err(|e| Error::Receiver {
                    stream: self.reader.name.clone(),
                    message: format!("cannot encode a file locator: {e}"),
                })?,
                source_offsets: None,
            });
            tracing::info!(stream = %self.reader.name, file = %path.display(), records = checked.records, batch = %time, "picked up file");
            seen.insert(path, mtime);
        }
        // Files older than the threshold can never be picked again: forget them.
        seen.retain(|_, mtime| *mtime >= threshold);
        Ok(blocks)
    }

    fn invalid_records(&self) -> u64 {
        self.reader.invalid.load(Ordering::Relaxed)
    }
}

/// Reads a picked file back as a block.
pub(crate) struct FileReader {
    name: String,
    policy: InvalidUtf8Policy,
    invalid: AtomicU64,
}

impl FileReader {
    fn read_file(&self, stored: &StoredBlock) -> Result<Option<Bytes>> {
        let locator: FileLocator =
            postcard::from_bytes(&stored.locator).map_err(|e| Error::BlockStore {
                stream: self.name.clone(),
                block: stored.id,
                message: format!("corrupt file locator: {e}"),
            })?;
        let path: &Path = &locator.path;
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        if bytes.len() as u64 != locator.len_bytes {
            return Err(Error::BlockStore {
                stream: self.name.clone(),
                block: stored.id,
                message: format!(
                    "{} changed after it was picked up: {} bytes then, {} now (write files elsewhere and move them in)",
                    path.display(),
                    locator.len_bytes,
                    bytes.len()
                ),
            });
        }
        // Lines that are not UTF-8 were counted (or failed the stream) when the file was
        // picked up; here they are only dropped.
        let checked = check_lines(
            Bytes::from(bytes),
            InvalidUtf8Policy::Skip,
            &self.name,
            &path.display().to_string(),
            1,
        )?;
        Ok(Some(checked.bytes))
    }
}

impl ReceivedBlockHandler for FileReader {
    fn mode(&self) -> &'static str {
        "replay"
    }

    fn store(&self, block: Block) -> BoxFuture<Result<StoredBlock>> {
        let error = Error::BlockStore {
            stream: self.name.clone(),
            block: block.id,
            message: "a directory stream has no receiver to store blocks".to_owned(),
        };
        Box::pin(async move { Err(error) })
    }

    fn consumed(&self, _id: BlockId) {}

    fn read(&self, stored: &StoredBlock) -> BoxFuture<Result<Option<Bytes>>> {
        let result = self.read_file(stored);
        Box::pin(async move { result })
    }

    fn cleanup(&self, _blocks: &[StoredBlock]) -> BoxFuture<Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
