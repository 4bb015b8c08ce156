//! The on-disk format: segment header, record framing and the segment scan. Pure functions
//! over byte slices, no IO, so they can be fuzzed and reused by the CLI.
//!
//! The byte layout is specified in the crate docs ("On-disk format") and pinned by the
//! golden-bytes tests at the bottom of this file. **Changing any of these functions changes
//! the format:** bump [`FORMAT_VERSION`] and keep a reader for the old version.

use crate::lsn::{Lsn, SegmentId};

/// First eight bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"EMBERWAL";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header in bytes.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Length of a record's frame header (`len | crc | lsn`) in bytes.
pub const RECORD_HEADER_LEN: usize = 16;

// The header layout below hard-codes these offsets; keep them in step.
const _: () = assert!(SEGMENT_HEADER_LEN == 8 + 4 + 4 + 8 + 8);
const _: () = assert!(RECORD_HEADER_LEN == 4 + 4 + 8);

/// The fixed header at the start of every segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's number; must match the number in its file or object name.
    pub segment_id: SegmentId,
    /// Lsn of the segment's first record (or of the next record, while it has none).
    pub base_lsn: Lsn,
}

/// Why a segment header could not be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes: the segment was cut while being created.
    Short {
        /// Bytes present.
        len: usize,
    },
    /// The first eight bytes are not [`SEGMENT_MAGIC`].
    BadMagic,
    /// The header checksum does not match.
    ChecksumMismatch {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum computed over the header bytes.
        computed: u32,
    },
    /// Magic and checksum are right, but the format version is not one this build reads.
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short { len } => {
                write!(
                    f,
                    "segment header cut short ({len} of {SEGMENT_HEADER_LEN} bytes)"
                )
            }
            HeaderError::BadMagic => write!(f, "not a WAL segment (bad magic bytes)"),
            HeaderError::ChecksumMismatch { stored, computed } => write!(
                f,
                "segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            HeaderError::UnsupportedVersion { version } => write!(
                f,
                "unsupported segment format version {version} (this build reads {FORMAT_VERSION})"
            ),
        }
    }
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_id.get().to_le_bytes());
        out[24..32].copy_from_slice(&self.base_lsn.get().to_le_bytes());
        let crc = header_crc(&out);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and checks a header from the start of `bytes` (which may be a whole segment).
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let Some(header) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return Err(HeaderError::Short { len: bytes.len() });
        };
        if header[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let stored = read_u32(header, 12);
        let computed = header_crc(header);
        if stored != computed {
            return Err(HeaderError::ChecksumMismatch { stored, computed });
        }
        let version = read_u32(header, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion { version });
        }
        Ok(SegmentHeader {
            segment_id: SegmentId::new(read_u64(header, 16)),
            base_lsn: Lsn::new(read_u64(header, 24)),
        })
    }
}

/// CRC-32 of the header with its checksum field (bytes 12..16) left out.
fn header_crc(header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..12]);
    hasher.update(&header[16..SEGMENT_HEADER_LEN]);
    hasher.finalize()
}

/// Bytes a record with a payload of `payload_len` bytes takes in a segment.
pub fn frame_len(payload_len: usize) -> u64 {
    RECORD_HEADER_LEN as u64 + payload_len as u64
}

/// The record checksum: CRC-32 (IEEE) over `segment_id | lsn | len | payload`.
///
/// Covering the segment id and the Lsn means a record that is intact but sits in the wrong
/// segment or at the wrong position (a misdirected write, a stale file) fails verification.
pub fn record_crc(segment_id: SegmentId, lsn: Lsn, payload: &[u8]) -> u32 {
    let mut prefix = [0u8; 20];
    prefix[0..8].copy_from_slice(&segment_id.get().to_le_bytes());
    prefix[8..16].copy_from_slice(&lsn.get().to_le_bytes());
    // The caller guarantees payload.len() fits in u32 (enforced by encode_record's assert
    // and by decode_record reading the length from a u32 field).
    prefix[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&prefix);
    hasher.update(payload);
    hasher.finalize()
}

