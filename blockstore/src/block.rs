//! Block identity and content: [`BlockId`], [`Block`] and the block checksum.
//!
//! A block's checksum is the CRC-32 (IEEE, as computed by `crc32fast`) of its data bytes.
//! It is computed once, when the block is created from the receiver's bytes, and travels
//! with the block everywhere: in memory, in spill files and in frames. Every place that
//! takes a block in or hands it out checks it again (see the crate docs, "Guarantees").

use std::fmt;

use bytes::Bytes;

use crate::error::{Error, Result};

/// Identifies a block, across the whole cluster and across driver restarts.
///
/// The block store never interprets the three parts; it only compares ids for equality and
/// order, encodes them on the wire and in spill-file names. **The caller must guarantee
/// uniqueness**: two different blocks must never be stored under the same id, not even by
/// two incarnations of the driver (a restarted driver would otherwise overwrite, or be
/// refused by, the replicas of its predecessor). The intended scheme is:
///
/// - `stream`: the input stream the block belongs to;
/// - `incarnation`: a number that grows every time the driver (or the receiver) starts,
///   recorded durably before the first block of that incarnation is stored (the metadata
///   log is the natural place);
/// - `sequence`: a counter within the incarnation.
///
/// Storing a different block under an existing id is refused with
/// [`Error::BlockConflict`], so a violation is detected wherever the old block still
/// exists; re-storing the *same* block (same data and checksum) is an idempotent success,
/// which makes retries safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    stream: u32,
    incarnation: u64,
    sequence: u64,
}

impl BlockId {
    /// Size of a `BlockId` on the wire and in spill files: `stream u32 | incarnation u64 |
    /// sequence u64`, little-endian.
    pub const ENCODED_LEN: usize = 20;

    /// Makes an id from its three parts. See the type docs for the uniqueness contract.
    pub const fn new(stream: u32, incarnation: u64, sequence: u64) -> Self {
        BlockId {
            stream,
            incarnation,
            sequence,
        }
    }

    /// The input stream this block belongs to.
    pub const fn stream(&self) -> u32 {
        self.stream
    }

    /// The driver (or receiver) incarnation that produced the block.
    pub const fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The block's number within its stream and incarnation.
    pub const fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The 20-byte little-endian encoding used on the wire and in spill files.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..4].copy_from_slice(&self.stream.to_le_bytes());
        out[4..12].copy_from_slice(&self.incarnation.to_le_bytes());
        out[12..20].copy_from_slice(&self.sequence.to_le_bytes());
        out
    }

    /// Decodes [`BlockId::to_bytes`]. Every 20-byte string is a valid id.
    pub fn from_bytes(bytes: &[u8; Self::ENCODED_LEN]) -> Self {
        let mut stream = [0u8; 4];
        let mut incarnation = [0u8; 8];
        let mut sequence = [0u8; 8];
        stream.copy_from_slice(&bytes[0..4]);
        incarnation.copy_from_slice(&bytes[4..12]);
        sequence.copy_from_slice(&bytes[12..20]);
        BlockId {
            stream: u32::from_le_bytes(stream),
            incarnation: u64::from_le_bytes(incarnation),
            sequence: u64::from_le_bytes(sequence),
        }
    }

    /// The spill-file name stem: fixed-width hex, so that names sort like ids.
    pub(crate) fn file_stem(&self) -> String {
        format!(
            "{:08x}-{:016x}-{:016x}",
            self.stream, self.incarnation, self.sequence
        )
    }

    /// Parses [`BlockId::file_stem`]; `None` for anything else.
    pub(crate) fn parse_file_stem(stem: &str) -> Option<Self> {
        let mut parts = stem.split('-');
        let stream = parts.next().filter(|p| p.len() == 8)?;
        let incarnation = parts.next().filter(|p| p.len() == 16)?;
        let sequence = parts.next().filter(|p| p.len() == 16)?;
        if parts.next().is_some() {
            return None;
        }
        Some(BlockId {
            stream: u32::from_str_radix(stream, 16).ok()?,
            incarnation: u64::from_str_radix(incarnation, 16).ok()?,
            sequence: u64::from_str_radix(sequence, 16).ok()?,
        })
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.stream, self.incarnation, self.sequence)
    }
}

/// The CRC-32 (IEEE) of `data`, the checksum every [`Block`] carries.
pub fn block_crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// A received block: opaque bytes, the number of records they hold, and their checksum.
///
/// Cloning is cheap (the data is a reference-counted [`Bytes`]). The fields are private so
/// that a `Block` always carries the checksum its data had when it was created; whether the
/// data still matches is what [`Block::verify`] checks.
///
/// Memory accounting charges `data.len()` bytes (plus a fixed overhead) per block. A
/// `Bytes` that is a small slice of a much larger buffer keeps the whole buffer alive, so
/// callers should hand in compact buffers (one allocation per block), as receivers
/// naturally do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    id: BlockId,
    record_count: u64,
    crc32: u32,
    data: Bytes,
}

