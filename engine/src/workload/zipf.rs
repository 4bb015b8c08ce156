//! Zipf ranks by inverse CDF, bit-exact with the reference and fast.
//!
//! The reference draws a rank by binary search: `u = unit() * total`, rank = the smallest `r`
//! with `cdf[r] > u`, clamped to `V - 1`. That costs about `log2(V)` unpredictable branches
//! per word. [`ZipfSampler::rank`] returns the same rank with a guide table, so that most
//! draws need no comparison at all:
//!
//! - The top `B` bits of the 53-bit integer `x = draw >> 11` pick a bucket. Every `x` in
//!   bucket `b` lies in `[b << (53 - B), (b + 1) << (53 - B))`.
//! - `u = fl(fl(x * 2^-53) * total)` is monotone in `x` (the first product is exact, and
//!   rounding is monotone), and the rank is monotone in `u` (the cdf never decreases).
//! - So `guide[b] = rank(u at the bucket's first x)` is a lower bound for every draw in
//!   bucket `b`, and `guide[b + 1]` an upper bound. The rank is `guide[b]` plus the number of
//!   cdf entries in `[guide[b], guide[b + 1])` that are `<= u`: usually zero entries to look
//!   at, a handful in the flat tail of the distribution.
//!
//! Both bounds are computed with the very floating-point operations the draws use, so the
//! result is exact, not approximately right; a property test checks it against the binary
//! search.

use super::Error;
use super::rng::{TWO_POW_MINUS_53, unit};

/// The fewest guide buckets (as a power of two).
const GUIDE_BITS_MIN: u32 = 8;
/// The most guide buckets (as a power of two): 4 MiB of `u32`.
const GUIDE_BITS_MAX: u32 = 20;

/// `x^y` as Java's `StrictMath.pow` computes it: fdlibm's algorithm, which `libm::pow`
/// ports. (Rust's `f64::powf` calls the platform's `pow`, glibc's here, which differs from it
/// in the last bit for about 7% of the weights; the test below pins the difference down.)
fn strict_pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// Draws Zipf ranks: `w[r] = 1 / (r + 1)^s`, by inverse CDF.
#[derive(Debug, Clone)]
pub(crate) struct ZipfSampler {
    /// `cdf[r]` = running sum of the weights of ranks `0..=r`, in rank order.
    cdf: Vec<f64>,
    /// `cdf[V - 1]`.
    total: f64,
    /// `guide[b]` = the rank of the first draw of bucket `b`; one more entry, `V - 1`, at
    /// the end.
    guide: Vec<u32>,
    /// `bucket = (draw >> 11) >> guide_shift`.
    guide_shift: u32,
}

impl ZipfSampler {
    /// The sampler for `vocab_size` ranks and exponent `s`.
    ///
    /// The weights use [`strict_pow`], so the cdf is bit-identical to the reference's.
    pub(crate) fn new(vocab_size: usize, s: f64) -> Result<Self, Error> {
        if vocab_size == 0 || vocab_size > u32::MAX as usize {
            return Err(Error::InvalidSpec {
                parameter: "vocab",
                reason: format!("{vocab_size} words is out of range"),
            });
        }
        let mut cdf = Vec::with_capacity(vocab_size);
        let mut acc = 0.0_f64;
        for r in 0..vocab_size {
            acc += 1.0 / strict_pow((r + 1) as f64, s);
            cdf.push(acc);
        }
        let total = acc;
        if !(total.is_finite() && total > 0.0) {
            return Err(Error::InvalidSpec {
                parameter: "zipf-s",
                reason: format!(
                    "s = {s} over {vocab_size} words gives a total weight of {total}, \
                     which must be finite and positive"
                ),
            });
        }
        let mut sampler = Self {
            cdf,
            total,
            guide: Vec::new(),
            guide_shift: 0,
        };
        sampler.build_guide();
        Ok(sampler)
    }

    fn build_guide(&mut self) {
        // About four buckets per word keeps the tail scans short while the table (for the
        // default 10,000 words, 64 Ki entries) still fits in the L2 cache.
        let bits = (self.cdf.len() * 4)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(GUIDE_BITS_MIN, GUIDE_BITS_MAX);
        self.guide_shift = 53 - bits;
        let buckets = 1u64 << bits;
        let mut guide = Vec::with_capacity(buckets as usize + 1);
        for b in 0..buckets {
            let x = b << self.guide_shift;
            guide.push(self.rank_by_search(x as f64 * TWO_POW_MINUS_53 * self.total));
        }
        guide.push(self.last_rank());
        self.guide = guide;
    }

    /// `V - 1`; fits in `u32` (checked in `new`).
    fn last_rank(&self) -> u32 {
        (self.cdf.len() - 1) as u32
    }

    /// The reference's rule: the smallest `r` with `cdf[r] > u`, clamped to `V - 1`.
    fn rank_by_search(&self, u: f64) -> u32 {
        let r = self.cdf.partition_point(|&c| c <= u);
        (r as u32).min(self.last_rank())
    }

