//! Record frames: decoding arbitrary bytes never panics, whatever decodes re-encodes to the
//! same bytes, and encode-then-decode is the identity.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wal::format::{DecodeError, decode_record, encode_record, frame_len};
use wal::{Lsn, SegmentId};

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// Bytes from disk, read as a frame of this segment.
    Bytes { segment_id: u64, data: &'a [u8] },
    /// A record to encode and decode back.
    Record { segment_id: u64, lsn: u64, payload: &'a [u8] },
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Bytes { segment_id, data } => {
            let segment = SegmentId::new(segment_id);
            match decode_record(data, segment) {
                Ok(record) => {
                    assert_eq!(record.frame_len as u64, frame_len(record.payload.len()));
                    assert!(record.frame_len <= data.len());
                    let mut again = Vec::new();
                    encode_record(&mut again, segment, record.lsn, record.payload);
                    assert_eq!(&again[..], &data[..record.frame_len], "decode then encode");
                }
                Err(DecodeError::Truncated { available }) => assert!(available < 16),
                Err(DecodeError::LengthPastEnd { len, available }) => {
                    assert!(len as usize > available);
                }
                Err(DecodeError::ChecksumMismatch { stored, computed }) => {
                    assert_ne!(stored, computed);
                }
            }
        }
        Input::Record { segment_id, lsn, payload } => {
            let segment = SegmentId::new(segment_id);
            let mut bytes = Vec::new();
            encode_record(&mut bytes, segment, Lsn::new(lsn), payload);
            let record = decode_record(&bytes, segment).expect("an encoded record decodes");
            assert_eq!(record.lsn, Lsn::new(lsn));
            assert_eq!(record.payload, payload);
            assert_eq!(record.frame_len, bytes.len());
            // In any other segment the checksum fails: records are bound to their segment.
            if let Some(other) = segment_id.checked_add(1) {
                assert!(decode_record(&bytes, SegmentId::new(other)).is_err());
            }
        }
    }
});
