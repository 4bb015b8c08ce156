//! Segment scanning: never panics on arbitrary bytes, its report is self-consistent, and a
//! segment built from arbitrary records then damaged is reported, not misread.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wal::format::{
    HeaderStatus, SEGMENT_HEADER_LEN, SegmentHeader, SegmentScan, encode_record, scan_segment,
};
use wal::{Lsn, SegmentId};

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// Arbitrary bytes as segment `segment_id`.
    Raw { segment_id: u64, predecessor_end: Option<u64>, interval: u16, data: &'a [u8] },
    /// A valid segment of these records, then one damage.
    Built { base_lsn: u32, records: Vec<&'a [u8]>, damage: Damage, interval: u16 },
}

#[derive(Debug, Arbitrary)]
enum Damage {
    None,
    Truncate { keep: u32 },
    Flip { at: u32, mask: u8 },
    Append { bytes: Vec<u8> },
}

fn check_consistent(scan: &SegmentScan, len: usize) {
    assert!(scan.valid_len <= len as u64);
    match scan.damage {
        None => {
            if matches!(scan.header, HeaderStatus::Valid(_)) {
                assert_eq!(scan.valid_len, len as u64, "no damage means every byte was valid");
            }
            assert!(scan.valid_record_after_damage.is_none());
        }
        Some(damage) => {
            assert_eq!(damage.offset, scan.valid_len);
            if let Some(after) = scan.valid_record_after_damage {
                assert!(after > damage.offset || (damage.offset == 0 && after == 0));
                assert!(after < len as u64);
            }
        }
    }
    let mut previous = None;
    for &(lsn, offset) in &scan.sparse_index {
        assert!(offset < scan.valid_len && offset >= SEGMENT_HEADER_LEN as u64);
        if let Some((l, o)) = previous {
            assert!(lsn > l && offset > o);
        }
        previous = Some((lsn, offset));
    }
    if scan.records > 0 {
        assert_eq!(scan.sparse_index.first().map(|e| e.0), scan.base_lsn, "first record indexed");
    }
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Raw { segment_id, predecessor_end, interval, data } => {
            let scan = scan_segment(
                data,
                SegmentId::new(segment_id),
                predecessor_end.map(Lsn::new),
                u64::from(interval).max(1),
                &mut |_| {},
            );
            check_consistent(&scan, data.len());
        }
        Input::Built { base_lsn, records, damage, interval } => {
            let id = SegmentId::new(7);
            let base = Lsn::new(u64::from(base_lsn).max(1));
            let mut bytes = SegmentHeader { segment_id: id, base_lsn: base }.encode().to_vec();
            for (i, payload) in records.iter().enumerate() {
                encode_record(&mut bytes, id, Lsn::new(base.get() + i as u64), payload);
            }
            let intact_len = bytes.len();
            let damaged = match damage {
                Damage::None => false,
                Damage::Truncate { keep } => {
                    let keep = keep as usize % (intact_len + 1);
                    bytes.truncate(keep);
                    keep < intact_len
                }
                Damage::Flip { at, mask } => {
                    let at = at as usize % intact_len;
                    bytes[at] ^= mask;
                    mask != 0
                }
                Damage::Append { bytes: extra } => {
                    bytes.extend_from_slice(&extra);
                    !extra.is_empty()
                }
            };
            let scan = scan_segment(&bytes, id, None, u64::from(interval).max(1), &mut |_| {});
            check_consistent(&scan, bytes.len());
            if !damaged {
                assert_eq!(scan.header, HeaderStatus::Valid(SegmentHeader { segment_id: id, base_lsn: base }));
                assert_eq!(scan.records, records.len() as u64);
                assert!(scan.damage.is_none());
            } else {
                // Damage never makes the scan report more valid records than were written,
                // nor a record past the damage as part of the valid prefix.
                assert!(scan.records <= records.len() as u64);
            }
        }
    }
});