    /// The rank drawn by the 64-bit output `draw` of the generator.
    #[inline]
    pub(crate) fn rank(&self, draw: u64) -> u32 {
        let u = unit(draw) * self.total;
        let bucket = ((draw >> 11) >> self.guide_shift) as usize;
        // `bucket < 2^bits` because `draw >> 11` has 53 bits, and `guide` has 2^bits + 1
        // entries, so both reads are in bounds.
        let lo = self.guide[bucket] as usize;
        let hi = self.guide[bucket + 1] as usize;
        (lo + self.cdf[lo..hi].partition_point(|&c| c <= u)) as u32
    }

    /// The number of ranks.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cdf.len()
    }

    /// The total weight, `cdf[V - 1]`.
    #[cfg(test)]
    pub(crate) fn total(&self) -> f64 {
        self.total
    }

    /// The probability of drawing rank `r` (for estimates, not for drawing).
    pub(crate) fn probability(&self, r: usize) -> f64 {
        let below = if r == 0 { 0.0 } else { self.cdf[r - 1] };
        (self.cdf[r] - below) / self.total
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reference_rank(sampler: &ZipfSampler, draw: u64) -> u32 {
        sampler.rank_by_search(unit(draw) * sampler.total())
    }

    #[test]
    fn extreme_draws_hit_first_and_last_rank() {
        let sampler = ZipfSampler::new(10_000, 1.0).unwrap();
        assert_eq!(sampler.rank(0), 0);
        assert_eq!(sampler.rank(u64::MAX), reference_rank(&sampler, u64::MAX));
        assert_eq!(sampler.rank(u64::MAX), 9_999);
    }

    #[test]
    fn guide_bounds_hold_at_every_bucket_edge() {
        // The first and the last draw of every bucket are where an off-by-one would show.
        for &(vocab, s) in &[
            (10_000, 1.0),
            (1, 1.0),
            (2, 0.0),
            (1_000, 2.5),
            (50_000, 0.7),
        ] {
            let sampler = ZipfSampler::new(vocab, s).unwrap();
            let buckets = sampler.guide.len() as u64 - 1;
            for b in 0..buckets {
                let first = (b << sampler.guide_shift) << 11;
                let last = first | ((1u64 << (sampler.guide_shift + 11)) - 1);
                for draw in [first, last] {
                    assert_eq!(
                        sampler.rank(draw),
                        reference_rank(&sampler, draw),
                        "{vocab} {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_weights_that_do_not_sum_to_a_finite_positive_total() {
        assert!(ZipfSampler::new(10, f64::NAN).is_err());
        assert!(ZipfSampler::new(10, -2000.0).is_err());
        assert!(ZipfSampler::new(0, 1.0).is_err());
    }

    #[test]
    fn probabilities_sum_to_one() {
        let sampler = ZipfSampler::new(1_000, 1.3).unwrap();
        let sum: f64 = (0..sampler.len()).map(|r| sampler.probability(r)).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    /// `tests/data/strictmath-pow-n100000.txt` holds, for each exponent `s`, an FNV-1a hash
    /// of the bits of Java's `StrictMath.pow(x, s)` for `x = 1..=100000`, and the bits of the
    /// total weight over 100,000 ranks (`PowHash.java`, run with OpenJDK 17). A single
    /// differing bit in any weight changes the hash. Sampled ranks are much less sensitive
    /// (a rank changes only when a draw falls between the two cdf values), which is why the
    /// weights are pinned here directly.
    #[test]
    fn weights_are_bit_identical_to_java_strictmath_pow() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/strictmath-pow-n100000.txt"
        );
        let reference = std::fs::read_to_string(path).unwrap();
        let mut checked = 0;
        for line in reference.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let s: f64 = fields[0].parse().unwrap();
            let want_hash = u64::from_str_radix(fields[1], 16).unwrap();
            let want_total = u64::from_str_radix(fields[2], 16).unwrap();
            let mut hash = 0xcbf2_9ce4_8422_2325_u64;
            for x in 1..=100_000 {
                for byte in strict_pow(f64::from(x), s).to_bits().to_le_bytes() {
                    hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            assert_eq!(hash, want_hash, "pow(x, {s}) differs from StrictMath.pow");
            let total = ZipfSampler::new(100_000, s).unwrap().total();
            assert_eq!(total.to_bits(), want_total, "cdf total for s = {s}");
            checked += 1;
        }
        assert_eq!(checked, 22);
    }

    proptest! {
        #[test]
        fn guided_rank_equals_binary_search(
            draws in proptest::collection::vec(any::<u64>(), 1..200),
            vocab in 1usize..30_000,
            s in -1.5f64..4.0,
        ) {
            let sampler = ZipfSampler::new(vocab, s).unwrap();
            for draw in draws {
                prop_assert_eq!(sampler.rank(draw), reference_rank(&sampler, draw));
            }
        }
    }
}
