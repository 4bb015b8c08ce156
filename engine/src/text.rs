//! [`Str`]: the engine's cheap immutable string, the record type of text streams.
//!
//! A text stream's records are lines, and typical pipelines split them into words and
//! count them. A `String` per line and per word would make the allocator the bottleneck,
//! so a `Str` is either
//! - *inline*: up to [`Str::INLINE_CAPACITY`] bytes stored in the value itself (no
//!   allocation; most words), or
//! - *shared*: a range of a reference-counted received block (no copy and no allocation
//!   per string; lines).
//!
//! `Str` derefs to `&str`, compares and orders like `str` (byte order), hashes with the
//! engine's stable hasher, and serialises as a string.
//! [`Str::split`] and [`Str::split_whitespace`] take the string by value and yield `Str`s,
//! so `lines.flat_map(|line| line.split(' '))` compiles without a `collect` and without
//! allocating.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use bytestring::ByteString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A cheap immutable UTF-8 string (see the module docs). 32 bytes.
#[derive(Clone)]
pub struct Str {
    /// Inline (`shared` is `None`): the bytes, zero-padded, in memory order, with the
    /// length in the last byte. Shared: `[start, len, 0]`.
    ///
    /// Words, not bytes: a string is built with three aligned word stores and moved with
    /// word loads, so a store is never forwarded to a wider or misaligned load (a profile
    /// of a byte-array layout showed three quarters of the split's time in such stalls).
    words: [u64; 3],
    /// A shared, immutable UTF-8 buffer (a received block) the string is a range of: no
    /// copy, and no allocation per string, only a reference count.
    shared: Option<Arc<ByteString>>,
}

#[inline]
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    // Native order: the word's bytes in memory are the source bytes in order.
    u64::from_ne_bytes(word)
}

/// The mask of the first `keep` bytes (in memory order) of a word; `keep` may exceed 8.
#[inline]
fn keep_mask(keep: usize) -> u64 {
    let bits = (keep.min(8) * 8) as u32;
    if cfg!(target_endian = "little") {
        // checked_shr(64) is None: no byte kept.
        u64::MAX.checked_shr(64 - bits).unwrap_or(0)
    } else {
        u64::MAX.checked_shl(64 - bits).unwrap_or(0)
    }
}

/// Byte `i` (memory order) of a word.
#[inline]
fn byte_of(word: u64, i: usize) -> u8 {
    word.to_ne_bytes()[i]
}

/// `word` with byte `i` (memory order) set to `b`.
#[inline]
fn with_byte(word: u64, i: usize, b: u8) -> u64 {
    let mut bytes = word.to_ne_bytes();
    bytes[i] = b;
    u64::from_ne_bytes(bytes)
}

/// The words of the inline string of the `len` bytes of `src` at `start` (`len <=
/// INLINE_CAPACITY`; the bytes must be UTF-8, cut at character boundaries).
#[inline(always)]
fn inline_words(src: &[u8], start: usize, len: usize) -> [u64; 3] {
    debug_assert!(len <= Str::INLINE_CAPACITY && start + len <= src.len());
    let mut words = [0u64; 3];
    if let Some(window) = src.get(start..start + 24) {
        // Fast path: 24 readable bytes; load whole words and mask off what is not ours.
        for (i, w) in words.iter_mut().enumerate() {
            *w = read_u64(window, 8 * i) & keep_mask(len.saturating_sub(8 * i));
        }
    } else {
        let mut buf = [0u8; 24];
        for (dst, &b) in buf.iter_mut().zip(&src[start..start + len]) {
            *dst = b;
        }
        for (i, w) in words.iter_mut().enumerate() {
            *w = read_u64(&buf, 8 * i);
        }
    }
    words[2] = with_byte(words[2], 7, len as u8);
    words
}

impl Str {
    /// The longest string stored in the value itself (no allocation, no shared buffer).
    pub const INLINE_CAPACITY: usize = 23;

    /// The empty string.
    pub const fn new() -> Self {
        Str {
            words: [0; 3],
            shared: None,
        }
    }

    #[inline(always)]
    fn inline(src: &[u8], start: usize, len: usize) -> Self {
        Str {
            words: inline_words(src, start, len),
            shared: None,
        }
    }

