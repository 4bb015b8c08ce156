//! Cleanup helpers: what the retained checkpoints still reference, so the engine deletes
//! only data no retained checkpoint needs.
//!
//! Everything is keyed by batch time, Lsn, block id or name, never by wall clock. The
//! engine may delete a WAL record, a block, a snapshot or a source file only when
//! [`References`] computed over *every retained checkpoint* (what
//! [`crate::CheckpointStore::references`] returns, after a durable publish) no longer holds
//! it; so a restart that falls back to an older retained checkpoint still finds its data.

use std::collections::{BTreeMap, BTreeSet};

use wal::Lsn;

use crate::model::{BlockId, BlockLocation, Checkpoint, InputData, StreamInput};

/// What one checkpoint, or a set of them, still needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct References {
    /// The oldest batch time mentioned (a pending or remembered batch, or the checkpoint's
    /// own batch time). Batches before it are needed by no retained checkpoint.
    pub oldest_batch_time_ms: u64,
    /// The driver metadata log may be truncated below this Lsn: every retained checkpoint
    /// replays only from after its `metadata_log_lsn`.
    pub metadata_log_truncate_before: Lsn,
    /// Per stream, its data WAL may be truncated below this Lsn. A stream is safe to
    /// truncate only if every retained checkpoint declares it in `data_wal_truncation`; a
    /// stream some checkpoint mentions without declaring it maps to [`Lsn::FIRST`] (keep
    /// everything), and a stream not in the map must not be truncated at all.
    pub data_wal_truncate_before: BTreeMap<u32, Lsn>,
    /// Every block in a pending or remembered batch or unallocated.
    pub blocks: BTreeSet<BlockId>,
    /// Every state snapshot name.
    pub snapshots: BTreeSet<String>,
    /// Per stream, every file a directory source must keep.
    pub files: BTreeMap<u32, BTreeSet<String>>,
    /// Per topic and partition, the lowest source offset still needed (a replayable source
    /// may discard or commit below it).
    pub offsets_from: BTreeMap<String, BTreeMap<u32, u64>>,
}

impl References {
    /// What one checkpoint references.
    pub fn of(checkpoint: &Checkpoint) -> References {
        let p = checkpoint.parts();
        let mut refs = References {
            oldest_batch_time_ms: p.batch_time_ms,
            metadata_log_truncate_before: Lsn::new(p.metadata_log_lsn.get().saturating_add(1)),
            data_wal_truncate_before: BTreeMap::new(),
            blocks: BTreeSet::new(),
            snapshots: p.state_snapshots.iter().map(|r| r.object.clone()).collect(),
            files: BTreeMap::new(),
            offsets_from: BTreeMap::new(),
        };
        for t in &p.data_wal_truncation {
            refs.data_wal_truncate_before
                .insert(t.stream, t.truncate_before);
        }
        for batch in p.pending_batches.iter().chain(&p.remembered_batches) {
            refs.oldest_batch_time_ms = refs.oldest_batch_time_ms.min(batch.batch_time_ms);
        }
        let all_inputs = p
            .pending_batches
            .iter()
            .chain(&p.remembered_batches)
            .flat_map(|b| &b.inputs)
            .chain(&p.unallocated);
        let declared: BTreeSet<u32> = p.data_wal_truncation.iter().map(|t| t.stream).collect();
        for input in all_inputs {
            refs.add_input(input, &declared);
        }
        refs
    }

    fn add_input(&mut self, input: &StreamInput, declared: &BTreeSet<u32>) {
        match &input.data {
            InputData::Blocks(blocks) => {
                for b in blocks {
                    self.blocks.insert(BlockId {
                        stream: input.stream,
                        seq: b.seq,
                    });
                    if let BlockLocation::Wal { log_stream, lsn } = &b.location {
                        // A referenced record lowers the truncation point even if the
                        // declared one is above it (a safety net, never a trim); a log the
                        // checkpoint does not declare is kept whole.
                        let floor = if declared.contains(log_stream) {
                            *lsn
                        } else {
                            Lsn::FIRST
                        };
                        let entry = self
                            .data_wal_truncate_before
                            .entry(*log_stream)
                            .or_insert(floor);
                        *entry = (*entry).min(floor);
                    }
                }
            }
            InputData::OffsetRanges(ranges) => {
                for r in ranges {
                    let entry = self
                        .offsets_from
                        .entry(r.topic.clone())
                        .or_default()
                        .entry(r.partition)
                        .or_insert(r.from_offset);
                    *entry = (*entry).min(r.from_offset);
                }
            }
            InputData::Files(files) => {
                self.files
                    .entry(input.stream)
                    .or_default()
                    .extend(files.iter().cloned());
            }
        }
    }

    /// What a set of checkpoints references together: unions of blocks, snapshots, files;
    /// minimums of batch times, Lsns and offsets. `None` for an empty set.
    pub fn combine<'a>(all: impl IntoIterator<Item = &'a References>) -> Option<References> {
        let mut iter = all.into_iter();
        let mut acc = iter.next()?.clone();
        for other in iter {
            acc.oldest_batch_time_ms = acc.oldest_batch_time_ms.min(other.oldest_batch_time_ms);
            acc.metadata_log_truncate_before = acc
                .metadata_log_truncate_before
                .min(other.metadata_log_truncate_before);
            // A stream only one side declares: the other side may need all of it.
            let streams: BTreeSet<u32> = acc
                .data_wal_truncate_before
                .keys()
                .chain(other.data_wal_truncate_before.keys())
                .copied()
                .collect();
            for s in streams {
                let a = acc
                    .data_wal_truncate_before
                    .get(&s)
                    .copied()
                    .unwrap_or(Lsn::FIRST);
                let b = other
                    .data_wal_truncate_before
                    .get(&s)
                    .copied()
                    .unwrap_or(Lsn::FIRST);
                acc.data_wal_truncate_before.insert(s, a.min(b));
            }
            acc.blocks.extend(other.blocks.iter().copied());
            acc.snapshots.extend(other.snapshots.iter().cloned());
            for (stream, files) in &other.files {
                acc.files
                    .entry(*stream)
                    .or_default()
                    .extend(files.iter().cloned());
            }
            for (topic, partitions) in &other.offsets_from {
                let mine = acc.offsets_from.entry(topic.clone()).or_default();
                for (partition, from) in partitions {
                    let entry = mine.entry(*partition).or_insert(*from);
                    *entry = (*entry).min(*from);
                }
            }
        }
        Some(acc)
    }

    /// True if a retained checkpoint still references the block.
    pub fn holds_block(&self, id: BlockId) -> bool {
        self.blocks.contains(&id)
    }

    /// True if a retained checkpoint still references the snapshot.
    pub fn holds_snapshot(&self, name: &str) -> bool {
        self.snapshots.contains(name)
    }

    /// Where `stream`'s data WAL may be truncated (`Wal::truncate_before`), or `None` if it
    /// must not be.
    pub fn data_wal_truncation_point(&self, stream: u32) -> Option<Lsn> {
        self.data_wal_truncate_before.get(&stream).copied()
    }
}
