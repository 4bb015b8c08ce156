//! Recovery: scan every segment, then decide per segment with one decision table.
//!
//! [`analyze`] reads and scans every segment without changing anything; the CLI's
//! `inspect` and `verify` use it directly. [`crate::Wal::open`] then carries out the
//! decisions (cut a torn tail, discard a torn newest segment) or refuses to open.
//!
//! # The decision table
//!
//! Inputs, for each segment in id order:
//!
//! | input | values |
//! |---|---|
//! | `continuity` | `Continuous`: its id is its predecessor's plus one and (if its header is valid) its base Lsn is the predecessor's end Lsn, or it is the oldest segment; `Gap` otherwise |
//! | `header` | `Valid`; `Damaged` (short, bad magic, bad checksum); `Unsupported` (valid, newer format version); `Foreign` (valid, but another segment's id) |
//! | `body` | `Clean`: valid records to the last byte; `Damaged`: a frame that is cut short, has an impossible length or a bad checksum; `WrongLsn`: a valid frame with the wrong Lsn |
//! | `position` | `Last` (newest segment) or `Earlier` |
//! | `valid_after` | whether any valid record (checksum and plausible Lsn) exists after the damage |
//!
//! Rows (`*` = any value); [`TABLE`] is the same table in code, and a test checks that
//! every one of the 96 combinations matches exactly one row:
//!
//! | continuity | header | body | position | valid_after | decision | why |
//! |---|---|---|---|---|---|---|
//! | Gap | * | * | * | * | FailMissing | a segment, or records between two segments, are missing; we never skip a hole |
//! | Continuous | Unsupported | * | * | * | FailUnsupported | written by a newer format; reading it could misinterpret bytes |
//! | Continuous | Foreign | * | * | * | FailCorrupt | a valid header of another segment: a misplaced or copied file |
//! | Continuous | Valid | Clean | * | * | Accept | every byte is a valid record |
//! | Continuous | Valid | WrongLsn | * | * | FailCorrupt | a checksummed Lsn out of sequence cannot come from a torn write |
//! | Continuous | Valid | Damaged | Earlier | * | FailCorrupt | a segment is fully synced before its successor is created, so its damage is not a torn write |
//! | Continuous | Valid | Damaged | Last | true | FailCorrupt | valid records after the damage: it is in the middle of the log, not at its torn end |
//! | Continuous | Valid | Damaged | Last | false | TruncateTail | a torn write after the last sync; nothing after it was acknowledged |
//! | Continuous | Damaged | * | Earlier | * | FailCorrupt | the header of a segment with a successor was synced; damage is corruption |
//! | Continuous | Damaged | * | Last | true | FailCorrupt | records follow an unreadable header: corruption, not a torn creation |
//! | Continuous | Damaged | * | Last | false | DiscardSegment | the newest segment was being created when the crash hit; its first sync, which would have made the header durable, never completed |
//!
//! Object stores ([`crate::store::SegmentStore::seals_on_sync`]) write each segment with
//! one atomic put, so no segment can be torn: every segment, the newest included, gets
//! `position = Earlier`, and damage anywhere is `FailCorrupt`, never cut.
//!
//! What this cannot tell apart: damage confined to the very end of the newest segment is
//! treated as a torn write even if it is media corruption of the last acknowledged
//! records. Every other damage is reported, never skipped.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{self, Damage, HeaderStatus, SegmentScan};
use crate::lsn::{Lsn, SegmentId};
use crate::store::SegmentStore;

/// Whether a segment continues its predecessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuity {
    /// Ids and Lsns line up (or it is the oldest segment).
    Continuous,
    /// Something is missing between this segment and its predecessor.
    Gap,
}

/// The header, as the table sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderInput {
    /// Valid and ours.
    Valid,
    /// Short, bad magic or bad checksum.
    Damaged,
    /// A newer format version.
    Unsupported,
    /// Another segment's valid header.
    Foreign,
}

/// The records, as the table sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyInput {
    /// Valid records up to the last byte.
    Clean,
    /// A frame cut short, with an impossible length or a bad checksum.
    Damaged,
    /// A valid frame with an Lsn out of sequence.
    WrongLsn,
}

/// Newest segment or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// The newest segment.
    Last,
    /// A segment with a successor.
    Earlier,
}