    /// A `Str` of `s`: inline if it is short, otherwise a copy in a new shared buffer.
    pub fn from_str_copy(s: &str) -> Self {
        if s.len() <= Self::INLINE_CAPACITY {
            Str::inline(s.as_bytes(), 0, s.len())
        } else {
            Str::whole(ByteString::from(s))
        }
    }

    /// A `Str` of a whole buffer (no copy; inline if short).
    pub fn from_shared(text: ByteString) -> Self {
        if text.len() <= Self::INLINE_CAPACITY {
            Str::inline(text.as_bytes(), 0, text.len())
        } else {
            Str::whole(text)
        }
    }

    fn whole(text: ByteString) -> Self {
        let len = text.len();
        Str::range_of(&Arc::new(text), 0, len)
    }

    /// A `Str` for `sub`, which must lie inside `whole`: inline if it is short, otherwise a
    /// range of `whole` (no copy).
    ///
    /// # Panics
    /// If `sub` is not a subslice of `whole` (a bug in the caller).
    #[inline]
    pub fn slice_of(whole: &Arc<ByteString>, sub: &str) -> Self {
        let offset = (sub.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
        assert!(
            offset <= whole.len() && sub.len() <= whole.len() - offset,
            "Str::slice_of: not a subslice"
        );
        Str::range_of(whole, offset, sub.len())
    }

    /// The line `start..end` of `whole` without a trailing `\r` (a `lines` block's
    /// record); `start` and `end` must be at character boundaries (the block's newlines).
    #[inline(always)]
    pub(crate) fn line_of(whole: &Arc<ByteString>, start: usize, end: usize) -> Self {
        let end = if end > start && whole.as_bytes().get(end - 1) == Some(&b'\r') {
            end - 1
        } else {
            end
        };
        Str::range_of(whole, start, end - start)
    }

    #[inline(always)]
    fn range_of(whole: &Arc<ByteString>, start: usize, len: usize) -> Self {
        if len <= Self::INLINE_CAPACITY {
            // Load from the whole buffer: bytes past the end of the string are then
            // readable, and the copy takes the fast path.
            Str::inline(whole.as_bytes(), start, len)
        } else {
            Str {
                words: [start as u64, len as u64, 0],
                shared: Some(Arc::clone(whole)),
            }
        }
    }

    /// The string.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.shared {
            // Always valid: inline bytes are only ever copied from a `&str` (or cut from
            // one at a character boundary). The check is the price of `forbid(unsafe_code)`;
            // the hot paths (hashing, equality, splitting) work on words and skip it.
            None => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Some(text) => {
                let (start, len) = (self.words[0] as usize, self.words[1] as usize);
                // A range is always at character boundaries; `get` only guards the impossible.
                text.get(start..start + len).unwrap_or_default()
            }
        }
    }

    /// The string's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.shared {
            None => &bytemuck::bytes_of(&self.words)[..self.inline_len()],
            Some(text) => {
                let (start, len) = (self.words[0] as usize, self.words[1] as usize);
                &text.as_bytes()[start..start + len]
            }
        }
    }

    #[inline]
    fn inline_len(&self) -> usize {
        usize::from(byte_of(self.words[2], 7))
    }

    /// The length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match self.shared {
            None => self.inline_len(),
            Some(_) => self.words[1] as usize,
        }
    }

    /// Whether the string is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits on `separator`, yielding owned `Str`s (like `str::split` with a `char`).
    ///
    /// Takes `self` by value so the iterator can be returned from a `flat_map` closure.
    pub fn split(self, separator: char) -> Split {
        let mut encoded = [0u8; 4];
        let sep_len = separator.encode_utf8(&mut encoded).len();
        let seps = if sep_len == 1 {
            separator_mask(self.as_bytes(), encoded[0])
        } else {
            0
        };
        Split {
            text: self,
            position: 0,
            separator: encoded,
            sep_len,
            window: 0,
            seps,
        }
    }

    /// Splits on runs of Unicode whitespace, like `str::split_whitespace`.
    pub fn split_whitespace(self) -> SplitWhitespace {
        SplitWhitespace {
            text: self,
            position: 0,
        }
    }

    /// Whether the string is stored inline (for tests and diagnostics).
    pub fn is_inline(&self) -> bool {
        self.shared.is_none()
    }

    /// The length of the shared buffer the string is a range of, which it keeps alive
    /// (`None` if inline). For tests and diagnostics.
    pub fn shared_buffer_len(&self) -> Option<usize> {
        self.shared.as_ref().map(|text| text.len())
    }

    /// The same string, keeping no more memory alive than its own bytes: a range of a
    /// larger shared buffer (a word of a received block) is copied into a buffer of its own;
    /// an inline string, or one that is its whole buffer, is cloned.
    ///
    /// For strings kept long after the block they came from, such as keys of long-lived
    /// state (the engine's stateful operators detach `Str` keys when they store them): a
    /// 30-byte word cut from a 1-4 MiB block would otherwise keep the whole block alive.
    pub fn detached(&self) -> Str {
        match &self.shared {
            Some(text) if text.len() > self.len() => Str::whole(ByteString::from(self.as_str())),
            _ => self.clone(),
        }
    }

    /// The piece `start..end` of `self`, cut at character boundaries.
    #[inline(always)]
    fn piece(&self, start: usize, end: usize) -> Str {
        match &self.shared {
            None => Str::inline(bytemuck::bytes_of(&self.words), start, end - start),
            Some(text) => Str::range_of(text, self.words[0] as usize + start, end - start),
        }
    }
}

