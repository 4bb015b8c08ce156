//! Where checkpoints and snapshots are stored: [`CheckpointBackend`], and [`DirBackend`]
//! over a [`wal::fs::Dir`] (real files with [`wal::fs::LocalDir`], the simulated page cache
//! with [`wal::fs::SimDir`]).
//!
//! # The contract
//!
//! The trait is what both a file system and an object store can do atomically, and nothing
//! more: whole named blobs, written once.
//!
//! 1. [`CheckpointBackend::put_new`] makes a *new* name with the given bytes, atomically
//!    and durably: after `Ok`, a crash leaves the complete bytes under the name; before
//!    `Ok`, a crash leaves either nothing under the name or (if the failure came after the
//!    point of no return) the complete bytes, never a prefix. If the name exists it fails
//!    with `AlreadyExists` and changes nothing.
//! 2. [`CheckpointBackend::list`] returns every name made durable by `put_new` and not
//!    deleted since, and may return names whose `put_new` was in flight.
//! 3. [`CheckpointBackend::delete`] removes a name durably; deleting a missing name is
//!    `Ok`.
//! 4. A failed `put_new` or `delete` leaves its outcome unknown; the store never retries
//!    it but poisons itself (a failed fsync cannot be retried safely).
//!
//! # Backends
//!
//! - [`DirBackend`]: `put_new` checks the name is free (under the writer lock, so no one
//!   else can take it meanwhile), then [`wal::fs::write_atomic`]: write `<name>.tmp`,
//!   `fdatasync`, rename over `<name>`, fsync the directory. The rename is the point of no
//!   return; the directory fsync makes it survive a crash. Temporary files left by a crash
//!   are removed when a writer opens the store.
//! - [`ObjectBackend`]: an object store (S3 and compatible, HDFS, in-memory, through the
//!   `object_store` crate and [`wal::objstore::ObjectClient`]) maps onto the same
//!   contract without any rename: `put_new` is `put_opts(PutMode::Create)` of the final
//!   key, a create-only conditional put (S3 makes an object visible whole or not at all,
//!   so no temporary object is needed, and a second writer's put of the same key fails,
//!   which is [`crate::Error::Conflict`]); a put whose acknowledgement was lost is retried
//!   and recognised by reading the object back (same bytes: done). `list` is a prefix
//!   listing; `delete` is a DELETE; `lock_writer` returns a no-op guard (fencing is the
//!   conditional put); `remove_incomplete` has nothing to do. Requests are retried with
//!   backoff within a time bound ([`wal::objstore::RetryPolicy`]); a request that still
//!   fails poisons the store like a failed fsync. The trait is synchronous, like the
//!   WAL's `SegmentStore`: the client blocks the calling thread on a runtime of its own
//!   (call the store through `spawn_blocking` from async code). The naming rule
//!   ([`crate::names`]) finds the newest checkpoint from the listing alone, so there is no
//!   pointer object to update (which S3 could not do atomically with the put).
//!
use std::fmt;
use std::io;
use std::sync::Arc;

use wal::fs::{Dir, LocalDir};
use wal::objstore::{ObjectClient, ObjectOptions, StorageUrl};

use crate::names;

/// Storage for the checkpoints and snapshots of one location. See the module docs for the
/// contract.
pub trait CheckpointBackend: Send + Sync + fmt::Debug {
    /// Where the location is (a directory path or a bucket prefix), for messages.
    fn location(&self) -> String;

    /// The full path or key of a name, for messages.
    fn display_name(&self, name: &str) -> String;

    /// Every name in the location, in no particular order (the store filters them by the
    /// naming rule).
    fn list(&self) -> io::Result<Vec<String>>;

    /// The whole content of a name.
    fn get(&self, name: &str) -> io::Result<Vec<u8>>;

    /// Creates `name` with `bytes`, atomically and durably; `AlreadyExists` if it exists.
    fn put_new(&self, name: &str, bytes: &[u8]) -> io::Result<()>;

    /// Removes `name` durably; `Ok` if it does not exist.
    fn delete(&self, name: &str) -> io::Result<()>;

    /// Keeps other writers out while the guard lives (`WouldBlock` if one is in). Backends
    /// without locks return a no-op guard and rely on `put_new`'s create-only semantics.
    fn lock_writer(&self) -> io::Result<Box<dyn Send + Sync>>;

    /// Removes what interrupted `put_new`s left behind (temporary files); returns the names
    /// removed. Called only by the lock holder.
    fn remove_incomplete(&self) -> io::Result<Vec<String>>;
}

