//! The acknowledged line protocol (version 1) between a line sender (`ember gen --ack`) and
//! the acknowledging socket receiver (`tcp://HOST:PORT?ack=1`): lines are numbered, the
//! receiver acknowledges a line only once the block holding it is stored under its stream's
//! durability mode, and after a disconnect (or a restart of the receiving process) the
//! sender resumes where the receiver says.
//!
//! # Wire format
//!
//! Control lines are ASCII, one space between fields, `\n`-terminated, at most
//! [`CONTROL_LINE_MAX`] bytes including the `\n`. Numbers are decimal `u64`, digits only, no
//! leading zeros (except `0` itself). Line numbers count from 0; `end` is exclusive.
//!
//! ```text
//! receiver -> sender, first and once:  EMBER-ACK 1 RESUME <from>\n
//!     "I durably hold every line before <from>; send me <from> onwards."
//! sender -> receiver, the answer:      EMBER-ACK 1 FROM <from> END <end>\n
//!     followed by lines <from>..<end>, each ending in "\n" (line numbers are implied by
//!     position: the k-th line after the header is line <from>+k); after line <end>-1 the
//!     sender half-closes its side.
//!   or, refusing:                      EMBER-ACK 1 REFUSED <reason>\n   and the sender closes.
//! receiver -> sender, any time after:  ACK <end>\n
//!     "every line before <end> is stored under the stream's durability mode."
//!     Cumulative; never decreases; never beyond the lines sent.
//! ```
//!
//! The sender is the oracle that nothing acknowledged was lost: it refuses (and `ember gen`
//! exits non-zero) a `RESUME` before a line it had acknowledged, and an `ACK` or `RESUME`
//! past what it ever sent. Data lines never contain `\n`, so the stream is unambiguous: the
//! header is the first line, every later line is data.
//!
//! Decoding is pure (no IO), never panics and never reads past [`CONTROL_LINE_MAX`] bytes
//! without a newline; it is property-tested on arbitrary bytes below.

use std::fmt;

/// The protocol version this code speaks.
pub const VERSION: u32 = 1;
/// The first word of the handshake lines.
pub const MAGIC: &str = "EMBER-ACK";
/// The longest control line accepted, `\n` included. A refusal's reason is cut to fit.
pub const CONTROL_LINE_MAX: usize = 512;

/// What a receiver sends to the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToSender {
    /// The handshake: resume at line `from` (every line before it is durably held).
    Resume {
        /// The first line wanted.
        from: u64,
    },
    /// Every line before `end` is stored durably.
    Ack {
        /// One past the last acknowledged line.
        end: u64,
    },
}

/// What a sender sends to a receiver before the data lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToReceiver {
    /// Lines `from..end` follow.
    Header {
        /// The first line that follows.
        from: u64,
        /// One past the last line of the whole stream.
        end: u64,
    },
    /// The sender refuses to serve (and closes).
    Refused {
        /// Why, for the operator.
        reason: String,
    },
}

/// A control line that is not valid protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No newline within [`CONTROL_LINE_MAX`] bytes.
    #[error("a control line longer than {CONTROL_LINE_MAX} bytes")]
    TooLong,
    /// The peer speaks another version.
    #[error("protocol version {found:?}, this side speaks {VERSION}")]
    Version {
        /// The version field as received.
        found: String,
    },
    /// Anything else.
    #[error("malformed control line {line:?}: {reason}")]
    Malformed {
        /// The line (lossily decoded, without its newline).
        line: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl ToSender {
    /// Appends the line's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let line = match self {
            ToSender::Resume { from } => format!("{MAGIC} {VERSION} RESUME {from}\n"),
            ToSender::Ack { end } => format!("ACK {end}\n"),
        };
        out.extend_from_slice(line.as_bytes());
    }
}

impl ToReceiver {
    /// Appends the line's encoding to `out` (a refusal's reason has its newlines replaced
    /// and is cut so that the line fits [`CONTROL_LINE_MAX`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToReceiver::Header { from, end } => {
                out.extend_from_slice(
                    format!("{MAGIC} {VERSION} FROM {from} END {end}\n").as_bytes(),
                );
            }
            ToReceiver::Refused { reason } => {
                let prefix = format!("{MAGIC} {VERSION} REFUSED ");
                let room = CONTROL_LINE_MAX - prefix.len() - 1;
                let mut reason: String = reason.replace(['\n', '\r'], " ");
                if reason.len() > room {
                    let mut cut = room;
                    while !reason.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    reason.truncate(cut);
                }
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(reason.as_bytes());
                out.push(b'\n');
            }
        }
    }
}