/// The record checksum from a running CRC of the payload alone (computed elsewhere, for
/// example by the appending thread): CRC-32 is linear, so the CRC of
/// `segment_id | lsn | len` is combined with the payload's. Equal to [`record_crc`].
pub fn record_crc_with(
    segment_id: SegmentId,
    lsn: Lsn,
    payload_len: usize,
    payload_crc: &crc32fast::Hasher,
) -> u32 {
    let mut prefix = [0u8; 20];
    prefix[0..8].copy_from_slice(&segment_id.get().to_le_bytes());
    prefix[8..16].copy_from_slice(&lsn.get().to_le_bytes());
    prefix[16..20].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&prefix);
    hasher.combine(payload_crc);
    hasher.finalize()
}

/// The 16-byte frame header of a record with `payload_len` bytes and checksum `crc`.
///
/// # Panics
/// If the payload is 4 GiB or longer.
pub fn record_header(lsn: Lsn, payload_len: usize, crc: u32) -> [u8; RECORD_HEADER_LEN] {
    let len = u32::try_from(payload_len).expect("record payload must be < 4 GiB");
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header[8..16].copy_from_slice(&lsn.get().to_le_bytes());
    header
}

/// Appends the frame of one record to `out`.
///
/// # Panics
/// If the payload is 4 GiB or longer; `Config::validate` keeps records far below that.
pub fn encode_record(out: &mut Vec<u8>, segment_id: SegmentId, lsn: Lsn, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("record payload must be < 4 GiB");
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(segment_id, lsn, payload).to_le_bytes());
    out.extend_from_slice(&lsn.get().to_le_bytes());
    out.extend_from_slice(payload);
}

/// One record decoded from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    /// The Lsn stored in the frame (checked by the CRC).
    pub lsn: Lsn,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// Bytes the whole frame takes (`RECORD_HEADER_LEN + payload.len()`).
    pub frame_len: usize,
}

/// Why the bytes at some position are not a valid record frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer than [`RECORD_HEADER_LEN`] bytes remain.
    Truncated {
        /// Bytes that remain.
        available: usize,
    },
    /// The length field points past the end of the segment.
    LengthPastEnd {
        /// The payload length stored in the frame.
        len: u32,
        /// Payload bytes that remain after the frame header.
        available: usize,
    },
    /// The checksum does not match the frame's contents.
    ChecksumMismatch {
        /// Checksum stored in the frame.
        stored: u32,
        /// Checksum computed over segment id, Lsn, length and payload.
        computed: u32,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { available } => write!(
                f,
                "record header cut short ({available} of {RECORD_HEADER_LEN} bytes)"
            ),
            DecodeError::LengthPastEnd { len, available } => write!(
                f,
                "impossible record length {len} (only {available} bytes follow)"
            ),
            DecodeError::ChecksumMismatch { stored, computed } => write!(
                f,
                "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// Decodes and verifies the record frame at the start of `bytes`.
///
/// Never panics, whatever the bytes.
pub fn decode_record(
    bytes: &[u8],
    segment_id: SegmentId,
) -> Result<DecodedRecord<'_>, DecodeError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated {
            available: bytes.len(),
        });
    }
    let len = read_u32(bytes, 0);
    let stored = read_u32(bytes, 4);
    let lsn = Lsn::new(read_u64(bytes, 8));
    let available = bytes.len() - RECORD_HEADER_LEN;
    let Some(payload) = bytes[RECORD_HEADER_LEN..].get(..len as usize) else {
        return Err(DecodeError::LengthPastEnd { len, available });
    };
    let computed = record_crc(segment_id, lsn, payload);
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }
    Ok(DecodedRecord {
        lsn,
        payload,
        frame_len: RECORD_HEADER_LEN + payload.len(),
    })
}

