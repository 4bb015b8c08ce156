//! A fast hasher whose output is fixed for all time, and the hash partitioner built on it.
//!
//! Recomputing a batch must give byte-identical output, so nothing in a batch's result may
//! depend on a per-process random seed: not which partition a key lands in, and not the
//! order in which a hash map yields its entries. `std`'s default hasher is randomly seeded,
//! so every map in the engine uses [`StableState`] instead, and [`partition_of`] assigns
//! keys to partitions. Both are pinned by golden tests: changing them changes which part
//! file a key is written to, which would break the byte-identical re-run of a batch written
//! by an older binary.
//!
//! The mixing is Fx-style (multiply and rotate, eight bytes at a time: fast on the short
//! keys a stream engine sees most) followed by the MurmurHash3 64-bit finaliser, so that
//! both the low bits (bucket index) and the high bits (control tags) of hashbrown's tables,
//! and the partition number, are well distributed.

use std::hash::{BuildHasher, Hash, Hasher};

const SEED: u64 = 0x243f_6a88_85a3_08d3; // the fractional digits of pi
const K: u64 = 0x517c_c1b7_2722_0a95; // FxHash's multiplier

/// The engine's stable hasher (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct StableHasher {
    state: u64,
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher { state: SEED }
    }
}

impl StableHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for StableHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Short keys (most words) take two mixes of overlapping loads, which cover every
        // byte for a given length; the length is mixed in, so inputs of different lengths
        // differ too. Constant-size loads compile to single moves (no `memcpy`).
        let len = bytes.len();
        let (a, b) = if len >= 8 {
            let mut chunks = bytes[..len - 8].chunks_exact(8);
            for chunk in &mut chunks {
                self.mix(read_u64(chunk, 0));
            }
            let rest = chunks.remainder();
            let a = if rest.is_empty() {
                0
            } else {
                read_u64(&bytes[len - 8 - rest.len()..], 0)
            };
            (a, read_u64(bytes, len - 8))
        } else if len >= 4 {
            (
                u64::from(read_u32(bytes, 0)),
                u64::from(read_u32(bytes, len - 4)),
            )
        } else if len > 0 {
            let x = u64::from(bytes[0])
                | (u64::from(bytes[len / 2]) << 8)
                | (u64::from(bytes[len - 1]) << 16);
            (x, 0)
        } else {
            (0, 0)
        };
        self.mix(a);
        self.mix(b ^ ((len as u64) << 56));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        // Fixed width regardless of the platform, so the hash is the same on 32-bit targets.
        self.mix(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fmix64(self.state)
    }
}

#[inline]
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
#[inline]
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The [`BuildHasher`] for every map in the engine.
#[derive(Clone, Copy, Debug, Default)]
pub struct StableState;

impl BuildHasher for StableState {
    type Hasher = StableHasher;

    #[inline]
    fn build_hasher(&self) -> StableHasher {
        StableHasher::default()
    }
}

/// A `HashMap` with the stable hasher.
pub type StableHashMap<K, V> = std::collections::HashMap<K, V, StableState>;

/// An insertion-ordered map with the stable hasher: used for state, whose iteration order
/// must survive a snapshot and restore unchanged.
pub type StableIndexMap<K, V> = indexmap::IndexMap<K, V, StableState>;

/// The stable hash of `value`.
#[inline]
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    StableState.hash_one(value)
}

/// The partition, in `0..partitions`, that a key with hash `hash` belongs to.
///
/// Uses the middle bits of the hash (rotated to the top, then scaled), which neither
/// hashbrown's bucket index (low bits) nor its control tags (top seven bits) use, so keys
/// that share a partition still spread over a table's buckets.
#[inline]
pub fn partition_of(hash: u64, partitions: usize) -> usize {
    debug_assert!(partitions > 0);
    ((u128::from(hash.rotate_left(32)) * partitions as u128) >> 64) as usize
}

/// The partition of `key` among `partitions` (hash partitioning, as Spark's `HashPartitioner`).
#[inline]
pub fn partition_of_key<K: Hash + ?Sized>(key: &K, partitions: usize) -> usize {
    partition_of(stable_hash(key), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact values are part of the output format (which part file a key is written
    /// to); a change here must be deliberate.
    #[test]
    fn hashes_are_pinned() {
        assert_eq!(
            stable_hash("bkquuxmr"),
            0x596c_e571_a184_2316,
            "{:#x}",
            stable_hash("bkquuxmr")
        );
        assert_eq!(
            stable_hash(&42u64),
            0x5e18_397c_240a_21ca,
            "{:#x}",
            stable_hash(&42u64)
        );
        assert_eq!(
            stable_hash(""),
            0xc009_bb97_4bd4_a8fe,
            "{:#x}",
            stable_hash("")
        );
        assert_eq!(partition_of_key("bkquuxmr", 7), 4);
    }

    #[test]
    fn every_byte_of_short_and_long_inputs_matters() {
        for len in 0..40usize {
            let base: Vec<u8> = (0..len as u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(11))
                .collect();
            let h = stable_hash(&base[..]);
            for i in 0..len {
                let mut other = base.clone();
                other[i] ^= 0x40;
                assert_ne!(stable_hash(&other[..]), h, "len {len}, byte {i}");
            }
        }
    }

    #[test]
    fn strings_that_differ_in_length_or_trailing_zeros_hash_differently() {
        assert_ne!(stable_hash(&b"a"[..]), stable_hash(&b"a\0"[..]));
        assert_ne!(stable_hash("abcdefgh"), stable_hash("abcdefgh\0"));
        assert_ne!(stable_hash(&("a", "b")), stable_hash(&("ab", "")));
    }

    #[test]
    fn partitions_are_balanced() {
        let partitions = 8;
        let mut counts = vec![0u32; partitions];
        for i in 0..80_000u32 {
            counts[partition_of_key(&format!("word{i}"), partitions)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "unbalanced partition: {c}");
        }
    }
}