impl fmt::Display for ToSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.encode(&mut out);
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

/// Decodes the first control line a receiver sent from the start of `buf`: `Ok(None)` if no
/// complete line is there yet, else the message and the bytes it took.
pub fn decode_to_sender(buf: &[u8]) -> Result<Option<(ToSender, usize)>, DecodeError> {
    let Some((line, used)) = split_line(buf)? else {
        return Ok(None);
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let message = match fields.as_slice() {
        ["ACK", end] => ToSender::Ack {
            end: number(end, &line)?,
        },
        [MAGIC, version, rest @ ..] => {
            check_version(version)?;
            match rest {
                ["RESUME", from] => ToSender::Resume {
                    from: number(from, &line)?,
                },
                _ => return Err(malformed(&line, "expected RESUME <from>")),
            }
        }
        _ => {
            return Err(malformed(
                &line,
                "expected ACK <end> or EMBER-ACK <version> RESUME <from>",
            ));
        }
    };
    Ok(Some((message, used)))
}

/// Decodes the sender's header (or refusal) from the start of `buf`: `Ok(None)` if no
/// complete line is there yet, else the message and the bytes it took.
pub fn decode_to_receiver(buf: &[u8]) -> Result<Option<(ToReceiver, usize)>, DecodeError> {
    let Some((line, used)) = split_line(buf)? else {
        return Ok(None);
    };
    let mut parts = line.splitn(4, ' ');
    let (magic, version, kind) = (parts.next(), parts.next(), parts.next());
    if magic != Some(MAGIC) {
        return Err(malformed(&line, "expected EMBER-ACK <version> ..."));
    }
    check_version(version.unwrap_or(""))?;
    let rest = parts.next().unwrap_or("");
    let message = match kind {
        Some("REFUSED") => ToReceiver::Refused {
            reason: rest.to_owned(),
        },
        Some("FROM") => match rest.split(' ').collect::<Vec<_>>().as_slice() {
            [from, "END", end] => {
                let (from, end) = (number(from, &line)?, number(end, &line)?);
                if from > end {
                    return Err(malformed(&line, "FROM is past END"));
                }
                ToReceiver::Header { from, end }
            }
            _ => return Err(malformed(&line, "expected FROM <from> END <end>")),
        },
        _ => return Err(malformed(&line, "expected FROM or REFUSED")),
    };
    Ok(Some((message, used)))
}

/// The first line of `buf` (without its `\n`) and its length with the `\n`.
fn split_line(buf: &[u8]) -> Result<Option<(String, usize)>, DecodeError> {
    let window = &buf[..buf.len().min(CONTROL_LINE_MAX)];
    match memchr::memchr(b'\n', window) {
        Some(i) => {
            let line = std::str::from_utf8(&buf[..i])
                .map_err(|_| malformed(&String::from_utf8_lossy(&buf[..i]), "not UTF-8"))?;
            Ok(Some((line.to_owned(), i + 1)))
        }
        None if buf.len() >= CONTROL_LINE_MAX => Err(DecodeError::TooLong),
        None => Ok(None),
    }
}

fn check_version(version: &str) -> Result<(), DecodeError> {
    if version == VERSION.to_string() {
        Ok(())
    } else {
        Err(DecodeError::Version {
            found: version.chars().take(32).collect(),
        })
    }
}

fn number(field: &str, line: &str) -> Result<u64, DecodeError> {
    let digits = !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit());
    if !digits || (field.len() > 1 && field.starts_with('0')) {
        return Err(malformed(
            line,
            "a number must be decimal digits without leading zeros",
        ));
    }
    field
        .parse()
        .map_err(|_| malformed(line, "a number does not fit 64 bits"))
}