/// One combination of the table's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// See [`Continuity`].
    pub continuity: Continuity,
    /// See [`HeaderInput`].
    pub header: HeaderInput,
    /// See [`BodyInput`].
    pub body: BodyInput,
    /// See [`Position`].
    pub position: Position,
    /// Whether a valid record exists after the damage.
    pub valid_after: bool,
}

/// What recovery does with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep it as is.
    Accept,
    /// Cut the torn tail at the damage offset.
    TruncateTail,
    /// Delete the segment: it was never synced.
    DiscardSegment,
    /// Refuse to open: corruption.
    FailCorrupt,
    /// Refuse to open: a segment is missing.
    FailMissing,
    /// Refuse to open: unsupported format version.
    FailUnsupported,
}

impl Decision {
    /// True for the decisions that refuse to open the log.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Decision::FailCorrupt | Decision::FailMissing | Decision::FailUnsupported
        )
    }
}

/// One row of the decision table; `None` matches any value.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// Continuity to match.
    pub continuity: Option<Continuity>,
    /// Header to match.
    pub header: Option<HeaderInput>,
    /// Body to match.
    pub body: Option<BodyInput>,
    /// Position to match.
    pub position: Option<Position>,
    /// `valid_after` to match.
    pub valid_after: Option<bool>,
    /// The decision.
    pub decision: Decision,
    /// Why, in one sentence.
    pub why: &'static str,
}

impl Row {
    fn matches(&self, inputs: &Inputs) -> bool {
        fn m<T: PartialEq>(want: Option<T>, got: T) -> bool {
            want.is_none_or(|w| w == got)
        }
        m(self.continuity, inputs.continuity)
            && m(self.header, inputs.header)
            && m(self.body, inputs.body)
            && m(self.position, inputs.position)
            && m(self.valid_after, inputs.valid_after)
    }
}

use BodyInput as B;
use Continuity as C;
use Decision as D;
use HeaderInput as H;
use Position as P;

/// The recovery decision table (see the module docs for the same table in prose).
pub const TABLE: &[Row] = &[
    Row {
        continuity: Some(C::Gap),
        header: None,
        body: None,
        position: None,
        valid_after: None,
        decision: D::FailMissing,
        why: "a segment, or records between two segments, are missing; we never skip a hole",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Unsupported),
        body: None,
        position: None,
        valid_after: None,
        decision: D::FailUnsupported,
        why: "written by a newer format version; reading it could misinterpret its bytes",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Foreign),
        body: None,
        position: None,
        valid_after: None,
        decision: D::FailCorrupt,
        why: "the header belongs to another segment: a misplaced or copied file",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Valid),
        body: Some(B::Clean),
        position: None,
        valid_after: None,
        decision: D::Accept,
        why: "every byte is a valid record",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Valid),
        body: Some(B::WrongLsn),
        position: None,
        valid_after: None,
        decision: D::FailCorrupt,
        why: "a checksummed Lsn out of sequence cannot come from a torn write",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Valid),
        body: Some(B::Damaged),
        position: Some(P::Earlier),
        valid_after: None,
        decision: D::FailCorrupt,
        why: "a segment is fully synced before its successor is created, so damage in it is \
              not a torn write",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Valid),
        body: Some(B::Damaged),
        position: Some(P::Last),
        valid_after: Some(true),
        decision: D::FailCorrupt,
        why: "valid records follow the damage, so it is in the middle of the log, not at its \
              torn end",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Valid),
        body: Some(B::Damaged),
        position: Some(P::Last),
        valid_after: Some(false),
        decision: D::TruncateTail,
        why: "a write torn by a crash after the last sync; nothing after it was acknowledged",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Damaged),
        body: None,
        position: Some(P::Earlier),
        valid_after: None,
        decision: D::FailCorrupt,
        why: "the header of a segment with a successor was synced, so its damage is corruption",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Damaged),
        body: None,
        position: Some(P::Last),
        valid_after: Some(true),
        decision: D::FailCorrupt,
        why: "valid records follow an unreadable header: corruption, not a torn creation",
    },
    Row {
        continuity: Some(C::Continuous),
        header: Some(H::Damaged),
        body: None,
        position: Some(P::Last),
        valid_after: Some(false),
        decision: D::DiscardSegment,
        why: "the newest segment was being created when the crash hit; the first sync, which \
              makes its header durable, never completed, so it holds no acknowledged record",
    },
];