/// A [`CheckpointBackend`] over a directory of files ([`wal::fs::Dir`]).
#[derive(Debug, Clone)]
pub struct DirBackend {
    dir: Arc<dyn Dir>,
}

impl DirBackend {
    /// Over any `Dir` (a [`LocalDir`], or a [`wal::fs::SimDir`] in tests).
    pub fn new(dir: Arc<dyn Dir>) -> DirBackend {
        DirBackend { dir }
    }

    /// Over a local directory, created (durably) if missing.
    pub fn local(path: impl Into<std::path::PathBuf>) -> io::Result<DirBackend> {
        Ok(DirBackend::new(Arc::new(LocalDir::create(path)?)))
    }

    /// Over an existing local directory (for read-only tools: never creates it).
    pub fn local_existing(path: impl Into<std::path::PathBuf>) -> io::Result<DirBackend> {
        Ok(DirBackend::new(Arc::new(LocalDir::open(path)?)))
    }

    /// The directory.
    pub fn dir(&self) -> &Arc<dyn Dir> {
        &self.dir
    }
}

impl CheckpointBackend for DirBackend {
    fn location(&self) -> String {
        self.dir.root().display().to_string()
    }

    fn display_name(&self, name: &str) -> String {
        self.dir.path_of(name).display().to_string()
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.dir.list()
    }

    fn get(&self, name: &str) -> io::Result<Vec<u8>> {
        wal::fs::read_all(self.dir.as_ref(), name)
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        // Create-only: the writer lock guarantees nobody else creates `name` between this
        // check and the rename, and the rename is what makes it visible.
        match self.dir.size_bytes(name) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", self.display_name(name)),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        wal::fs::write_atomic(self.dir.as_ref(), name, bytes)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        match self.dir.remove(name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        // Without the directory fsync a crash can bring the name back.
        self.dir.sync_dir()
    }

    fn lock_writer(&self) -> io::Result<Box<dyn Send + Sync>> {
        Ok(Box::new(self.dir.lock(names::LOCK_NAME)?))
    }

    fn remove_incomplete(&self) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in self.dir.list()? {
            if names::is_temporary(&name) {
                match self.dir.remove(&name) {
                    Ok(()) => removed.push(name),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !removed.is_empty() {
            self.dir.sync_dir()?;
        }
        removed.sort();
        Ok(removed)
    }
}

/// A [`CheckpointBackend`] on an object store: one object per name under a prefix, written
/// with create-only conditional puts. See the module docs.
#[derive(Debug)]
pub struct ObjectBackend {
    client: ObjectClient,
}

impl ObjectBackend {
    /// Over the client's prefix.
    pub fn new(client: ObjectClient) -> ObjectBackend {
        ObjectBackend { client }
    }

    /// The client (for its request counters).
    pub fn client(&self) -> &ObjectClient {
        &self.client
    }
}

/// Opens the checkpoint location at a storage URL: a directory for `file://` and plain
/// paths ([`DirBackend`]), else an object store, checked at start-up with one listing
/// request so that a bad URL, a missing bucket or refused credentials fail before any
/// data is accepted (see [`wal::objstore`]).
pub fn backend_for_url(
    url: &StorageUrl,
    options: &ObjectOptions,
) -> crate::Result<Arc<dyn CheckpointBackend>> {
    match url {
        StorageUrl::Local(path) => {
            let backend = DirBackend::local(path).map_err(|source| crate::Error::Io {
                op: "create checkpoint directory",
                target: path.display().to_string(),
                source,
            })?;
            Ok(Arc::new(backend))
        }
        _ => {
            let client = url
                .connect(options)
                .map_err(|e| crate::Error::Storage(e.to_string()))?;
            Ok(Arc::new(ObjectBackend::new(client)))
        }
    }
}

impl CheckpointBackend for ObjectBackend {
    fn location(&self) -> String {
        self.client.location().to_owned()
    }

    fn display_name(&self, name: &str) -> String {
        self.client.display_name(name)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.client.list()?.into_iter().map(|(n, _)| n).collect())
    }

    fn get(&self, name: &str) -> io::Result<Vec<u8>> {
        Ok(self.client.get(name)?.to_vec())
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.client
            .put_create(name, bytes::Bytes::copy_from_slice(bytes))
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.client.delete(name)
    }

    fn lock_writer(&self) -> io::Result<Box<dyn Send + Sync>> {
        Ok(Box::new(()))
    }

    fn remove_incomplete(&self) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }
}
