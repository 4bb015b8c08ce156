//! [`CheckpointStore`]: publish, read with fallback, retention, state snapshots and their
//! garbage collection, over any [`CheckpointBackend`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{CheckpointBackend, DirBackend};
use crate::compat::{self, GraphChange};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{self, Kind};
use crate::model::{Checkpoint, GraphDescription, StateRef, StoredCheckpoint, check_operator_id};
use crate::names;
use crate::references::References;

/// A checkpoint location, opened as its one writer or read-only. See the crate docs for
/// the publish, fallback and retention rules.
///
/// `Send + Sync`; calls are serialized internally. Every call does blocking IO: from async
/// code, call it through `spawn_blocking`.
pub struct CheckpointStore {
    backend: Arc<dyn CheckpointBackend>,
    config: Config,
    location: String,
    /// The writer lock; `None` for a read-only store.
    writer: Option<Box<dyn Send + Sync>>,
    inner: Mutex<Inner>,
}

// The engine shares one store between its scheduler and its snapshot writers.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<CheckpointStore>();
};

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("location", &self.location)
            .field("writer", &self.writer.is_some())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    /// Every checkpoint name present, by sequence, with what reading it found.
    checkpoints: BTreeMap<u64, Entry>,
    /// Every snapshot name present.
    snapshots: BTreeSet<String>,
    /// Snapshots put since the last publish: spared by that publish's garbage collection
    /// even if it does not reference them (they may be meant for the next checkpoint).
    fresh_snapshots: BTreeSet<String>,
    /// Set by the first failed write or delete; see [`Error::Poisoned`].
    poisoned: Option<String>,
}

#[derive(Clone, Debug)]
enum Entry {
    Valid {
        batch_time_ms: u64,
        references: References,
    },
    Damaged {
        reason: String,
    },
}

/// What the store knows about one checkpoint name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The sequence number from its name.
    pub sequence: u64,
    /// The name.
    pub name: String,
    /// Its batch time, if it is valid.
    pub batch_time_ms: Option<u64>,
    /// Why it cannot be used, if it cannot.
    pub problem: Option<String>,
}

/// The checkpoint a restart starts from.
#[derive(Debug)]
pub struct Restored {
    /// Its name.
    pub name: String,
    /// Its path or key, for messages.
    pub display_name: String,
    /// Its sequence number.
    pub sequence: u64,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Newer checkpoints that were skipped, newest first, with why (also logged as
    /// warnings).
    pub skipped: Vec<Skipped>,
    /// The state snapshot bodies by operator id, loaded and verified: filled by
    /// [`CheckpointStore::restore`], empty from [`CheckpointStore::latest`].
    pub state: BTreeMap<String, Vec<u8>>,
}

impl Restored {
    /// Decides whether the current graph can restart from this checkpoint (see
    /// [`crate::compat`]): the compatible changes, or [`Error::IncompatibleGraph`].
    pub fn check_compatible(
        &self,
        current: &GraphDescription,
        batch_interval_ms: u64,
    ) -> Result<Vec<GraphChange>> {
        compat::check(
            &self.display_name,
            &self.checkpoint,
            current,
            batch_interval_ms,
        )
    }
}

/// A checkpoint skipped by the fallback rule.
#[derive(Debug)]
pub struct Skipped {
    /// Its name.
    pub name: String,
    /// Why it was skipped.
    pub error: Error,
}

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The new checkpoint's sequence number.
    pub sequence: u64,
    /// Its name.
    pub name: String,
    /// Its size, envelope included.
    pub len_bytes: u64,
    /// Checkpoints deleted by retention.
    pub deleted_checkpoints: Vec<String>,
    /// Snapshots deleted because no retained checkpoint references them.
    pub deleted_snapshots: Vec<String>,
}

impl CheckpointStore {
    /// Opens a local directory as its writer, creating it if missing.
    pub fn open_dir(
        path: impl Into<std::path::PathBuf>,
        config: Config,
    ) -> Result<CheckpointStore> {
        let path = path.into();
        let backend = DirBackend::local(&path).map_err(|source| Error::Io {
            op: "create checkpoint directory",
            target: path.display().to_string(),
            source,
        })?;
        CheckpointStore::open(Arc::new(backend), config)
    }

