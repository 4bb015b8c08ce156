//! [`LocalDir`]: the [`Dir`] trait over real files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Dir, DirFile, DirLock, check_name, mmap};

/// A real directory. `sync_data` is `fdatasync(2)`; `sync_dir` is `fsync(2)` on the
/// directory itself.
#[derive(Debug)]
pub struct LocalDir {
    path: PathBuf,
}

impl LocalDir {
    /// Opens an existing directory. Fails with `NotFound` if it does not exist and
    /// `NotADirectory`-like errors if it is something else.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<LocalDir> {
        let path = path.into();
        let meta = fs::metadata(&path)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        // Fail early (and with the right path) if the directory cannot be listed.
        fs::read_dir(&path)?;
        Ok(LocalDir { path })
    }

    /// Opens a directory, creating it and any missing parents first. New directories are
    /// made durable: each created directory's parent is fsynced, so the directory itself
    /// cannot vanish in a crash after this returns.
    pub fn create(path: impl Into<PathBuf>) -> io::Result<LocalDir> {
        let path = path.into();
        let mut missing = Vec::new();
        let mut cursor = Some(path.as_path());
        while let Some(p) = cursor {
            if p.as_os_str().is_empty() || p.exists() {
                break;
            }
            missing.push(p.to_path_buf());
            cursor = p.parent();
        }
        fs::create_dir_all(&path)?;
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)?;
            }
        }
        LocalDir::open(path)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl Dir for LocalDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn create_new(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        check_name(name)?;
        let path = self.path.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Box::new(LocalFile { file, path }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        check_name(name)?;
        let path = self.path.join(name);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok(Box::new(LocalFile { file, path }))
    }

    fn open_read(&self, name: &str) -> io::Result<Box<dyn DirFile>> {
        check_name(name)?;
        let path = self.path.join(name);
        let file = OpenOptions::new().read(true).open(&path)?;
        Ok(Box::new(LocalFile { file, path }))
    }

    fn read_immutable(&self, name: &str) -> io::Result<Bytes> {
        check_name(name)?;
        let file = File::open(self.path.join(name))?;
        mmap::map_immutable(&file)
    }

    fn size_bytes(&self, name: &str) -> io::Result<u64> {
        check_name(name)?;
        Ok(fs::metadata(self.path.join(name))?.len())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        fs::rename(self.path.join(from), self.path.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        fs::remove_file(self.path.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        fsync_dir(&self.path)
    }

    fn lock(&self, name: &str) -> io::Result<DirLock> {
        check_name(name)?;
        let path = self.path.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock::new(Box::new(file))),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", path.display()),
            )),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn root(&self) -> PathBuf {
        self.path.clone()
    }
}

#[derive(Debug)]
struct LocalFile {
    file: File,
    /// Shown by `Debug`, so a handle in an error report says which file it is.
    #[allow(dead_code)]
    path: PathBuf,
}

impl DirFile for LocalFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // Not O_APPEND: Linux ignores pwrite's offset on O_APPEND files, and write_at needs
        // it. One writer per file (the trait's contract), so the end is the file's length.
        let end = self.file.metadata()?.len();
        self.file.write_all_at(buf, end)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_vectored_at(&mut self, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        // std has no positional vectored write: position the cursor, then writev. Only
        // this handle writes the file (the trait's contract), and reads use pread, so
        // moving the cursor disturbs nobody.
        use std::io::{IoSlice, Seek, SeekFrom, Write};
        self.file.seek(SeekFrom::Start(offset))?;
        let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut remaining = &mut slices[..];
        while !remaining.is_empty() {
            match self.file.write_vectored(remaining) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "writev wrote nothing",
                    ));
                }
                Ok(n) => IoSlice::advance_slices(&mut remaining, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_makes_missing_parents_and_opens() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalDir::create(tmp.path().join("a/b/c")).unwrap();
        assert!(dir.path().is_dir());
        assert!(dir.list().unwrap().is_empty());
    }

    #[test]
    fn open_rejects_a_missing_directory_and_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = LocalDir::open(tmp.path().join("nope")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        let not_dir = LocalDir::open(tmp.path().join("file")).unwrap_err();
        assert_eq!(not_dir.kind(), io::ErrorKind::NotADirectory);
    }

    #[test]
    fn lock_is_exclusive_between_handles() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalDir::open(tmp.path()).unwrap();
        let held = dir.lock("LOCK").unwrap();
        let second = LocalDir::open(tmp.path()).unwrap();
        assert_eq!(
            second.lock("LOCK").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(held);
        second.lock("LOCK").unwrap();
    }
}
