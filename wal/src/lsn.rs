//! `Lsn` and `SegmentId`: the two numbers that address everything in the log.

use std::fmt;

/// A log sequence number: the address of one record.
///
/// Invariants:
/// - Lsns are dense and strictly increasing within one log: the first record ever appended
///   is `Lsn(1)`, and each later record is the previous one's Lsn plus one. Retention removes
///   a prefix, so the oldest record still present may have any Lsn.
/// - `Lsn(0)` never addresses a record.
///
/// Density is what makes [`crate::Wal::read`] cheap: the segment holding an Lsn is found by
/// binary search over segment base Lsns, without a per-record index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

impl Lsn {
    /// The Lsn of the first record of a new log.
    pub const FIRST: Lsn = Lsn(1);

    /// Wraps a raw Lsn value.
    pub const fn new(value: u64) -> Lsn {
        Lsn(value)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The Lsn right after this one.
    ///
    /// # Panics
    /// At `u64::MAX`, which a log cannot reach (2^64 records).
    pub fn next(self) -> Lsn {
        Lsn(self.0.checked_add(1).expect("Lsn overflow: 2^64 records"))
    }

    /// `self + count`, or `None` on overflow.
    pub fn checked_add(self, count: u64) -> Option<Lsn> {
        self.0.checked_add(count).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The number of one segment. Segments are numbered 1, 2, 3, ... in the order they were
/// created; a gap between two present segments means one is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(u64);

impl SegmentId {
    /// The id of the first segment of a new log.
    pub const FIRST: SegmentId = SegmentId(1);

    /// Wraps a raw segment id.
    pub const fn new(value: u64) -> SegmentId {
        SegmentId(value)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The id of the segment created after this one.
    ///
    /// # Panics
    /// At `u64::MAX`, which a log cannot reach.
    pub fn next(self) -> SegmentId {
        SegmentId(self.0.checked_add(1).expect("segment id overflow"))
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