impl Block {
    /// Creates a block and computes its checksum. This is the first of the checks: from
    /// here on the checksum is what the data must match.
    pub fn new(id: BlockId, data: Bytes, record_count: u64) -> Self {
        let crc32 = block_crc32(&data);
        Block {
            id,
            record_count,
            crc32,
            data,
        }
    }

    /// Reassembles a block whose checksum was stored separately (a frame, a spill file),
    /// verifying the data against it. `location` names where the bytes came from, for the
    /// error.
    pub fn from_parts(
        id: BlockId,
        data: Bytes,
        record_count: u64,
        crc32: u32,
        location: &str,
    ) -> Result<Self> {
        let block = Block {
            id,
            record_count,
            crc32,
            data,
        };
        block.verify_at(location)?;
        Ok(block)
    }

    /// Reassembles a block whose data was already checked against `crc32` by the caller
    /// (the frame decoder computes the data CRC once for both the frame and the block).
    pub(crate) fn from_checked_parts(
        id: BlockId,
        data: Bytes,
        record_count: u64,
        crc32: u32,
    ) -> Self {
        Block {
            id,
            record_count,
            crc32,
            data,
        }
    }

    /// The block's id.
    pub fn id(&self) -> BlockId {
        self.id
    }

    /// How many records the data holds (as the receiver counted them; never interpreted).
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// The CRC-32 (IEEE) the data had when the block was created.
    pub fn crc32(&self) -> u32 {
        self.crc32
    }

    /// The block's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Length of the data in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the data is empty (an empty block is valid).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Recomputes the data's CRC and compares it with the stored one.
    pub fn verify(&self) -> Result<()> {
        self.verify_at("caller-supplied block")
    }

    /// [`Block::verify`] with the location to name in the error.
    pub(crate) fn verify_at(&self, location: &str) -> Result<()> {
        let computed = block_crc32(&self.data);
        if computed == self.crc32 {
            Ok(())
        } else {
            Err(Error::BlockCorrupt {
                block: self.id,
                location: location.to_owned(),
                stored: self.crc32,
                computed,
            })
        }
    }

    /// Whether a stored block with this data length and checksum is this block: the test
    /// for an idempotent re-store (same id is the caller's premise).
    pub(crate) fn same_content(&self, len: u64, crc32: u32) -> bool {
        self.data.len() as u64 == len && self.crc32 == crc32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_ieee() {
        // The standard check value of CRC-32/ISO-HDLC, the CRC that crc32fast computes.
        assert_eq!(block_crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn id_bytes_round_trip_and_are_little_endian() {
        let id = BlockId::new(0x0102_0304, 0x1112_1314_1516_1718, 0x2122_2324_2526_2728);
        let bytes = id.to_bytes();
        assert_eq!(
            bytes,
            [
                0x04, 0x03, 0x02, 0x01, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11, 0x28, 0x27,
                0x26, 0x25, 0x24, 0x23, 0x22, 0x21
            ]
        );
        assert_eq!(BlockId::from_bytes(&bytes), id);
    }

    #[test]
    fn file_stems_round_trip_and_sort_like_ids() {
        let ids = [
            BlockId::new(1, 0, 9),
            BlockId::new(1, 0, 10),
            BlockId::new(1, 2, 0),
            BlockId::new(2, 0, 0),
            BlockId::new(u32::MAX, u64::MAX, u64::MAX),
        ];
        for id in ids {
            assert_eq!(BlockId::parse_file_stem(&id.file_stem()), Some(id));
        }
        let mut stems: Vec<String> = ids.iter().map(BlockId::file_stem).collect();
        stems.sort();
        let parsed: Vec<BlockId> = stems
            .iter()
            .map(|s| BlockId::parse_file_stem(s).unwrap())
            .collect();
        assert_eq!(parsed, ids);
        assert_eq!(BlockId::parse_file_stem("00000001-0000000000000000"), None);
        assert_eq!(
            BlockId::parse_file_stem("0000000g-0000000000000000-0000000000000000"),
            None
        );
    }

    #[test]
    fn corrupt_data_is_detected() {
        let block = Block::new(BlockId::new(1, 1, 1), Bytes::from_static(b"hello"), 1);
        assert!(block.verify().is_ok());
        let err = Block::from_parts(
            block.id(),
            Bytes::from_static(b"hellp"),
            1,
            block.crc32(),
            "t",
        )
        .unwrap_err();
        assert!(matches!(err, Error::BlockCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("block 1/1/1"), "{err}");
    }
}
