//! The envelope around every checkpoint and state snapshot: magic, format version, body
//! length and CRC-32. Pure functions, no IO; the byte layout is in the crate docs ("Byte
//! format") and pinned by the golden-bytes tests at the bottom of this file. **Changing
//! these functions changes the on-disk format.**
//!
//! The envelope's 24 bytes keep their meaning in every format version; a new version may
//! only change the body. That is what lets a reader check the CRC before it looks at the
//! version, so that a flipped bit in the version field reads as corruption, not as "written
//! by a newer Ember".

use crate::error::{Error, Result};

/// Bytes before the body.
pub const HEADER_BYTES: usize = 24;

/// Offset of the stored CRC-32 within the header.
pub const CRC_OFFSET: usize = 20;

/// What an envelope holds; each kind has its own magic and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A metadata checkpoint: magic `EMBERCKP`, body = JSON ([`crate::Checkpoint`]).
    Checkpoint,
    /// A state snapshot: magic `EMBERSNP`, body = the engine's opaque state bytes.
    Snapshot,
}

impl Kind {
    /// The 8 magic bytes at offset 0.
    pub const fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Checkpoint => b"EMBERCKP",
            Kind::Snapshot => b"EMBERSNP",
        }
    }

    /// The format version this build writes, and the newest it reads.
    pub const fn version(self) -> u32 {
        match self {
            Kind::Checkpoint => crate::FORMAT_VERSION,
            Kind::Snapshot => SNAPSHOT_FORMAT_VERSION,
        }
    }

    /// For messages.
    pub const fn what(self) -> &'static str {
        match self {
            Kind::Checkpoint => "checkpoint",
            Kind::Snapshot => "state snapshot",
        }
    }
}

/// The snapshot envelope's version. The snapshot body has its own version, owned by the
/// engine; this one only covers the envelope and never needed to change.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// Wraps `body` in an envelope of `kind` at the current version.
pub fn seal(kind: Kind, body: &[u8]) -> Vec<u8> {
    seal_version(kind, kind.version(), body)
}

/// Wraps `body` in an envelope claiming `version` (tests and migration tools).
pub fn seal_version(kind: Kind, version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(kind.magic());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let crc = checksum(&out, body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// CRC-32 (IEEE) of the header's first 20 bytes followed by the body.
fn checksum(header_before_crc: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_before_crc);
    hasher.update(body);
    hasher.finalize()
}

/// Checks an envelope of `kind` and returns `(version, body)`. `name` is the file path or
/// object key, for errors. The checks run in this order, each with its own error:
///
/// 1. at least 24 bytes, else [`Error::Truncated`] (a torn header);
/// 2. the magic, else [`Error::BadMagic`];
/// 3. the declared body length against the bytes present: fewer is [`Error::Truncated`]
///    (a torn body), more is [`Error::TrailingBytes`];
/// 4. the CRC-32 over header and body, else [`Error::ChecksumMismatch`];
/// 5. the version, `1..=kind.version()`, else [`Error::UnsupportedVersion`].
///
/// Never panics, whatever the bytes.
pub fn open<'a>(kind: Kind, name: &str, bytes: &'a [u8]) -> Result<(u32, &'a [u8])> {
    let what = kind.what();
    let len = bytes.len() as u64;
    let truncated = |needed_bytes: u64| Error::Truncated {
        what,
        name: name.to_owned(),
        len_bytes: len,
        needed_bytes,
    };
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_BYTES>() else {
        // A file shorter than the header is reported as torn only if what is there could be
        // the start of one; anything else is not ours.
        let magic = kind.magic();
        let n = bytes.len().min(magic.len());
        if bytes[..n] == magic[..n] {
            return Err(truncated(HEADER_BYTES as u64));
        }
        return Err(bad_magic(kind, name, bytes));
    };
    if &header[0..8] != kind.magic() {
        return Err(bad_magic(kind, name, bytes));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[12..20]);
    let body_len = u64::from_le_bytes(len_bytes);
    let stored = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
    let present = rest.len() as u64;
    if body_len > present {
        return Err(truncated((HEADER_BYTES as u64).saturating_add(body_len)));
    }
    if body_len < present {
        return Err(Error::TrailingBytes {
            what,
            name: name.to_owned(),
            offset: HEADER_BYTES as u64 + body_len,
            extra_bytes: present - body_len,
        });
    }
    let computed = checksum(&header[..CRC_OFFSET], rest);
    if computed != stored {
        return Err(Error::ChecksumMismatch {
            what,
            name: name.to_owned(),
            offset: CRC_OFFSET as u64,
            stored,
            computed,
        });
    }
    if version == 0 || version > kind.version() {
        return Err(Error::UnsupportedVersion {
            what,
            name: name.to_owned(),
            version,
            supported: kind.version(),
        });
    }
    Ok((version, rest))
}

