//! [`Str`]: the engine's cheap immutable string, the record type of text streams.
//!
//! A text stream's records are lines, and typical pipelines split them into words and
//! count them. A `String` per line and per word would make the allocator the bottleneck,
//! so a `Str` is either
//! - *inline*: up to [`Str::INLINE_CAPACITY`] bytes stored in the value itself (no
//!   allocation; most words), or
//! - *shared*: a reference-counted slice of a received block's bytes (no copy; lines).
//!
//! `Str` derefs to `&str`, hashes and compares like `str`, and serialises as a string.
//! [`Str::split`] and [`Str::split_whitespace`] take the string by value and yield `Str`s,
//! so `lines.flat_map(|line| line.split(' '))` compiles without a `collect` and without
//! allocating.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use arrayvec::ArrayString;
use bytestring::ByteString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A cheap immutable UTF-8 string (see the module docs).
#[derive(Clone)]
pub struct Str(Repr);

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<{ Str::INLINE_CAPACITY }>),
    Shared(ByteString),
}

impl Str {
    /// The longest string stored without a heap allocation or a shared buffer.
    pub const INLINE_CAPACITY: usize = 20;

    /// The empty string.
    pub const fn new() -> Self {
        Str(Repr::Inline(ArrayString::new_const()))
    }

    /// A `Str` of `s`: inline if it is short, otherwise a copy in a new shared buffer.
    pub fn from_str_copy(s: &str) -> Self {
        match ArrayString::from(s) {
            Ok(inline) => Str(Repr::Inline(inline)),
            Err(_) => Str(Repr::Shared(ByteString::from(s))),
        }
    }

    /// A `Str` for `sub`, which must lie inside `whole`: inline if it is short, otherwise a
    /// shared slice of `whole`'s buffer (no copy).
    ///
    /// # Panics
    /// If `sub` is not a subslice of `whole` (a bug in the caller).
    pub fn slice_of(whole: &ByteString, sub: &str) -> Self {
        match ArrayString::from(sub) {
            Ok(inline) => Str(Repr::Inline(inline)),
            Err(_) => Str(Repr::Shared(whole.slice_ref(sub))),
        }
    }

    /// The string.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(s) => s.as_str(),
            Repr::Shared(s) => s,
        }
    }

    /// A `Str` for the substring `sub` of `self` (which must lie inside `self`).
    fn sub(&self, sub: &str) -> Str {
        match &self.0 {
            Repr::Inline(_) => Str::from_str_copy(sub),
            Repr::Shared(whole) => Str::slice_of(whole, sub),
        }
    }

    /// Splits on `separator`, yielding owned `Str`s (like `str::split` with a `char`).
    ///
    /// Takes `self` by value so the iterator can be returned from a `flat_map` closure.
    pub fn split(self, separator: char) -> Split {
        Split {
            text: self,
            position: 0,
            separator,
            done: false,
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
        matches!(self.0, Repr::Inline(_))
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

impl Borrow<str> for Str {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Str {
    #[inline]
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Str {}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Str {
    fn partial_cmp(&self, other: &Str) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Str {
    fn cmp(&self, other: &Str) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Str {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Exactly as `str` hashes, so `Borrow<str>` lookups work.
        self.as_str().hash(state);
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
        match ArrayString::from(&s) {
            Ok(inline) => Str(Repr::Inline(inline)),
            Err(_) => Str(Repr::Shared(ByteString::from(s))),
        }
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
    position: usize,
    separator: char,
    done: bool,
}

impl Iterator for Split {
    type Item = Str;

    #[inline]
    fn next(&mut self) -> Option<Str> {
        if self.done {
            return None;
        }
        let rest = &self.text.as_str()[self.position..];
        let piece = match rest.find(self.separator) {
            Some(at) => {
                self.position += at + self.separator.len_utf8();
                &rest[..at]
            }
            None => {
                self.done = true;
                rest
            }
        };
        Some(self.text.sub(piece))
    }
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
        let word = &word_and_rest[..len];
        self.position += start + len;
        Some(self.text.sub(word))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_inline_and_long_ones_share_the_buffer() {
        let block = ByteString::from("a very long line that does not fit inline\nshort\n");
        let long = Str::slice_of(&block, &block[..41]);
        assert!(!long.is_inline());
        assert_eq!(long, "a very long line that does not fit inline");
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
            let block = ByteString::from(text);
            let ours: Vec<String> = Str::slice_of(&block, &block)
                .split(' ')
                .map(String::from)
                .collect();
            let std: Vec<String> = text.split(' ').map(String::from).collect();
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
        use crate::hash::stable_hash;
        let a = Str::from("word");
        assert_eq!(stable_hash(&a), stable_hash("word"));
        let (a, b) = (Str::from("a"), Str::from("b"));
        assert!(a < b);
        let mut map = crate::hash::StableHashMap::default();
        map.insert(Str::from("x"), 1);
        assert_eq!(map.get("x"), Some(&1));
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