/// How the segment header looked to [`scan_segment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderStatus {
    /// A valid header whose segment id matches the name the segment was found under.
    Valid(SegmentHeader),
    /// Short, wrong magic or wrong checksum: not a header we can trust.
    Damaged(HeaderError),
    /// A valid header of a format version this build does not read.
    Unsupported {
        /// The version found.
        version: u32,
    },
    /// A valid header naming another segment id than the segment's name: a misplaced file.
    Foreign {
        /// The id in the header.
        found: SegmentId,
    },
}

/// Where and why a segment's records stop being valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset within the segment of the first byte that is not part of a valid record.
    pub offset: u64,
    /// What is wrong there.
    pub kind: DamageKind,
}

/// What is wrong at a [`Damage`] offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// The segment header is not valid (see [`HeaderStatus`]).
    Header(HeaderError),
    /// The bytes there are not a valid frame.
    Frame(DecodeError),
    /// A frame with a valid checksum but not the expected Lsn. A torn write cannot produce
    /// this (the checksum covers the Lsn), so it is always corruption or a foreign file.
    UnexpectedLsn {
        /// Lsn found in the frame.
        found: Lsn,
        /// Lsn the position requires.
        expected: Lsn,
    },
}

impl std::fmt::Display for DamageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DamageKind::Header(e) => write!(f, "{e}"),
            DamageKind::Frame(e) => write!(f, "{e}"),
            DamageKind::UnexpectedLsn { found, expected } => {
                write!(f, "record has Lsn {found} where Lsn {expected} belongs")
            }
        }
    }
}

/// The result of scanning one segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// The header, as found.
    pub header: HeaderStatus,
    /// Number of valid records before the damage (or the end).
    pub records: u64,
    /// Lsn of the first valid record (the header's base Lsn), if the header is valid.
    pub base_lsn: Option<Lsn>,
    /// Byte offset right after the last valid record (the header length if there is none;
    /// zero if the header is not valid).
    pub valid_len: u64,
    /// The first damage, if the segment does not end exactly after a valid record.
    pub damage: Option<Damage>,
    /// Offset of a valid record found anywhere after the damage. Recovery treats damage
    /// followed by valid records as corruption, never as a torn tail.
    pub valid_record_after_damage: Option<u64>,
    /// Sparse offset index: `(lsn, offset)` of the first record and then of the first
    /// record at least `index_interval_bytes` past the previous entry.
    pub sparse_index: Vec<(Lsn, u64)>,
}

impl SegmentScan {
    /// Lsn right after the last valid record, if the header is valid.
    pub fn end_lsn(&self) -> Option<Lsn> {
        self.base_lsn
            .and_then(|base| base.checked_add(self.records))
    }
}

