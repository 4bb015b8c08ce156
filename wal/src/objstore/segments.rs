//! [`ObjectSegmentStore`]: WAL segments as objects, one per group commit.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;

use super::client::ObjectClient;
use crate::lsn::SegmentId;
use crate::store::{DirSegmentStore, SegmentStore, SegmentWriter};

/// Default bound of the read cache: 64 MiB.
pub const READ_CACHE_BYTES_DEFAULT: u64 = 64 << 20;

/// Most objects fetched concurrently when a read misses the cache (read-ahead of the
/// following segments, which is what makes recovery and replay one round trip per eight
/// objects instead of per object).
pub const READ_AHEAD_OBJECTS: usize = 8;

/// A [`SegmentStore`] whose segments are objects under a prefix: one object per group
/// commit (the store seals on every sync), written with create-only conditional puts. See
/// the [module docs](super) for the layout and the rules.
#[derive(Debug)]
pub struct ObjectSegmentStore {
    client: Arc<ObjectClient>,
    cache: Arc<Mutex<ReadCache>>,
    /// Ids seen by the last listing, for read-ahead.
    listed: Mutex<Vec<SegmentId>>,
}

impl ObjectSegmentStore {
    /// A store over the client's prefix, with a read cache of
    /// [`READ_CACHE_BYTES_DEFAULT`].
    pub fn new(client: ObjectClient) -> ObjectSegmentStore {
        ObjectSegmentStore::with_cache_bytes(client, READ_CACHE_BYTES_DEFAULT)
    }

    /// A store with a read cache of at most `cache_bytes` (at least one object is kept).
    pub fn with_cache_bytes(client: ObjectClient, cache_bytes: u64) -> ObjectSegmentStore {
        ObjectSegmentStore {
            client: Arc::new(client),
            cache: Arc::new(Mutex::new(ReadCache {
                max_bytes: cache_bytes,
                ..ReadCache::default()
            })),
            listed: Mutex::new(Vec::new()),
        }
    }

    /// The client (for its request counters).
    pub fn client(&self) -> &ObjectClient {
        &self.client
    }

    /// The object name of a segment, relative to the prefix: the same
    /// `segment-<id, 20 digits>.wal` as a segment file.
    pub fn object_name(id: SegmentId) -> String {
        DirSegmentStore::file_name(id)
    }

    fn cache(&self) -> MutexGuard<'_, ReadCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fetch(&self, id: SegmentId) -> io::Result<Bytes> {
        if let Some(bytes) = self.cache().get(id) {
            return Ok(bytes);
        }
        // Read ahead: this id and the next listed ones that are not cached, concurrently,
        // within half the cache.
        let mut ids = vec![id];
        {
            let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            let cache = self.cache();
            let start = listed.partition_point(|&l| l <= id);
            for &next in listed[start..].iter().take(READ_AHEAD_OBJECTS - 1) {
                if cache.get(next).is_none() {
                    ids.push(next);
                }
            }
        }
        let names: Vec<String> = ids.iter().map(|&i| Self::object_name(i)).collect();
        let fetched = if ids.len() == 1 {
            vec![self.client.get(&names[0])?]
        } else {
            match self.client.get_many(&names) {
                Ok(all) => all,
                // A read-ahead object may be gone (retention); fetch just this one.
                Err(_) => vec![self.client.get(&names[0])?],
            }
        };
        let mut cache = self.cache();
        for (&i, bytes) in ids.iter().zip(&fetched).rev() {
            cache.insert(i, bytes.clone());
        }
        Ok(fetched[0].clone())
    }
}

/// Read cache of whole objects, bounded by bytes, evicting the oldest insertion first.
#[derive(Debug, Default)]
struct ReadCache {
    max_bytes: u64,
    bytes: u64,
    objects: HashMap<SegmentId, Bytes>,
    order: VecDeque<SegmentId>,
}

impl ReadCache {
    fn get(&self, id: SegmentId) -> Option<Bytes> {
        self.objects.get(&id).cloned()
    }

    fn insert(&mut self, id: SegmentId, bytes: Bytes) {
        if self.objects.contains_key(&id) {
            return;
        }
        self.bytes += bytes.len() as u64;
        self.objects.insert(id, bytes);
        self.order.push_back(id);
        while self.bytes > self.max_bytes && self.order.len() > 1 {
            if let Some(old) = self.order.pop_front()
                && let Some(b) = self.objects.remove(&old)
            {
                self.bytes -= b.len() as u64;
            }
        }
    }

    fn remove(&mut self, id: SegmentId) {
        if let Some(b) = self.objects.remove(&id) {
            self.bytes -= b.len() as u64;
            self.order.retain(|&i| i != id);
        }
    }
}