/// Looks up the decision for one combination of inputs.
///
/// # Panics
/// If no row matches, which the exhaustive test rules out.
pub fn decide(inputs: &Inputs) -> &'static Row {
    TABLE
        .iter()
        .find(|row| row.matches(inputs))
        .unwrap_or_else(|| panic!("recovery table has no row for {inputs:?}"))
}

/// What recovery found in one segment and decided about it.
#[derive(Clone, Debug)]
pub struct SegmentReport {
    /// The segment's id (from its name).
    pub id: SegmentId,
    /// Its file path or object key.
    pub name: String,
    /// Its length in bytes as found.
    pub len_bytes: u64,
    /// The scan result.
    pub scan: SegmentScan,
    /// The table's inputs for it.
    pub inputs: Inputs,
    /// The decision.
    pub decision: Decision,
    /// The decision's reason.
    pub why: &'static str,
}

impl SegmentReport {
    /// False only for the newest segment: every other segment is sealed.
    pub fn is_sealed(&self) -> bool {
        self.inputs.position == Position::Earlier
    }
}

/// The overall outcome of a recovery scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every segment is intact.
    Clean,
    /// The newest segment ends in a torn write, which opening the log cuts off.
    TornTail {
        /// The segment.
        segment: String,
        /// Offset of the first torn byte.
        offset: u64,
        /// Bytes that opening the log discards.
        bytes_discarded: u64,
        /// Whether every discarded byte is zero: preallocated space after the last record
        /// of a log that was not closed cleanly, or a write whose data never reached the
        /// disk.
        all_zero: bool,
    },
    /// The newest segment was being created when a crash hit and holds nothing valid;
    /// opening the log deletes it.
    TornSegment {
        /// The segment.
        segment: String,
        /// Its length.
        len_bytes: u64,
    },
    /// Damage that is not a torn tail. Opening the log fails.
    Corrupt {
        /// The segment.
        segment: String,
        /// Offset of the first bad byte.
        offset: u64,
        /// Lsn expected there, if known.
        lsn: Option<Lsn>,
        /// What is wrong.
        reason: String,
    },
    /// A segment is missing. Opening the log fails.
    MissingSegment {
        /// The segment after the gap.
        segment: String,
        /// The id expected.
        expected_id: SegmentId,
        /// What does not line up.
        detail: String,
    },
    /// A segment of an unsupported format version. Opening the log fails.
    UnsupportedVersion {
        /// The segment.
        segment: String,
        /// Its version.
        version: u32,
    },
}

impl Verdict {
    /// True if opening the log succeeds (possibly after cutting a torn tail).
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            Verdict::Clean | Verdict::TornTail { .. } | Verdict::TornSegment { .. }
        )
    }

    /// The error opening the log returns, for the verdicts that refuse to open.
    pub fn to_error(&self) -> Option<Error> {
        match self {
            Verdict::Clean | Verdict::TornTail { .. } | Verdict::TornSegment { .. } => None,
            Verdict::Corrupt {
                segment,
                offset,
                lsn,
                reason,
            } => Some(Error::Corrupt {
                segment: segment.clone(),
                offset: *offset,
                lsn: *lsn,
                reason: reason.clone(),
            }),
            Verdict::MissingSegment {
                segment,
                expected_id,
                detail,
            } => Some(Error::MissingSegment {
                segment: segment.clone(),
                expected_id: *expected_id,
                detail: detail.clone(),
            }),
            Verdict::UnsupportedVersion { segment, version } => Some(Error::UnsupportedVersion {
                segment: segment.clone(),
                version: *version,
                supported: format::FORMAT_VERSION,
            }),
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Clean => write!(f, "clean"),
            Verdict::TornTail {
                segment,
                offset,
                bytes_discarded,
                all_zero: false,
            } => write!(
                f,
                "torn tail in {segment} at byte {offset} ({bytes_discarded} bytes after the \
                 last valid record; opening the log cuts them off)"
            ),
            Verdict::TornTail {
                segment,
                offset,
                bytes_discarded,
                all_zero: true,
            } => write!(
                f,
                "unwritten tail in {segment} at byte {offset} ({bytes_discarded} zero bytes \
                 after the last valid record: preallocated space of a log that was not closed \
                 cleanly, or a write that never reached the disk; opening the log cuts them off)"
            ),
            Verdict::TornSegment { segment, len_bytes } => write!(
                f,
                "torn newest segment {segment} ({len_bytes} bytes, no valid header; opening the \
                 log deletes it)"
            ),
            Verdict::Corrupt { .. }
            | Verdict::MissingSegment { .. }
            | Verdict::UnsupportedVersion { .. } => match self.to_error() {
                Some(e) => write!(f, "{e}"),
                None => Ok(()),
            },
        }
    }
}