/// Scans a whole segment: header, then every record frame in order, stopping at the first
/// damage and then looking for any valid record after it.
///
/// `segment_id` is the id from the segment's name. `lsn_after_damage_min` bounds the search
/// after damage when the header is not readable (the predecessor's end Lsn, if known).
/// `progress` is called with the number of bytes scanned so far, about every 16 MiB.
/// Never panics, whatever the bytes.
pub fn scan_segment(
    bytes: &[u8],
    segment_id: SegmentId,
    lsn_after_damage_min: Option<Lsn>,
    index_interval_bytes: u64,
    progress: &mut dyn FnMut(u64),
) -> SegmentScan {
    let header = match SegmentHeader::decode(bytes) {
        Ok(h) if h.segment_id != segment_id => HeaderStatus::Foreign {
            found: h.segment_id,
        },
        Ok(h) => HeaderStatus::Valid(h),
        Err(HeaderError::UnsupportedVersion { version }) => HeaderStatus::Unsupported { version },
        Err(e) => HeaderStatus::Damaged(e),
    };
    let base = match header {
        HeaderStatus::Valid(h) => h.base_lsn,
        HeaderStatus::Damaged(e) => {
            return SegmentScan {
                header,
                records: 0,
                base_lsn: None,
                valid_len: 0,
                damage: Some(Damage {
                    offset: 0,
                    kind: DamageKind::Header(e),
                }),
                valid_record_after_damage: find_valid_record(
                    bytes,
                    0,
                    segment_id,
                    lsn_after_damage_min,
                ),
                sparse_index: Vec::new(),
            };
        }
        // Records of a foreign or newer-format segment are not ours to interpret.
        HeaderStatus::Unsupported { .. } | HeaderStatus::Foreign { .. } => {
            return SegmentScan {
                header,
                records: 0,
                base_lsn: None,
                valid_len: 0,
                damage: None,
                valid_record_after_damage: None,
                sparse_index: Vec::new(),
            };
        }
    };

    let mut offset = SEGMENT_HEADER_LEN;
    let mut expected = base;
    let mut records = 0u64;
    let mut sparse_index = Vec::new();
    let mut next_index_at = offset as u64;
    let mut next_progress_at = PROGRESS_STEP_BYTES;
    let mut damage = None;
    while offset < bytes.len() {
        let kind = match decode_record(&bytes[offset..], segment_id) {
            Ok(record) if record.lsn == expected => {
                if offset as u64 >= next_index_at {
                    sparse_index.push((record.lsn, offset as u64));
                    next_index_at = offset as u64 + index_interval_bytes.max(1);
                }
                offset += record.frame_len;
                records += 1;
                // A segment holds fewer than 2^64 records, so this cannot overflow unless
                // the header's base Lsn is absurd; then stop as if damaged.
                match expected.checked_add(1) {
                    Some(next) => expected = next,
                    None => {
                        damage = Some(Damage {
                            offset: offset as u64,
                            kind: DamageKind::UnexpectedLsn {
                                found: expected,
                                expected,
                            },
                        });
                        break;
                    }
                }
                if offset as u64 >= next_progress_at {
                    progress(offset as u64);
                    next_progress_at = offset as u64 + PROGRESS_STEP_BYTES;
                }
                continue;
            }
            Ok(record) => DamageKind::UnexpectedLsn {
                found: record.lsn,
                expected,
            },
            Err(e) => DamageKind::Frame(e),
        };
        damage = Some(Damage {
            offset: offset as u64,
            kind,
        });
        break;
    }
    progress(bytes.len() as u64);
    let valid_record_after_damage = damage.and_then(|d| {
        // The damaged frame itself is not a candidate: search from the byte after it.
        find_valid_record(bytes, d.offset as usize + 1, segment_id, Some(expected))
    });
    SegmentScan {
        header,
        records,
        base_lsn: Some(base),
        valid_len: offset as u64,
        damage,
        valid_record_after_damage,
        sparse_index,
    }
}

const PROGRESS_STEP_BYTES: u64 = 16 << 20;