/// Locations with a writer in this process (see [`SegmentStore::lock`] below).
fn writers() -> MutexGuard<'static, BTreeSet<String>> {
    static WRITERS: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    WRITERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

struct WriterGuard(String);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        writers().remove(&self.0);
    }
}

impl SegmentStore for ObjectSegmentStore {
    fn location(&self) -> String {
        self.client.location().to_owned()
    }

    fn segment_name(&self, id: SegmentId) -> String {
        self.client.display_name(&Self::object_name(id))
    }

    fn seals_on_sync(&self) -> bool {
        true
    }

    fn keeps_sealed_bytes(&self) -> bool {
        false
    }

    fn list(&self) -> io::Result<Vec<SegmentId>> {
        let mut ids: Vec<SegmentId> = self
            .client
            .list()?
            .into_iter()
            .filter_map(|(name, _)| DirSegmentStore::parse_file_name(&name))
            .collect();
        ids.sort();
        *self.listed.lock().unwrap_or_else(|p| p.into_inner()) = ids.clone();
        Ok(ids)
    }

    fn create(&self, id: SegmentId, header: &[u8]) -> io::Result<Box<dyn SegmentWriter>> {
        // No request here: the create-only put at `sync` is what refuses an existing id
        // (a HEAD first would double the requests and still race with another writer).
        Ok(Box::new(ObjectSegmentWriter {
            client: Arc::clone(&self.client),
            cache: Arc::clone(&self.cache),
            id,
            buf: header.to_vec(),
            len: header.len() as u64,
            put: false,
        }))
    }

    fn read(&self, id: SegmentId) -> io::Result<Bytes> {
        self.fetch(id)
    }

    fn read_at(&self, id: SegmentId, offset: u64, len: usize) -> io::Result<Bytes> {
        let bytes = self.fetch(id)?;
        let end = offset.saturating_add(len as u64);
        if end > bytes.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} has {} bytes, read of {len} at {offset} goes past its end",
                    self.segment_name(id),
                    bytes.len()
                ),
            ));
        }
        Ok(bytes.slice(offset as usize..end as usize))
    }

    fn truncate(&self, id: SegmentId, _len: u64) -> io::Result<()> {
        // Never asked: a put is atomic, so recovery treats every object as sealed and
        // reports damage anywhere as corruption instead of cutting it.
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{} is an object; objects are never cut",
                self.segment_name(id)
            ),
        ))
    }

    fn delete(&self, id: SegmentId) -> io::Result<()> {
        self.cache().remove(id);
        self.client.delete(&Self::object_name(id))
    }

    /// Object stores have no locks. Within one process, a second writer on the same
    /// location is refused (`WouldBlock`) like a second open of a directory. Across
    /// processes the create-only put is the fence: two writers that recovered the same
    /// log both try to create the next segment id, one put wins, and the other writer's
    /// sync fails (its appends are not acknowledged) and poisons it.
    fn lock(&self) -> io::Result<Box<dyn Send + Sync>> {
        let key = self.client.location().to_owned();
        if !writers().insert(key.clone()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{key} already has a writer in this process"),
            ));
        }
        Ok(Box::new(WriterGuard(key)))
    }
}

#[derive(Debug)]
struct ObjectSegmentWriter {
    client: Arc<ObjectClient>,
    cache: Arc<Mutex<ReadCache>>,
    id: SegmentId,
    /// The whole segment: header and frames.
    buf: Vec<u8>,
    /// Bytes in the segment (header included), kept when `buf` is handed to the put.
    len: u64,
    /// Whether the object was put (the segment is then sealed).
    put: bool,
}

impl SegmentWriter for ObjectSegmentWriter {
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        if self.put {
            return Err(io::Error::other(format!(
                "{} was already put; objects are written once",
                self.client
                    .display_name(&ObjectSegmentStore::object_name(self.id))
            )));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.buf.reserve(len);
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.len = self.buf.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.put {
            return Ok(());
        }
        let bytes = Bytes::from(std::mem::take(&mut self.buf));
        let name = ObjectSegmentStore::object_name(self.id);
        match self.client.put_create(&name, bytes.clone()) {
            Ok(()) => {
                self.put = true;
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(self.id, bytes);
                Ok(())
            }
            Err(e) => {
                // The log poisons itself after a failed sync; keep the bytes anyway, so
                // the writer's view stays whole.
                self.buf = bytes.to_vec();
                Err(e)
            }
        }
    }

    fn rewind(&mut self, len: u64) -> io::Result<()> {
        self.buf.truncate(len as usize);
        self.len = self.buf.len() as u64;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.len
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}