    /// Opens a location as its one writer: takes the writer lock, removes what interrupted
    /// publishes left, and reads every checkpoint present (each is verified once here, so
    /// that retention and [`CheckpointStore::references`] know which are valid).
    ///
    /// Fails if another writer holds the lock ([`Error::Locked`]) or if a checkpoint has a
    /// format version this build does not read ([`Error::UnsupportedVersion`]: an older
    /// build must not take over, and eventually delete, a newer build's checkpoints).
    pub fn open(backend: Arc<dyn CheckpointBackend>, config: Config) -> Result<CheckpointStore> {
        config.validate()?;
        let location = backend.location();
        let lock = backend.lock_writer().map_err(|source| {
            if source.kind() == io::ErrorKind::WouldBlock {
                Error::Locked {
                    location: location.clone(),
                    source,
                }
            } else {
                Error::Io {
                    op: "lock checkpoint location",
                    target: location.clone(),
                    source,
                }
            }
        })?;
        let removed = backend.remove_incomplete().map_err(|source| Error::Io {
            op: "remove temporary files in",
            target: location.clone(),
            source,
        })?;
        for name in &removed {
            tracing::info!(file = %backend.display_name(name), "removed the temporary file of an interrupted publish");
        }
        let store = CheckpointStore {
            backend,
            config,
            location,
            writer: Some(lock),
            inner: Mutex::new(Inner::default()),
        };
        store.scan(true)?;
        Ok(store)
    }

    /// Opens a location read-only (for tools such as `ember checkpoint inspect`): no lock,
    /// nothing is ever written or deleted, and checkpoints of newer format versions are
    /// reported rather than refused.
    pub fn open_read_only(
        backend: Arc<dyn CheckpointBackend>,
        config: Config,
    ) -> Result<CheckpointStore> {
        config.validate()?;
        let store = CheckpointStore {
            location: backend.location(),
            backend,
            config,
            writer: None,
            inner: Mutex::new(Inner::default()),
        };
        store.scan(false)?;
        Ok(store)
    }