impl Default for Str {
    fn default() -> Self {
        Str::new()
    }
}

impl Deref for Str {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Str {
    #[inline(always)]
    fn eq(&self, other: &Str) -> bool {
        match (&self.shared, &other.shared) {
            // Inline exactly when short: equal strings have the same representation.
            (None, None) => self.words == other.words,
            (Some(_), Some(_)) => self.eq_shared(other),
            _ => false,
        }
    }
}

impl Str {
    /// Equality of two shared (long) strings: out of line, so that the inline case, a hash
    /// map's key comparison on most words, stays small enough to be inlined into the probe.
    #[inline(never)]
    fn eq_shared(&self, other: &Str) -> bool {
        self.as_bytes() == other.as_bytes()
    }

    /// The hash of a shared (long) string; out of line for the reason of
    /// [`Str::eq_shared`].
    #[inline(never)]
    fn hash_shared<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl Eq for Str {}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialOrd for Str {
    fn partial_cmp(&self, other: &Str) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Str {
    /// Byte order (which for UTF-8 is code point order, as `str`'s).
    fn cmp(&self, other: &Str) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Str {
    #[inline(always)]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Equal strings have the same representation (inline exactly when at most
        // INLINE_CAPACITY bytes long), so each may hash its own way: an inline string as
        // its three words (bytes, zero padding and length), three multiplications and no
        // branches. (Unlike `str`'s hash; hence no `Borrow<str>`.)
        match &self.shared {
            None => {
                state.write_u64(self.words[0]);
                state.write_u64(self.words[1]);
                state.write_u64(self.words[2]);
            }
            Some(_) => self.hash_shared(state),
        }
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Str::from_str_copy(s)
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Str::from_shared(ByteString::from(s))
    }
}

impl From<Str> for String {
    fn from(s: Str) -> Self {
        s.as_str().to_owned()
    }
}

impl Serialize for Str {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Str, E> {
                Ok(Str::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Str, E> {
                Ok(Str::from(v))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// The iterator of [`Str::split`].
#[derive(Clone, Debug)]
pub struct Split {
    text: Str,
    /// Where the next piece starts; past the end once the last piece was returned.
    position: usize,
    separator: [u8; 4],
    sep_len: usize,
    /// A single-byte separator is found 64 bytes at a time: `seps` has bit `i` set for
    /// each separator at `window + i` not returned yet (see [`separator_mask`]).
    window: usize,
    seps: u64,
}

impl Iterator for Split {
    type Item = Str;

    // Always inlined into the caller's loop: returned through memory, a `Str` written
    // with word stores and read back with wider loads stalls on store forwarding.
    #[inline(always)]
    fn next(&mut self) -> Option<Str> {
        let bytes = self.text.as_bytes();
        let start = self.position;
        if start > bytes.len() {
            return None;
        }
        if self.sep_len == 1 {
            // The separators of a 64-byte window are one bit mask, so the next one is a
            // `trailing_zeros`, and the only hard-to-predict branch is once per window
            // rather than once per piece (a byte search per piece mispredicted its exit on
            // almost every short word).
            loop {
                if self.seps != 0 {
                    let at = self.window + self.seps.trailing_zeros() as usize;
                    self.seps &= self.seps - 1;
                    self.position = at + 1;
                    return Some(self.text.piece(start, at));
                }
                let next = self.window + 64;
                if next >= bytes.len() {
                    // After the last piece, `position` is past the end.
                    self.position = bytes.len() + 1;
                    return Some(self.text.piece(start, bytes.len()));
                }
                self.window = next;
                self.seps = separator_mask(&bytes[next..], self.separator[0]);
            }
        }
        // A multi-byte separator is a whole UTF-8 character, so every match is at a
        // character boundary.
        let rest = &bytes[start..];
        let sep = &self.separator[..self.sep_len];
        let end = match rest.windows(self.sep_len).position(|w| w == sep) {
            Some(at) => start + at,
            None => bytes.len(),
        };
        self.position = end + self.sep_len;
        Some(self.text.piece(start, end))
    }
}

/// Bit `i` set where byte `i` of the first 64 bytes of `bytes` is `b`.
#[inline(always)]
fn separator_mask(bytes: &[u8], b: u8) -> u64 {
    let n = bytes.len().min(64);
    let pattern = u64::from_le_bytes([b; 8]);
    let full = n / 8;
    let mut mask = 0u64;
    for i in 0..full {
        mask |= byte_matches(read_u64_le(bytes, 8 * i) ^ pattern) << (8 * i);
    }
    let tail = n % 8;
    if tail != 0 {
        let matches = if n >= 8 {
            // The last eight bytes, overlapping what was searched; keep the new ones.
            byte_matches(read_u64_le(bytes, n - 8) ^ pattern) >> (8 - tail)
        } else {
            bytes[..n]
                .iter()
                .enumerate()
                .fold(0, |m, (i, &x)| m | (u64::from(x == b) << i))
        };
        mask |= matches << (8 * full);
    }
    mask
}

/// Bit `i` (of the low eight) set where byte `i` (little-endian order) of `x` is zero.
/// Exact: no carry crosses a byte.
#[inline(always)]
const fn byte_matches(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // The top bit of each byte: set where the byte is not zero.
    let nonzero = ((x & LOW7).wrapping_add(LOW7) | x) & !LOW7;
    let zero = (nonzero ^ !LOW7) >> 7; // 0x01 in each zero byte
    // Gather bit 0 of each byte into the top byte, then shift it down.
    zero.wrapping_mul(0x0102_0408_1020_4080) >> 56
}

#[inline(always)]
fn read_u64_le(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The iterator of [`Str::split_whitespace`].
#[derive(Clone, Debug)]
pub struct SplitWhitespace {
    text: Str,
    position: usize,
}

impl Iterator for SplitWhitespace {
    type Item = Str;

    fn next(&mut self) -> Option<Str> {
        let rest = &self.text.as_str()[self.position..];
        let start = rest.find(|c: char| !c.is_whitespace())?;
        let word_and_rest = &rest[start..];
        let len = word_and_rest
            .find(char::is_whitespace)
            .unwrap_or(word_and_rest.len());
        let (from, to) = (self.position + start, self.position + start + len);
        self.position = to;
        Some(self.text.piece(from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::stable_hash;

    #[test]
    fn short_strings_are_inline_and_long_ones_share_the_buffer() {
        let block = Arc::new(ByteString::from(
            "a very long line that does not fit inline\nshort\n",
        ));
        let long = Str::slice_of(&block, &block[..41]);
        assert!(!long.is_inline());
        assert_eq!(long, "a very long line that does not fit inline");
        assert_eq!(long.as_str().as_ptr(), block.as_ptr(), "shared, not copied");
        let short = Str::slice_of(&block, &block[42..47]);
        assert!(short.is_inline());
        assert_eq!(short, "short");
    }

    #[test]
    fn split_matches_str_split() {
        for text in [
            "",
            " ",
            "a",
            "a b",
            " a  b ",
            "ünï cödé x",
            "one two three four five six seven",
        ] {
            let block = Arc::new(ByteString::from(text));
            let ours: Vec<String> = Str::slice_of(&block, &block[..])
                .split(' ')
                .map(String::from)
                .collect();
            let std: Vec<String> = text.split(' ').map(String::from).collect();
            assert_eq!(ours, std, "{text:?}");
            let ours: Vec<String> = Str::from(text).split('€').map(String::from).collect();
            let std: Vec<String> = text.split('€').map(String::from).collect();
            assert_eq!(ours, std, "{text:?}");
            let ours: Vec<String> = Str::from(text)
                .split_whitespace()
                .map(String::from)
                .collect();
            let std: Vec<String> = text.split_whitespace().map(String::from).collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    #[test]
    fn hashes_and_orders_like_str() {
        let a = Str::from("word");
        assert_eq!(
            stable_hash(&a),
            stable_hash(&Str::from(String::from("word")))
        );
        let (a, b) = (Str::from("a"), Str::from("b"));
        assert!(a < b);
        let mut map = crate::hash::StableHashMap::default();
        map.insert(Str::from("x"), 1);
        assert_eq!(map.get(&Str::from("x")), Some(&1));
        // Inline and shared strings hash and compare consistently.
        let long = "a string of more than twenty-four bytes";
        let block = Arc::new(ByteString::from(format!("{long}\n")));
        assert_eq!(
            stable_hash(&Str::slice_of(&block, &block[..long.len()])),
            stable_hash(&Str::from(long))
        );
    }

    #[test]
    fn inline_strings_cut_anywhere_in_a_buffer_keep_exactly_their_bytes() {
        let text = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH";
        for buf_len in 0..=text.len() {
            let whole = Arc::new(ByteString::from(&text[..buf_len]));
            for start in 0..=buf_len {
                for end in start..=buf_len.min(start + Str::INLINE_CAPACITY) {
                    let s = Str::slice_of(&whole, &whole[start..end]);
                    assert!(s.is_inline());
                    assert_eq!(s.as_str(), &text[start..end]);
                    assert_eq!(
                        s,
                        Str::from_str_copy(&text[start..end]),
                        "equality sees no stray bytes"
                    );
                    assert_eq!(
                        stable_hash(&s),
                        stable_hash(&Str::from_str_copy(&text[start..end]))
                    );
                }
            }
        }
    }

    #[test]
    fn separator_mask_marks_exactly_the_separators() {
        // Bytes next to a separator that differ from it in one bit (0x21 '!' next to 0x20
        // ' ', 0x01 next to 0) are where a borrow-based zero-byte test goes wrong.
        let hay: Vec<u8> = (0..150u32)
            .map(|i| [b'a', b' ', b'!', 0, 1, b'c', 0xff, b' '][(i * i % 11 % 8) as usize])
            .collect();
        for from in 0..hay.len() {
            for b in [b' ', b'!', 0, 1, b'a', 0xff, b'z'] {
                let rest = &hay[from..];
                let expected = rest
                    .iter()
                    .take(64)
                    .enumerate()
                    .fold(0u64, |m, (i, &x)| m | (u64::from(x == b) << i));
                assert_eq!(separator_mask(rest, b), expected, "from {from}, byte {b}");
            }
        }
    }

    #[test]
    fn split_matches_str_split_at_every_length_and_window_edge() {
        // Lines up to three 64-byte windows long, with runs of separators, a separator at
        // either end, pieces short (inline) and long (shared), cut from a block and not.
        let alphabet = "ab  c dé fghijklmnopqrstuvwxyz0123 ";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            for _ in 0..4 {
                let line: String = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let c = alphabet.chars().nth((seed % 35) as usize).unwrap();
                        if seed.is_multiple_of(5) { ' ' } else { c }
                    })
                    .collect();
                let block = Arc::new(ByteString::from(format!("{line}\nnext line")));
                let shared = Str::slice_of(&block, &block[..line.len()]);
                let std: Vec<&str> = line.split(' ').collect();
                for text in [shared, Str::from(line.as_str())] {
                    let ours: Vec<Str> = text.split(' ').collect();
                    assert_eq!(ours, std, "{line:?}");
                }
            }
        }
    }

    #[test]
    fn serde_round_trip() {
        let s = Str::from("a string longer than twenty bytes, shared");
        let bytes = postcard::to_stdvec(&s).unwrap();
        let back: Str = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn is_small() {
        assert!(
            std::mem::size_of::<Str>() <= 40,
            "{}",
            std::mem::size_of::<Str>()
        );
    }
}