fn malformed(line: &str, reason: &'static str) -> DecodeError {
    DecodeError::Malformed {
        line: line.chars().take(CONTROL_LINE_MAX).collect(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sender(bytes: &[u8]) -> Result<Option<(ToSender, usize)>, DecodeError> {
        decode_to_sender(bytes)
    }

    #[test]
    fn the_wire_format_is_pinned() {
        let mut out = Vec::new();
        ToSender::Resume { from: 0 }.encode(&mut out);
        ToSender::Ack { end: 1234 }.encode(&mut out);
        assert_eq!(out, b"EMBER-ACK 1 RESUME 0\nACK 1234\n");
        let mut out = Vec::new();
        ToReceiver::Header { from: 5, end: 100 }.encode(&mut out);
        ToReceiver::Refused {
            reason: "no\nway".into(),
        }
        .encode(&mut out);
        assert_eq!(
            out,
            b"EMBER-ACK 1 FROM 5 END 100\nEMBER-ACK 1 REFUSED no way\n"
        );
        assert_eq!(
            sender(b"EMBER-ACK 1 RESUME 7\nACK 9\n").unwrap(),
            Some((ToSender::Resume { from: 7 }, 21))
        );
        assert_eq!(
            sender(b"ACK 18446744073709551615\n").unwrap(),
            Some((ToSender::Ack { end: u64::MAX }, 25))
        );
        assert_eq!(
            decode_to_receiver(b"EMBER-ACK 1 FROM 0 END 3\nw1 w2\n").unwrap(),
            Some((ToReceiver::Header { from: 0, end: 3 }, 25))
        );
    }

    #[test]
    fn bad_lines_are_named_errors() {
        assert_eq!(sender(b"ACK 1").unwrap(), None, "incomplete");
        for bad in [
            &b"ACK\n"[..],
            b"ACK 01\n",
            b"ACK -1\n",
            b"ACK +1\n",
            b"ACK 18446744073709551616\n",
            b"ACK 1 2\n",
            b"ack 1\n",
            b"EMBER-ACK 1 RESUME\n",
            b"EMBER-ACK 1 FROM 0 END 1\n",
            b"\xff\n",
        ] {
            assert!(
                matches!(sender(bad), Err(DecodeError::Malformed { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            sender(b"EMBER-ACK 2 RESUME 0\n"),
            Err(DecodeError::Version { found: "2".into() })
        );
        assert_eq!(sender(&[b'A'; CONTROL_LINE_MAX]), Err(DecodeError::TooLong));
        assert!(matches!(
            decode_to_receiver(b"EMBER-ACK 1 FROM 5 END 4\n"),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            decode_to_receiver(b"hello world\n"),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn a_long_refusal_is_cut_to_fit() {
        let mut out = Vec::new();
        ToReceiver::Refused {
            reason: "é".repeat(CONTROL_LINE_MAX),
        }
        .encode(&mut out);
        assert!(out.len() <= CONTROL_LINE_MAX);
        let (decoded, used) = decode_to_receiver(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert!(matches!(decoded, ToReceiver::Refused { reason } if reason.starts_with("éé")));
    }

    fn to_sender() -> impl Strategy<Value = ToSender> {
        prop_oneof![
            any::<u64>().prop_map(|from| ToSender::Resume { from }),
            any::<u64>().prop_map(|end| ToSender::Ack { end }),
        ]
    }

    fn to_receiver() -> impl Strategy<Value = ToReceiver> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| ToReceiver::Header {
                from: a.min(b),
                end: a.max(b)
            }),
            "[^\n\r]{0,100}".prop_map(|reason| ToReceiver::Refused { reason }),
        ]
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            for decoded in [decode_to_sender(&bytes).map(|m| m.map(|(_, n)| n)),
                            decode_to_receiver(&bytes).map(|m| m.map(|(_, n)| n))] {
                if let Ok(Some(used)) = decoded {
                    prop_assert!(used <= bytes.len().min(CONTROL_LINE_MAX));
                    prop_assert_eq!(bytes[used - 1], b'\n');
                }
            }
        }

        #[test]
        fn messages_round_trip(messages in proptest::collection::vec(to_sender(), 1..20), header in to_receiver()) {
            let mut wire = Vec::new();
            for m in &messages {
                m.encode(&mut wire);
            }
            let mut at = 0;
            for m in &messages {
                let (decoded, used) = decode_to_sender(&wire[at..]).unwrap().unwrap();
                prop_assert_eq!(&decoded, m);
                at += used;
            }
            prop_assert_eq!(at, wire.len());
            let mut wire = Vec::new();
            header.encode(&mut wire);
            prop_assert_eq!(decode_to_receiver(&wire).unwrap(), Some((header, wire.len())));
        }

        #[test]
        fn a_prefix_of_a_line_is_incomplete_not_an_error(m in to_sender(), cut in 0usize..40) {
            let mut wire = Vec::new();
            m.encode(&mut wire);
            let cut = cut.min(wire.len() - 1);
            prop_assert_eq!(decode_to_sender(&wire[..cut]), Ok(None));
        }
    }
}
