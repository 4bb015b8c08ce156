//! The vocabulary: `V` distinct words, drawn first from the generator.

use std::collections::HashSet;

use super::rng::SplitMix64;

/// The shortest word the definition draws (`3 + below(8)`).
pub(crate) const WORD_LEN_MIN: usize = 3;
/// The longest word the definition draws.
pub(crate) const WORD_LEN_MAX: usize = WORD_LEN_MIN + 7;

/// One word laid out for fast copying: its letters followed by a single space, padded.
///
/// Writing a line copies `len + 1` bytes (word and separator) from here per word, and the
/// last separator of the line is then overwritten with `\n`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WordSlot {
    text: [u8; SLOT_BYTES],
    len: u8,
}

/// Bytes copied per word: the longest word and its space, rounded up to a size the compiler
/// copies in one or two vector moves.
pub(crate) const SLOT_BYTES: usize = 16;
const _: () = assert!(WORD_LEN_MAX < SLOT_BYTES, "a word and its space fit a slot");

impl WordSlot {
    /// The word's letters.
    #[inline]
    pub(crate) fn word(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }

    /// The whole slot: the word, one space, padding.
    #[inline]
    pub(crate) fn padded(&self) -> &[u8; SLOT_BYTES] {
        &self.text
    }

    /// The length of the word and its space.
    #[inline]
    pub(crate) fn advance(&self) -> usize {
        usize::from(self.len) + 1
    }

    /// The word's letters followed by one space.
    #[inline]
    pub(crate) fn word_and_space(&self) -> &[u8] {
        &self.text[..usize::from(self.len) + 1]
    }
}

/// The words by Zipf rank (rank 0 is the most frequent).
#[derive(Debug, Clone)]
pub(crate) struct Vocabulary {
    slots: Vec<WordSlot>,
    /// How many candidate words were drawn again because they had been drawn before.
    redraws: u64,
}

impl Vocabulary {
    /// Draws `size` distinct words from `rng`, exactly as the definition says: for each rank,
    /// `len = 3 + below(8)`, then `len` letters `'a' + below(26)`; a word drawn before is
    /// drawn again for the same rank.
    pub(crate) fn draw(rng: &mut SplitMix64, size: usize) -> Self {
        let mut slots = Vec::with_capacity(size);
        let mut seen: HashSet<[u8; SLOT_BYTES]> = HashSet::with_capacity(size * 2);
        let mut redraws = 0;
        while slots.len() < size {
            // `below` returns less than its bound, so both casts are lossless.
            let len = WORD_LEN_MIN + rng.below(8) as usize;
            let mut text = [b' '; SLOT_BYTES];
            for letter in &mut text[..len] {
                *letter = b'a' + rng.below(26) as u8;
            }
            // The space-padded text identifies the word: letters never include a space.
            if seen.insert(text) {
                slots.push(WordSlot {
                    text,
                    len: len as u8,
                });
            } else {
                redraws += 1;
            }
        }
        Self { slots, redraws }
    }

    /// The number of words.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot of the word with this rank. Panics if `rank >= len()`: ranks come from the
    /// sampler, which never returns one out of range.
    #[inline]
    pub(crate) fn slot(&self, rank: u32) -> &WordSlot {
        &self.slots[rank as usize]
    }

    /// All slots by rank.
    pub(crate) fn slots(&self) -> &[WordSlot] {
        &self.slots
    }

    /// How many candidates were drawn again because they duplicated an earlier word.
    pub(crate) fn redraws(&self) -> u64 {
        self.redraws
    }
}