/// Finds the first offset `>= from` where a frame with a valid checksum starts whose Lsn is
/// at least `lsn_min` (any Lsn when `None`). Used only after damage, to tell a torn tail
/// (nothing valid follows) from corruption in the middle of the log (valid records follow).
///
/// Cost: one 8-byte compare per byte offset, plus a checksum for the rare candidates whose
/// Lsn field is plausible: never 0, and when `lsn_min` is known, at most one record per
/// [`RECORD_HEADER_LEN`] bytes beyond it.
pub fn find_valid_record(
    bytes: &[u8],
    from: usize,
    segment_id: SegmentId,
    lsn_min: Option<Lsn>,
) -> Option<u64> {
    let last_start = bytes.len().checked_sub(RECORD_HEADER_LEN)?;
    let mut offset = from;
    while offset <= last_start {
        let lsn = read_u64(bytes, offset + 8);
        let plausible = lsn != 0
            && match lsn_min {
                None => true,
                Some(min) => {
                    lsn >= min.get()
                        && lsn - min.get() <= ((offset - from) / RECORD_HEADER_LEN) as u64 + 1
                }
            };
        if plausible && decode_record(&bytes[offset..], segment_id).is_ok() {
            return Some(offset as u64);
        }
        offset += 1;
    }
    None
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_progress() -> impl FnMut(u64) {
        |_| {}
    }

    #[test]
    fn crc_is_ieee() {
        // The standard CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320) check value. If this
        // fails, every WAL ever written is unreadable: the checksum algorithm changed.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn segment_header_bytes_are_stable() {
        let header = SegmentHeader {
            segment_id: SegmentId::new(7),
            base_lsn: Lsn::new(0x0102),
        };
        let expected: [u8; SEGMENT_HEADER_LEN] = [
            b'E', b'M', b'B', b'E', b'R', b'W', b'A', b'L', // magic
            1, 0, 0, 0, // format_version = 1
            0x8F, 0xDF, 0xC7, 0x21, // header_crc (computed independently with zlib.crc32)
            7, 0, 0, 0, 0, 0, 0, 0, // segment_id = 7
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // base_lsn = 0x0102
        ];
        assert_eq!(header.encode(), expected, "segment header layout changed");
        assert_eq!(SegmentHeader::decode(&expected), Ok(header));
    }

    #[test]
    fn record_bytes_are_stable() {
        let mut out = Vec::new();
        encode_record(&mut out, SegmentId::new(3), Lsn::new(42), b"hello");
        let expected: Vec<u8> = vec![
            5, 0, 0, 0, // len = 5
            0xAB, 0x41, 0x08, 0x7A, // crc32(segment_id | lsn | len | payload), via zlib.crc32
            42, 0, 0, 0, 0, 0, 0, 0, // lsn = 42
            b'h', b'e', b'l', b'l', b'o', // payload
        ];
        assert_eq!(out, expected, "record frame layout changed");
        // The pinned checksum is the IEEE CRC of exactly these 25 bytes.
        let mut covered = Vec::new();
        covered.extend_from_slice(&3u64.to_le_bytes());
        covered.extend_from_slice(&42u64.to_le_bytes());
        covered.extend_from_slice(&5u32.to_le_bytes());
        covered.extend_from_slice(b"hello");
        assert_eq!(crc32fast::hash(&covered).to_le_bytes(), expected[4..8]);
    }

    #[test]
    fn combined_crc_equals_direct_crc() {
        for len in [0usize, 1, 15, 16, 100, 4096, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&payload);
            assert_eq!(
                record_crc_with(SegmentId::new(5), Lsn::new(77), len, &hasher),
                record_crc(SegmentId::new(5), Lsn::new(77), &payload),
                "len {len}"
            );
            let mut framed = Vec::new();
            encode_record(&mut framed, SegmentId::new(5), Lsn::new(77), &payload);
            let crc = record_crc(SegmentId::new(5), Lsn::new(77), &payload);
            assert_eq!(
                record_header(Lsn::new(77), len, crc)[..],
                framed[..RECORD_HEADER_LEN]
            );
        }
    }

    #[test]
    fn record_roundtrips() {
        let mut out = Vec::new();
        encode_record(&mut out, SegmentId::new(9), Lsn::new(5), b"");
        encode_record(&mut out, SegmentId::new(9), Lsn::new(6), &[0xAB; 300]);
        let first = decode_record(&out, SegmentId::new(9)).unwrap();
        assert_eq!(
            (first.lsn, first.payload, first.frame_len),
            (Lsn::new(5), &b""[..], 16)
        );
        let second = decode_record(&out[16..], SegmentId::new(9)).unwrap();
        assert_eq!((second.lsn, second.payload.len()), (Lsn::new(6), 300));
    }

    #[test]
    fn record_in_the_wrong_segment_fails_its_checksum() {
        let mut out = Vec::new();
        encode_record(&mut out, SegmentId::new(1), Lsn::new(1), b"payload");
        let err = decode_record(&out, SegmentId::new(2)).unwrap_err();
        assert!(
            matches!(err, DecodeError::ChecksumMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn decode_reports_truncation_and_impossible_length() {
        let mut out = Vec::new();
        encode_record(&mut out, SegmentId::new(1), Lsn::new(1), b"payload");
        assert_eq!(
            decode_record(&out[..10], SegmentId::new(1)),
            Err(DecodeError::Truncated { available: 10 })
        );
        assert_eq!(
            decode_record(&out[..20], SegmentId::new(1)),
            Err(DecodeError::LengthPastEnd {
                len: 7,
                available: 4
            })
        );
    }

    fn segment(id: u64, base: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let id = SegmentId::new(id);
        let mut out = SegmentHeader {
            segment_id: id,
            base_lsn: Lsn::new(base),
        }
        .encode()
        .to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut out, id, Lsn::new(base + i as u64), p);
        }
        out
    }

    #[test]
    fn scan_of_a_clean_segment() {
        let bytes = segment(2, 10, &[b"a", b"bb", b"ccc"]);
        let scan = scan_segment(&bytes, SegmentId::new(2), None, 1, &mut no_progress());
        assert_eq!(scan.records, 3);
        assert_eq!(scan.end_lsn(), Some(Lsn::new(13)));
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.sparse_index.len(), 3);
        assert_eq!(
            scan.sparse_index[0],
            (Lsn::new(10), SEGMENT_HEADER_LEN as u64)
        );
    }

    #[test]
    fn scan_of_a_torn_tail_finds_nothing_valid_after() {
        let mut bytes = segment(1, 1, &[b"first", b"second"]);
        let full = bytes.len();
        bytes.truncate(full - 3);
        let scan = scan_segment(&bytes, SegmentId::new(1), None, 4096, &mut no_progress());
        assert_eq!(scan.records, 1);
        let damage = scan.damage.unwrap();
        assert_eq!(damage.offset, (SEGMENT_HEADER_LEN + 16 + 5) as u64);
        assert!(matches!(
            damage.kind,
            DamageKind::Frame(DecodeError::LengthPastEnd { .. })
        ));
        assert_eq!(scan.valid_record_after_damage, None);
    }

    #[test]
    fn scan_of_a_flipped_bit_before_valid_records_finds_them() {
        let mut bytes = segment(1, 1, &[b"first", b"second", b"third"]);
        bytes[SEGMENT_HEADER_LEN + 16 + 2] ^= 0x10; // inside the first payload
        let scan = scan_segment(&bytes, SegmentId::new(1), None, 4096, &mut no_progress());
        assert_eq!(scan.records, 0);
        assert_eq!(scan.damage.unwrap().offset, SEGMENT_HEADER_LEN as u64);
        assert_eq!(
            scan.valid_record_after_damage,
            Some((SEGMENT_HEADER_LEN + 16 + 5) as u64)
        );
    }

    #[test]
    fn scan_reports_header_problems() {
        let bytes = segment(4, 1, &[b"x"]);
        let foreign = scan_segment(&bytes, SegmentId::new(5), None, 4096, &mut no_progress());
        assert_eq!(
            foreign.header,
            HeaderStatus::Foreign {
                found: SegmentId::new(4)
            }
        );
        let short = scan_segment(
            &bytes[..20],
            SegmentId::new(4),
            None,
            4096,
            &mut no_progress(),
        );
        assert_eq!(
            short.header,
            HeaderStatus::Damaged(HeaderError::Short { len: 20 })
        );
        let mut newer = bytes.clone();
        newer[8] = 2;
        let crc = header_crc(&newer[..SEGMENT_HEADER_LEN]);
        newer[12..16].copy_from_slice(&crc.to_le_bytes());
        let unsupported = scan_segment(&newer, SegmentId::new(4), None, 4096, &mut no_progress());
        assert_eq!(unsupported.header, HeaderStatus::Unsupported { version: 2 });
    }

    #[test]
    fn zero_filled_tail_is_damage_with_nothing_valid_after() {
        let mut bytes = segment(1, 1, &[b"kept"]);
        bytes.extend_from_slice(&[0u8; 4096]);
        let scan = scan_segment(&bytes, SegmentId::new(1), None, 4096, &mut no_progress());
        assert_eq!(scan.records, 1);
        assert!(scan.damage.is_some());
        assert_eq!(scan.valid_record_after_damage, None);
    }
}
