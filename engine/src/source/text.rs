//! Checking text blocks: UTF-8 validation with the skip-or-fail policy.

use bytes::Bytes;

use crate::block::LinesCodec;
use crate::config::InvalidUtf8Policy;
use crate::error::{Error, Result};

/// A checked block of lines.
#[derive(Debug)]
pub(crate) struct CheckedLines {
    /// The lines to store: the input itself when it is all valid (no copy).
    pub bytes: Bytes,
    /// Valid lines.
    pub records: u64,
    /// Lines dropped because they are not UTF-8 (Skip policy).
    pub invalid: u64,
}

/// Checks that every line of `bytes` is UTF-8, applying `policy` to those that are not.
/// `first_line` is the 1-based number of the block's first line within its source, for the
/// error message.
pub(crate) fn check_lines(
    bytes: Bytes,
    policy: InvalidUtf8Policy,
    stream: &str,
    origin: &str,
    first_line: u64,
) -> Result<CheckedLines> {
    // The common case: one pass of the standard library's validator over the whole block.
    if std::str::from_utf8(&bytes).is_ok() {
        return Ok(CheckedLines {
            records: LinesCodec::count_records(&bytes),
            invalid: 0,
            bytes,
        });
    }
    let mut out = Vec::with_capacity(bytes.len());
    let (mut records, mut invalid) = (0u64, 0u64);
    let mut start = 0usize;
    let mut line_no = first_line;
    while start < bytes.len() {
        let (end, next) = match memchr::memchr(b'\n', &bytes[start..]) {
            Some(i) => (start + i, start + i + 1),
            None => (bytes.len(), bytes.len()),
        };
        let line = &bytes[start..end];
        match std::str::from_utf8(line) {
            Ok(_) => {
                out.extend_from_slice(&bytes[start..next]);
                records += 1;
            }
            Err(e) => match policy {
                InvalidUtf8Policy::Skip => {
                    invalid += 1;
                    tracing::warn!(
                        stream,
                        origin,
                        line = line_no,
                        byte = e.valid_up_to(),
                        "skipping a line that is not valid UTF-8"
                    );
                }
                InvalidUtf8Policy::Fail => {
                    return Err(Error::InvalidUtf8 {
                        stream: stream.to_owned(),
                        origin: origin.to_owned(),
                        line: line_no,
                        byte_offset: e.valid_up_to(),
                    });
                }
            },
        }
        line_no += 1;
        start = next;
    }
    Ok(CheckedLines {
        bytes: Bytes::from(out),
        records,
        invalid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_blocks_are_not_copied() {
        let b = Bytes::from_static(b"a\nb\nc");
        let checked = check_lines(b.clone(), InvalidUtf8Policy::Fail, "s", "o", 1).unwrap();
        assert_eq!(checked.records, 3);
        assert_eq!(checked.bytes.as_ptr(), b.as_ptr());
    }

    #[test]
    fn invalid_lines_are_skipped_and_counted_or_fail_with_their_position() {
        let b = Bytes::from_static(b"ok\nbad \xff here\nfine\n\xc3\n");
        let checked = check_lines(b.clone(), InvalidUtf8Policy::Skip, "s", "o", 1).unwrap();
        assert_eq!((checked.records, checked.invalid), (2, 2));
        assert_eq!(&checked.bytes[..], b"ok\nfine\n");
        let err = check_lines(b, InvalidUtf8Policy::Fail, "words", "127.0.0.1:9", 41).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("stream `words`: line 42 from 127.0.0.1:9") && msg.contains("byte 4"),
            "{msg}"
        );
    }
}