fn bad_magic(kind: Kind, name: &str, bytes: &[u8]) -> Error {
    Error::BadMagic {
        what: kind.what(),
        name: name.to_owned(),
        found: bytes[..bytes.len().min(8)].to_vec(),
        expected: match kind {
            Kind::Checkpoint => "EMBERCKP",
            Kind::Snapshot => "EMBERSNP",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_ieee() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn envelope_bytes_are_stable() {
        let sealed = seal(Kind::Snapshot, b"state");
        let expected: Vec<u8> = [
            &b"EMBERSNP"[..],
            &[1, 0, 0, 0],             // format version 1
            &[5, 0, 0, 0, 0, 0, 0, 0], // body length 5
            &[0xc7, 0xff, 0x88, 0xea], // CRC-32 (python3 zlib.crc32) of bytes 0..20 and the body
            b"state",
        ]
        .concat();
        assert_eq!(sealed, expected);
        assert_eq!(
            u32::from_le_bytes([sealed[20], sealed[21], sealed[22], sealed[23]]),
            crc32fast::hash(&[&sealed[..20], &b"state"[..]].concat())
        );
        assert_eq!(
            open(Kind::Snapshot, "x", &sealed).unwrap(),
            (1, &b"state"[..])
        );
    }

    #[test]
    fn every_check_has_its_error() {
        let good = seal(Kind::Checkpoint, b"{}");
        let name = "f";
        let err = |bytes: &[u8]| open(Kind::Checkpoint, name, bytes).unwrap_err();

        assert!(matches!(
            err(&good[..10]),
            Error::Truncated {
                needed_bytes: 24,
                ..
            }
        ));
        assert!(matches!(err(b""), Error::Truncated { .. }));
        assert!(matches!(err(b"hello"), Error::BadMagic { .. }));
        assert!(matches!(
            open(Kind::Snapshot, name, &good).unwrap_err(),
            Error::BadMagic { .. }
        ));
        assert!(matches!(
            err(&good[..good.len() - 1]),
            Error::Truncated {
                len_bytes: 25,
                needed_bytes: 26,
                ..
            }
        ));
        let mut longer = good.clone();
        longer.push(b'\n');
        assert!(matches!(
            err(&longer),
            Error::TrailingBytes {
                offset: 26,
                extra_bytes: 1,
                ..
            }
        ));
        for at in [0usize, 8, 12, 20, 24, 25] {
            let mut flipped = good.clone();
            flipped[at] ^= 0x10;
            let e = err(&flipped);
            assert!(
                matches!(
                    e,
                    Error::ChecksumMismatch { .. }
                        | Error::BadMagic { .. }
                        | Error::Truncated { .. }
                ),
                "bit flip at {at}: {e}"
            );
        }
        // A version this build does not know, with a valid checksum: a clear error.
        let newer = seal_version(Kind::Checkpoint, 2, b"{}");
        let e = err(&newer);
        assert!(
            matches!(
                e,
                Error::UnsupportedVersion {
                    version: 2,
                    supported: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("format version 2"), "{e}");
        assert!(matches!(
            err(&seal_version(Kind::Checkpoint, 0, b"")),
            Error::UnsupportedVersion { .. }
        ));
    }

    #[test]
    fn huge_declared_length_is_torn_not_an_allocation() {
        let mut bytes = seal(Kind::Checkpoint, b"{}");
        bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = open(Kind::Checkpoint, "f", &bytes).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Truncated {
                    needed_bytes: u64::MAX,
                    ..
                }
            ),
            "{e}"
        );
    }
}
