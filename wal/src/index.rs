//! The in-memory index of the log: segment base Lsns, and a sparse offset index per segment.
//!
//! Memory: one entry per segment plus one `(Lsn, offset)` pair (16 bytes) per
//! `index_interval_bytes` of log (0.4% of the log at the default 4 KiB).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::lsn::{Lsn, SegmentId};

/// One segment, as far as readers may see it.
#[derive(Debug)]
pub(crate) struct IndexedSegment {
    pub(crate) id: SegmentId,
    pub(crate) base_lsn: Lsn,
    /// Lsn after the last acknowledged record in this segment (`base_lsn` if none).
    pub(crate) end_lsn: Lsn,
    /// Offset after the last acknowledged record.
    pub(crate) len_bytes: u64,
    /// `(lsn, offset)` of the first record and then every `index_interval_bytes`.
    pub(crate) sparse: Vec<(Lsn, u64)>,
    /// The whole segment, once sealed (a read-only mapping for local files). `None` for the
    /// segment being written, which is read with `read_at`.
    pub(crate) sealed: Option<Bytes>,
    /// Whether the segment is sealed (no more appends), whether or not its bytes are kept
    /// in `sealed` (see `SegmentStore::keeps_sealed_bytes`).
    pub(crate) closed: bool,
    /// Whether the segment's header (and so its base Lsn) is known to be durable: true for
    /// segments found by recovery, and for a new segment after its first successful sync.
    /// Retention keeps every segment unless a later one has a durable header, so the
    /// log's next Lsn always survives a crash (Lsns are never reused).
    pub(crate) header_durable: bool,
}

impl IndexedSegment {
    /// Offset of the closest indexed record at or before `lsn`, and the offset where the
    /// next indexed record starts (or the segment's end): a read scans only that range.
    pub(crate) fn range_for(&self, lsn: Lsn) -> (Lsn, u64, u64) {
        let after = self.sparse.partition_point(|(l, _)| *l <= lsn);
        // The first record of a segment is always indexed, and `lsn >= base_lsn`, so
        // `after >= 1` whenever the segment holds `lsn`.
        let (start_lsn, start) = self.sparse[after.saturating_sub(1)];
        let end = self
            .sparse
            .get(after)
            .map_or(self.len_bytes, |(_, off)| *off);
        (start_lsn, start, end)
    }
}

/// Every segment of the log, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) segments: VecDeque<IndexedSegment>,
}

/// Where an Lsn is, or why it is not there.
pub(crate) enum Located<'a> {
    Found(&'a IndexedSegment),
    Truncated { first: Option<Lsn> },
    NotWritten { last: Option<Lsn> },
}

impl Index {
    /// Lsn of the oldest record present.
    pub(crate) fn first_lsn(&self) -> Option<Lsn> {
        self.segments
            .iter()
            .find(|s| s.end_lsn > s.base_lsn)
            .map(|s| s.base_lsn)
    }

    /// Lsn after the newest acknowledged record (the next Lsn to be assigned, if nothing
    /// is in flight).
    pub(crate) fn end_lsn(&self) -> Option<Lsn> {
        self.segments.back().map(|s| s.end_lsn)
    }

    /// Lsn of the newest acknowledged record.
    pub(crate) fn last_lsn(&self) -> Option<Lsn> {
        match (self.first_lsn(), self.end_lsn()) {
            (Some(_), Some(end)) => Some(Lsn::new(end.get() - 1)),
            _ => None,
        }
    }

    /// The segment holding `lsn`: binary search over base Lsns, O(log segments).
    pub(crate) fn locate(&self, lsn: Lsn) -> Located<'_> {
        let after = self.segments.partition_point(|s| s.base_lsn <= lsn);
        if let Some(segment) = after.checked_sub(1).and_then(|i| self.segments.get(i)) {
            if lsn < segment.end_lsn {
                return Located::Found(segment);
            }
            // Empty segments share their base Lsn with their successor; the search above
            // lands on the last of them, so a miss here means `lsn` is not written yet.
            return Located::NotWritten {
                last: self.last_lsn(),
            };
        }
        match self.first_lsn() {
            Some(first) if lsn < first => Located::Truncated { first: Some(first) },
            Some(_) => Located::NotWritten {
                last: self.last_lsn(),
            },
            None if self.segments.front().is_some_and(|s| lsn < s.base_lsn) => {
                Located::Truncated { first: None }
            }
            None => Located::NotWritten { last: None },
        }
    }
}