    /// The location (directory path or bucket prefix).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn CheckpointBackend> {
        &self.backend
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every update is a
        // single insert or remove after the IO it records), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn list(&self) -> Result<Vec<String>> {
        self.backend.list().map_err(|source| Error::Io {
            op: "list",
            target: self.location.clone(),
            source,
        })
    }

    /// Lists the location and reads every checkpoint, replacing what `inner` knew.
    fn scan(&self, refuse_newer_versions: bool) -> Result<()> {
        let names = self.list()?;
        let mut checkpoints = BTreeMap::new();
        let mut snapshots = BTreeSet::new();
        for name in names {
            if let Some(seq) = names::parse_checkpoint_name(&name) {
                let entry = match self.read_checkpoint(seq) {
                    Ok(stored) => Entry::Valid {
                        batch_time_ms: stored.checkpoint.batch_time_ms(),
                        references: References::of(&stored.checkpoint),
                    },
                    Err(e @ Error::UnsupportedVersion { .. }) if refuse_newer_versions => {
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::warn!(checkpoint = %self.backend.display_name(&name), error = %e, "unusable checkpoint");
                        Entry::Damaged {
                            reason: e.to_string(),
                        }
                    }
                };
                checkpoints.insert(seq, entry);
            } else if names::parse_snapshot_name(&name).is_some() {
                snapshots.insert(name);
            }
        }
        let mut inner = self.lock_inner();
        inner.checkpoints = checkpoints;
        inner.snapshots = snapshots;
        Ok(())
    }

    /// Reads and verifies checkpoint `seq`.
    fn read_checkpoint(&self, seq: u64) -> Result<StoredCheckpoint> {
        let name = names::checkpoint_name(seq);
        let shown = self.backend.display_name(&name);
        let bytes = self.backend.get(&name).map_err(|source| Error::Io {
            op: "read checkpoint",
            target: shown.clone(),
            source,
        })?;
        if bytes.len() as u64 > self.config.checkpoint_size_max_bytes {
            return Err(Error::TooLarge {
                what: "checkpoint",
                name: shown,
                len_bytes: bytes.len() as u64,
                setting: "checkpoint_size_max_bytes",
                max_bytes: self.config.checkpoint_size_max_bytes,
            });
        }
        let stored = StoredCheckpoint::decode(&shown, &bytes)?;
        if stored.sequence != seq {
            return Err(Error::Misplaced {
                name: shown,
                reason: format!(
                    "its content is checkpoint number {}, its name says {seq}",
                    stored.sequence
                ),
            });
        }
        Ok(stored)
    }

    /// The newest valid checkpoint, by the fallback rule: checkpoints are tried newest
    /// (highest sequence) first; one that is torn, corrupt, unparsable or misplaced is
    /// skipped with a warning naming it, and the next older one is tried.
    ///
    /// - `Ok(None)`: there is no checkpoint at all (a first start).
    /// - [`Error::NoValidCheckpoint`]: there are checkpoints but none is valid; it lists each
    ///   one and why.
    /// - [`Error::UnsupportedVersion`]: the newest readable checkpoint was written by a
    ///   newer format version. Never skipped: falling back past it would silently rewind.
    /// - [`Error::Io`] if the location cannot be listed.
    ///
    /// State snapshots are not loaded ([`Restored::state`] is empty); see
    /// [`CheckpointStore::restore`].
    pub fn latest(&self) -> Result<Option<Restored>> {
        self.find_newest(false)
    }

    /// Like [`CheckpointStore::latest`], and also loads and verifies every state snapshot
    /// the checkpoint references. A checkpoint whose snapshot is missing or damaged is
    /// skipped like a damaged checkpoint.
    pub fn restore(&self) -> Result<Option<Restored>> {
        self.find_newest(true)
    }

    fn find_newest(&self, load_state: bool) -> Result<Option<Restored>> {
        let mut seqs: Vec<u64> = self
            .list()?
            .iter()
            .filter_map(|n| names::parse_checkpoint_name(n))
            .collect();
        if seqs.is_empty() {
            return Ok(None);
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let mut skipped: Vec<Skipped> = Vec::new();
        for seq in seqs {
            let name = names::checkpoint_name(seq);
            let outcome = self.read_checkpoint(seq).and_then(|stored| {
                let mut state = BTreeMap::new();
                if load_state {
                    for r in &stored.checkpoint.parts().state_snapshots {
                        state.insert(r.operator.clone(), self.load_snapshot(r)?);
                    }
                }
                Ok((stored, state))
            });
            match outcome {
                Ok((stored, state)) => {
                    for s in &skipped {
                        tracing::warn!(
                            checkpoint = %self.backend.display_name(&s.name),
                            error = %s.error,
                            "skipped a damaged checkpoint; falling back to an older one"
                        );
                    }
                    return Ok(Some(Restored {
                        display_name: self.backend.display_name(&name),
                        name,
                        sequence: seq,
                        checkpoint: stored.checkpoint,
                        skipped,
                        state,
                    }));
                }
                Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
                Err(error) => skipped.push(Skipped { name, error }),
            }
        }
        Err(Error::NoValidCheckpoint {
            location: self.location.clone(),
            tried: skipped
                .iter()
                .map(|s| format!("{}: {}", s.name, s.error))
                .collect(),
        })
    }

    fn check_writable(&self, inner: &Inner, action: &'static str) -> Result<()> {
        if self.writer.is_none() {
            return Err(Error::ReadOnly {
                location: self.location.clone(),
                action,
            });
        }
        if let Some(cause) = &inner.poisoned {
            return Err(Error::Poisoned {
                location: self.location.clone(),
                cause: cause.clone(),
            });
        }
        Ok(())
    }

    /// Records the failure that poisons the store and returns the error to report.
    fn poison(&self, inner: &mut Inner, error: Error) -> Error {
        tracing::error!(location = %self.location, %error, "checkpoint store poisoned; restart to recover");
        inner.poisoned = Some(error.to_string());
        error
    }

    /// Publishes `checkpoint` as the new newest one, then applies retention and snapshot
    /// garbage collection.
    ///
    /// After `Ok`, the checkpoint is durable and a crash cannot lose it. After `Err`, it
    /// may or may not have been published (a crash leaves either the previous newest or
    /// this one, never a partial file), and a failed write or delete poisons the store:
    /// every later write fails with [`Error::Poisoned`] until the process restarts.
    ///
    /// Every state snapshot the checkpoint references must have been written by
    /// [`CheckpointStore::put_snapshot`] (and not collected since): checked here, before
    /// anything is written ([`Error::SnapshotMissing`]).
    pub fn publish(&self, checkpoint: &Checkpoint) -> Result<Published> {
        let mut inner = self.lock_inner();
        self.check_writable(&inner, "publish a checkpoint")?;

        for (i, r) in checkpoint.parts().state_snapshots.iter().enumerate() {
            if !inner.snapshots.contains(&r.object) {
                return Err(Error::SnapshotMissing {
                    name: self.backend.display_name(&r.object),
                    operator: r.operator.clone(),
                });
            }
            let consistent = names::parse_snapshot_name(&r.object).is_some_and(|n| {
                n.operator == r.operator && n.crc32 == r.crc32 && n.taken_at_ms == r.taken_at_ms
            });
            if !consistent {
                return Err(Error::Invalid {
                    name: crate::model::NEW_CHECKPOINT.to_owned(),
                    field: format!("state_snapshots[{i}].object"),
                    reason: format!(
                        "{} is not the snapshot of operator {} at {} ms with crc32 {:#010x}",
                        r.object, r.operator, r.taken_at_ms, r.crc32
                    ),
                });
            }
        }

        let sequence = inner.checkpoints.keys().next_back().map_or(1, |s| s + 1);
        let name = names::checkpoint_name(sequence);
        let shown = self.backend.display_name(&name);
        let bytes = StoredCheckpoint {
            sequence,
            checkpoint: checkpoint.clone(),
        }
        .encode();
        if bytes.len() as u64 > self.config.checkpoint_size_max_bytes {
            return Err(Error::TooLarge {
                what: "checkpoint",
                name: shown,
                len_bytes: bytes.len() as u64,
                setting: "checkpoint_size_max_bytes",
                max_bytes: self.config.checkpoint_size_max_bytes,
            });
        }
        if let Err(source) = self.backend.put_new(&name, &bytes) {
            let error = if source.kind() == io::ErrorKind::AlreadyExists {
                Error::Conflict { name: shown }
            } else {
                Error::Io {
                    op: "publish checkpoint",
                    target: shown,
                    source,
                }
            };
            return Err(self.poison(&mut inner, error));
        }
        inner.checkpoints.insert(
            sequence,
            Entry::Valid {
                batch_time_ms: checkpoint.batch_time_ms(),
                references: References::of(checkpoint),
            },
        );
        tracing::debug!(checkpoint = %shown, batch_time_ms = checkpoint.batch_time_ms(), "published");

        let deleted_checkpoints = self.apply_retention(&mut inner)?;
        let deleted_snapshots = self.collect_snapshots(&mut inner)?;
        Ok(Published {
            sequence,
            name,
            len_bytes: bytes.len() as u64,
            deleted_checkpoints,
            deleted_snapshots,
        })
    }

    /// Keeps the newest `checkpoints_retained` valid checkpoints and any damaged ones newer
    /// than the oldest of them; deletes everything older. Deletes are durable, and done
    /// before snapshot collection, so a crash can never bring back a checkpoint whose
    /// snapshots were collected.
    fn apply_retention(&self, inner: &mut Inner) -> Result<Vec<String>> {
        let mut valid = 0;
        let mut cutoff = None;
        for (seq, entry) in inner.checkpoints.iter().rev() {
            if matches!(entry, Entry::Valid { .. }) {
                valid += 1;
                if valid == self.config.checkpoints_retained {
                    cutoff = Some(*seq);
                    break;
                }
            }
        }
        let Some(cutoff) = cutoff else {
            return Ok(Vec::new());
        };
        let doomed: Vec<u64> = inner.checkpoints.range(..cutoff).map(|(s, _)| *s).collect();
        let mut deleted = Vec::new();
        for seq in doomed {
            let name = names::checkpoint_name(seq);
            if let Err(source) = self.backend.delete(&name) {
                let error = Error::Io {
                    op: "delete old checkpoint",
                    target: self.backend.display_name(&name),
                    source,
                };
                return Err(self.poison(inner, error));
            }
            inner.checkpoints.remove(&seq);
            deleted.push(name);
        }
        Ok(deleted)
    }

    /// Deletes every snapshot that no retained valid checkpoint references and that was not
    /// put since the previous publish.
    fn collect_snapshots(&self, inner: &mut Inner) -> Result<Vec<String>> {
        let referenced: BTreeSet<&String> = inner
            .checkpoints
            .values()
            .filter_map(|e| match e {
                Entry::Valid { references, .. } => Some(&references.snapshots),
                Entry::Damaged { .. } => None,
            })
            .flatten()
            .collect();
        let doomed: Vec<String> = inner
            .snapshots
            .iter()
            .filter(|n| !referenced.contains(n) && !inner.fresh_snapshots.contains(*n))
            .cloned()
            .collect();
        inner.fresh_snapshots.clear();
        let mut deleted = Vec::new();
        for name in doomed {
            if let Err(source) = self.backend.delete(&name) {
                let error = Error::Io {
                    op: "delete unreferenced state snapshot",
                    target: self.backend.display_name(&name),
                    source,
                };
                return Err(self.poison(inner, error));
            }
            inner.snapshots.remove(&name);
            deleted.push(name);
        }
        Ok(deleted)
    }

    /// Writes the state snapshot of `operator` taken at batch `taken_at_ms`, durably, and
    /// returns the reference to put in the checkpoint. `body` is the engine's encoded state.
    ///
    /// Writing the same state again (a recomputed batch) is an idempotent success. The
    /// snapshot is kept at least until the next publish; after that, only while a retained
    /// checkpoint references it. A failed write poisons the store, like a failed publish.
    pub fn put_snapshot(&self, operator: &str, taken_at_ms: u64, body: &[u8]) -> Result<StateRef> {
        let mut inner = self.lock_inner();
        self.check_writable(&inner, "write a state snapshot")?;
        check_operator_id(operator).map_err(|reason| Error::Invalid {
            name: "(new state snapshot)".to_owned(),
            field: "operator".to_owned(),
            reason,
        })?;
        let crc32 = crc32fast::hash(body);
        let name = names::snapshot_name(operator, taken_at_ms, crc32);
        let shown = self.backend.display_name(&name);
        let sealed = format::seal(Kind::Snapshot, body);
        if sealed.len() as u64 > self.config.snapshot_size_max_bytes {
            return Err(Error::TooLarge {
                what: "state snapshot",
                name: shown,
                len_bytes: sealed.len() as u64,
                setting: "snapshot_size_max_bytes",
                max_bytes: self.config.snapshot_size_max_bytes,
            });
        }
        let state_ref = StateRef {
            operator: operator.to_owned(),
            taken_at_ms,
            object: name.clone(),
            crc32,
            len_bytes: body.len() as u64,
        };
        if inner.snapshots.contains(&name) {
            match self.backend.get(&name) {
                Ok(existing) if existing == sealed => {
                    inner.fresh_snapshots.insert(name);
                    return Ok(state_ref);
                }
                // Damaged (or vanished): replace it. Same name means same content, so no
                // checkpoint can be relying on other bytes under it.
                Ok(_) => {
                    tracing::warn!(snapshot = %shown, "replacing a damaged state snapshot");
                    if let Err(source) = self.backend.delete(&name) {
                        let error = Error::Io {
                            op: "delete damaged state snapshot",
                            target: shown,
                            source,
                        };
                        return Err(self.poison(&mut inner, error));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        op: "read state snapshot",
                        target: shown,
                        source,
                    });
                }
            }
            inner.snapshots.remove(&name);
        }
        if let Err(source) = self.backend.put_new(&name, &sealed) {
            let error = if source.kind() == io::ErrorKind::AlreadyExists {
                Error::Conflict { name: shown }
            } else {
                Error::Io {
                    op: "write state snapshot",
                    target: shown,
                    source,
                }
            };
            return Err(self.poison(&mut inner, error));
        }
        inner.snapshots.insert(name.clone());
        inner.fresh_snapshots.insert(name);
        Ok(state_ref)
    }

    /// Reads a state snapshot and verifies it: its envelope, then its length and CRC-32
    /// against what the checkpoint recorded. Returns the body.
    pub fn load_snapshot(&self, state_ref: &StateRef) -> Result<Vec<u8>> {
        let shown = self.backend.display_name(&state_ref.object);
        let bytes = self.backend.get(&state_ref.object).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::SnapshotMissing {
                    name: shown.clone(),
                    operator: state_ref.operator.clone(),
                }
            } else {
                Error::Io {
                    op: "read state snapshot",
                    target: shown.clone(),
                    source,
                }
            }
        })?;
        if bytes.len() as u64 > self.config.snapshot_size_max_bytes {
            return Err(Error::TooLarge {
                what: "state snapshot",
                name: shown,
                len_bytes: bytes.len() as u64,
                setting: "snapshot_size_max_bytes",
                max_bytes: self.config.snapshot_size_max_bytes,
            });
        }
        let mut bytes = bytes;
        let (_, body) = format::open(Kind::Snapshot, &shown, &bytes)?;
        if body.len() as u64 != state_ref.len_bytes {
            return Err(Error::SnapshotMismatch {
                name: shown,
                field: "length",
                expected: state_ref.len_bytes.to_string(),
                found: body.len().to_string(),
            });
        }
        let crc = crc32fast::hash(body);
        if crc != state_ref.crc32 {
            return Err(Error::SnapshotMismatch {
                name: shown,
                field: "crc32",
                expected: format!("{:#010x}", state_ref.crc32),
                found: format!("{crc:#010x}"),
            });
        }
        // Drop the header in place: state can be large, and a copy would double it.
        bytes.drain(..format::HEADER_BYTES);
        Ok(bytes)
    }

    /// What the retained valid checkpoints reference together: the cleanup horizon (see
    /// [`References`]). `None` if there is no valid checkpoint, in which case nothing the
    /// engine stored may be deleted on the checkpoints' account.
    pub fn references(&self) -> Option<References> {
        let inner = self.lock_inner();
        References::combine(inner.checkpoints.values().filter_map(|e| match e {
            Entry::Valid { references, .. } => Some(references),
            Entry::Damaged { .. } => None,
        }))
    }

    /// The checkpoints present, oldest first, as of opening or the last publish.
    pub fn checkpoints(&self) -> Vec<CheckpointInfo> {
        let inner = self.lock_inner();
        inner
            .checkpoints
            .iter()
            .map(|(seq, entry)| CheckpointInfo {
                sequence: *seq,
                name: names::checkpoint_name(*seq),
                batch_time_ms: match entry {
                    Entry::Valid { batch_time_ms, .. } => Some(*batch_time_ms),
                    Entry::Damaged { .. } => None,
                },
                problem: match entry {
                    Entry::Valid { .. } => None,
                    Entry::Damaged { reason } => Some(reason.clone()),
                },
            })
            .collect()
    }

    /// The state snapshot names present, as of opening or the last write.
    pub fn snapshots(&self) -> Vec<String> {
        self.lock_inner().snapshots.iter().cloned().collect()
    }

    /// Reads the whole location afresh and describes it: every checkpoint with its status,
    /// the newest valid one in full, the snapshots, leftover temporary files, and the
    /// cleanup horizon. Its `Display` is the text `ember checkpoint inspect` prints.
    pub fn describe(&self) -> Result<crate::describe::Description> {
        crate::describe::describe(self)
    }

    /// For `describe`: every name of the location, each checkpoint freshly read.
    pub(crate) fn read_all(&self) -> Result<Listing> {
        let names = self.list()?;
        let mut seqs: Vec<u64> = names
            .iter()
            .filter_map(|n| names::parse_checkpoint_name(n))
            .collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let mut snapshots: Vec<String> = names
            .iter()
            .filter(|n| names::parse_snapshot_name(n).is_some())
            .cloned()
            .collect();
        snapshots.sort();
        let mut temporaries: Vec<String> = names
            .iter()
            .filter(|n| names::is_temporary(n))
            .cloned()
            .collect();
        temporaries.sort();
        let checkpoints = seqs
            .into_iter()
            .map(|s| (s, self.read_checkpoint(s)))
            .collect();
        Ok(Listing {
            checkpoints,
            snapshots,
            temporaries,
        })
    }
}

/// A location read afresh, for `describe`.
pub(crate) struct Listing {
    /// Every checkpoint, newest first, with what reading it gave.
    pub checkpoints: Vec<(u64, Result<StoredCheckpoint>)>,
    /// Snapshot names, sorted.
    pub snapshots: Vec<String>,
    /// Temporary files, sorted.
    pub temporaries: Vec<String>,
}
