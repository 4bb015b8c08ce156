//! The exactly-once text-file sink for pipelines over offset-ranged sources (Kafka): by
//! idempotence, and resumable from its own directory.
//!
//! Batch `t` goes to `DIR/batch-<t ms>/`:
//! 1. `_OFFSETS` (the batch's offset ranges, JSON) is written first (temporary name, fsync,
//!    rename, directory fsync);
//! 2. `part-NNNNN`, one per partition, each written under a temporary name, synced and
//!    renamed into place;
//! 3. `_SUCCESS` last, then the directory is synced.
//!
//! A re-run of the batch rewrites byte-identical files under the same names. Readers take
//! only directories with `_SUCCESS`. [`FileSink::progress`] reads the directory back as the
//! PostgreSQL sink's progress: the newest complete batch's offsets (resume there), or a newer
//! batch that has `_OFFSETS` but no `_SUCCESS` (re-run it over exactly those ranges at its
//! time before anything else).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{BatchOutput, Delivery, Progress, Sink, TextRecord};
use crate::dstream::BatchData;
use crate::error::{Error, Result};
use crate::time::BatchTime;

/// The exactly-once file sink (see the module docs).
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
}

fn io<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

fn write_file(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let file = File::create(&tmp).map_err(io("create", &tmp))?;
    let mut out = BufWriter::with_capacity(256 << 10, file);
    write(&mut out).map_err(io("write", &tmp))?;
    let file = out.into_inner().map_err(|e| Error::Io {
        operation: "write",
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("rename into", &path))
}

impl FileSink {
    /// Writes batches under `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        Ok(FileSink { dir })
    }

    /// Where the batches go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the batch at `time`.
    pub fn batch_dir(&self, time: BatchTime) -> PathBuf {
        self.dir.join(format!("batch-{}", time.as_millis()))
    }

    /// What the directory says about the pipeline's progress.
    pub fn progress(&self) -> Result<Progress> {
        let mut times = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            if let Some(ms) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("batch-"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                times.push(ms);
            }
        }
        times.sort_unstable();
        for ms in times.into_iter().rev() {
            let time = BatchTime::from_millis(ms);
            let dir = self.batch_dir(time);
            let offsets_path = dir.join("_OFFSETS");
            let text = match fs::read_to_string(&offsets_path) {
                Ok(t) => t,
                // Created but nothing recorded yet: the batch wrote nothing; look further back.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &offsets_path)(e)),
            };
            let parts = fs::read_dir(&dir)
                .map_err(io("list", &dir))?
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("part-"))
                })
                .count();
            let complete = dir.join("_SUCCESS").exists();
            // A partial batch's partition count does not matter: the re-run rewrites every part.
            return Progress::of_newest_batch(time, &text, complete, 0, parts).map_err(|e| {
                Error::Sink {
                    sink: format!("files {}", self.dir.display()),
                    message: format!("{} is not an offset list: {e}", offsets_path.display()),
                }
            });
        }
        Ok(Progress::Empty)
    }
}

impl<T: TextRecord + Send + Sync + 'static> Sink<T> for FileSink {
    fn name(&self) -> String {
        format!("files {}", self.dir.display())
    }

    fn delivery(&self) -> Delivery {
        Delivery::Idempotent
    }

    fn write_batch(
        &self,
        batch: &BatchOutput,
        data: &BatchData<T>,
    ) -> std::result::Result<(), String> {
        if batch.covers_nothing(data) {
            return Ok(());
        }
        let run = || -> Result<()> {
            let dir = self.batch_dir(batch.time);
            let created = !dir.exists();
            fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
            if created {
                sync_dir(&self.dir)?;
            }
            let _ = fs::remove_file(dir.join("_SUCCESS"));
            let offsets = batch.offsets_json().map_err(|message| Error::Sink {
                sink: format!("files {}", self.dir.display()),
                message,
            })?;
            write_file(&dir, "_OFFSETS", |w| w.write_all(offsets.as_bytes()))?;
            sync_dir(&dir)?;
            let mut line = String::new();
            for (i, part) in data.partitions().enumerate() {
                write_file(&dir, &format!("part-{i:05}"), |w| {
                    for record in part {
                        line.clear();
                        record.write_text(&mut line);
                        line.push('\n');
                        w.write_all(line.as_bytes())?;
                    }
                    Ok(())
                })?;
            }
            let success = dir.join("_SUCCESS");
            File::create(&success)
                .and_then(|f| f.sync_all())
                .map_err(io("create", &success))?;
            sync_dir(&dir)
        };
        run().map_err(|e| e.to_string())
    }
}