/// Progress of a scan, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes scanned so far.
    pub done_bytes: u64,
    /// Bytes in all segments.
    pub total_bytes: u64,
}

/// The result of [`analyze`]: one report per segment, the segments' bytes, and the verdict.
#[derive(Debug)]
pub struct Analysis {
    /// One report per segment, in id order.
    pub segments: Vec<SegmentReport>,
    /// The bytes of each segment, as scanned (a read-only mapping for local files); empty
    /// for stores that do not keep sealed bytes (`SegmentStore::keeps_sealed_bytes`).
    pub(crate) bytes: Vec<Bytes>,
    /// The overall verdict: the first failing segment's, else the torn tail, else clean.
    pub verdict: Verdict,
}

/// Scans every segment of a log and decides what recovery would do, without changing
/// anything. Fails only if the store cannot be listed or read.
pub fn analyze(
    store: &dyn SegmentStore,
    index_interval_bytes: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<Analysis> {
    let location = store.location();
    let ids = store
        .list()
        .map_err(|e| Error::io("list segments of", location.clone(), e))?;
    // Stores that keep sealed bytes (memory maps) are read up front, which gives the
    // progress total; the others (object stores) are read one segment at a time, so a
    // large log is never held in memory whole (their reads prefetch ahead themselves).
    let keep = store.keeps_sealed_bytes();
    let read = |id: SegmentId| {
        store
            .read(id)
            .map_err(|e| Error::io("read segment", store.segment_name(id), e))
    };
    let mut bytes = Vec::with_capacity(ids.len());
    if keep {
        for &id in &ids {
            bytes.push(read(id)?);
        }
    }
    let mut total_bytes: u64 = bytes.iter().map(|b| b.len() as u64).sum();
    let mut done_before = 0u64;
    progress(Progress {
        done_bytes: 0,
        total_bytes,
    });

    let mut segments: Vec<SegmentReport> = Vec::with_capacity(ids.len());
    let mut first_failure: Option<Verdict> = None;
    let mut repair: Option<Verdict> = None;
    for (i, &id) in ids.iter().enumerate() {
        let data = if keep {
            bytes[i].clone()
        } else {
            let data = read(id)?;
            total_bytes += data.len() as u64;
            data
        };
        let data = &data;
        let name = store.segment_name(id);
        let prev = segments.last();
        let prev_end = prev.and_then(|p| p.scan.end_lsn());
        let mut report_progress = |done: u64| {
            progress(Progress {
                done_bytes: done_before + done,
                total_bytes,
            });
        };
        let scan = format::scan_segment(
            data,
            id,
            prev_end,
            index_interval_bytes,
            &mut report_progress,
        );
        done_before += data.len() as u64;

        // A store that writes each segment with one atomic put has no torn tails: every
        // segment, the newest too, is as final as a sealed file.
        let position = if i + 1 == ids.len() && !store.seals_on_sync() {
            Position::Last
        } else {
            Position::Earlier
        };
        let (continuity, gap_detail) = continuity(prev, id, &scan);
        let header = match scan.header {
            HeaderStatus::Valid(_) => HeaderInput::Valid,
            HeaderStatus::Damaged(_) => HeaderInput::Damaged,
            HeaderStatus::Unsupported { .. } => HeaderInput::Unsupported,
            HeaderStatus::Foreign { .. } => HeaderInput::Foreign,
        };
        let body = match scan.damage {
            None => BodyInput::Clean,
            Some(Damage {
                kind: format::DamageKind::UnexpectedLsn { .. },
                ..
            }) => BodyInput::WrongLsn,
            Some(_) => BodyInput::Damaged,
        };
        let inputs = Inputs {
            continuity,
            header,
            body,
            position,
            valid_after: scan.valid_record_after_damage.is_some(),
        };
        let row = decide(&inputs);
        let expected_id = prev.map_or(id, |p| p.id.next());
        let this_verdict = segment_verdict(
            row.decision,
            &name,
            id,
            data,
            &scan,
            gap_detail,
            expected_id,
        );
        if row.decision.is_failure() {
            first_failure.get_or_insert(this_verdict);
        } else if this_verdict != Verdict::Clean {
            repair = Some(this_verdict);
        }
        segments.push(SegmentReport {
            id,
            name,
            len_bytes: data.len() as u64,
            scan,
            inputs,
            decision: row.decision,
            why: row.why,
        });
    }
    let verdict = first_failure.or(repair).unwrap_or(Verdict::Clean);
    Ok(Analysis {
        segments,
        bytes,
        verdict,
    })
}

fn continuity(
    prev: Option<&SegmentReport>,
    id: SegmentId,
    scan: &SegmentScan,
) -> (Continuity, String) {
    let Some(prev) = prev else {
        return (Continuity::Continuous, String::new());
    };
    if prev.id.get().checked_add(1) != Some(id.get()) {
        return (
            Continuity::Gap,
            format!(
                "segment {} follows segment {} (ids must be consecutive)",
                id, prev.id
            ),
        );
    }
    // A damaged predecessor has no trustworthy end; it fails on its own row.
    let prev_trusted = prev.decision == Decision::Accept;
    match (prev_trusted, prev.scan.end_lsn(), scan.base_lsn) {
        (true, Some(prev_end), Some(base)) if prev_end != base => (
            Continuity::Gap,
            format!(
                "segment {} starts at Lsn {base} but segment {} ends before Lsn {prev_end}",
                id, prev.id
            ),
        ),
        _ => (Continuity::Continuous, String::new()),
    }
}

fn segment_verdict(
    decision: Decision,
    name: &str,
    id: SegmentId,
    data: &[u8],
    scan: &SegmentScan,
    gap_detail: String,
    expected_id: SegmentId,
) -> Verdict {
    let len_bytes = data.len() as u64;
    match decision {
        Decision::Accept => Verdict::Clean,
        Decision::TruncateTail => Verdict::TornTail {
            segment: name.to_owned(),
            offset: scan.valid_len,
            bytes_discarded: len_bytes - scan.valid_len,
            all_zero: data
                .get(scan.valid_len as usize..)
                .is_some_and(|t| t.iter().all(|&b| b == 0)),
        },
        Decision::DiscardSegment => Verdict::TornSegment {
            segment: name.to_owned(),
            len_bytes,
        },
        Decision::FailMissing => Verdict::MissingSegment {
            segment: name.to_owned(),
            expected_id,
            detail: gap_detail,
        },
        Decision::FailUnsupported => Verdict::UnsupportedVersion {
            segment: name.to_owned(),
            version: match scan.header {
                HeaderStatus::Unsupported { version } => version,
                _ => 0,
            },
        },
        Decision::FailCorrupt => {
            let (offset, reason) = match (scan.header, scan.damage) {
                (HeaderStatus::Foreign { found }, _) => {
                    (0, format!("header belongs to segment {found}, not {id}"))
                }
                (_, Some(damage)) => {
                    let mut reason = damage.kind.to_string();
                    if let Some(after) = scan.valid_record_after_damage {
                        reason += &format!("; a valid record follows at byte {after}");
                    }
                    (damage.offset, reason)
                }
                (_, None) => (0, "damaged".to_owned()),
            };
            Verdict::Corrupt {
                segment: name.to_owned(),
                offset,
                lsn: scan.end_lsn(),
                reason,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_cases_cover_every_combination_exactly_once() {
        let mut combinations = 0;
        for continuity in [C::Continuous, C::Gap] {
            for header in [H::Valid, H::Damaged, H::Unsupported, H::Foreign] {
                for body in [B::Clean, B::Damaged, B::WrongLsn] {
                    for position in [P::Last, P::Earlier] {
                        for valid_after in [false, true] {
                            let inputs = Inputs {
                                continuity,
                                header,
                                body,
                                position,
                                valid_after,
                            };
                            let matching: Vec<_> =
                                TABLE.iter().filter(|row| row.matches(&inputs)).collect();
                            assert_eq!(matching.len(), 1, "{inputs:?} matches {matching:#?}");
                            combinations += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(combinations, 96);
    }

    #[test]
    fn only_the_newest_segment_is_ever_repaired() {
        // Truncation and discarding lose bytes; they are only sound where a crash can have
        // torn a write that was never acknowledged: the newest segment.
        for row in TABLE {
            if matches!(row.decision, D::TruncateTail | D::DiscardSegment) {
                assert_eq!(row.position, Some(P::Last), "{row:?}");
                assert_eq!(row.valid_after, Some(false), "{row:?}");
                assert_eq!(row.continuity, Some(C::Continuous), "{row:?}");
            }
        }
    }
}
