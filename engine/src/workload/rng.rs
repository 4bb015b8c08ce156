//! splitmix64, the workload's pseudo-random generator.
//!
//! splitmix64 is counter-based: the `k`-th output (1-based) of a generator seeded with `seed`
//! is `mix(seed + k * GAMMA)` (mod 2^64). The generator therefore never has to be run
//! sequentially to reach a position, which is what lets the workload generate line `j`
//! without generating lines `0..j` first.

/// The golden-ratio increment of splitmix64.
pub(crate) const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function: the state after an increment, mixed.
#[inline]
pub(crate) fn mix(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `unit()` of the definition: the top 53 bits of a draw, scaled into `[0, 1)`.
#[inline]
pub(crate) fn unit(draw: u64) -> f64 {
    // Exact: a 53-bit integer is representable, and scaling by a power of two is exact.
    (draw >> 11) as f64 * TWO_POW_MINUS_53
}

/// 2^-53.
pub(crate) const TWO_POW_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;

/// A sequential splitmix64 generator (used for the vocabulary, which is drawn first).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose state is initialised to `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The current state: the next draw is `mix(state + GAMMA)`.
    pub(crate) fn state(&self) -> u64 {
        self.state
    }

    /// `next()` of the definition.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// `below(b) = next() mod b`, unsigned.
    #[inline]
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference outputs of the Java `LineGen.SplitMix64` (and of the splitmix64 paper's C
    /// code) for seed 0 and seed 42.
    #[test]
    fn matches_reference_outputs() {
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(g.next_u64(), 0x06C4_5D18_8009_454F);
        let mut g = SplitMix64::new(42);
        assert_eq!(g.next_u64(), 0xBDD7_3226_2FEB_6E95);
    }

    #[test]
    fn counter_form_equals_sequential_form() {
        let seed = 0xDEAD_BEEF_u64;
        let mut g = SplitMix64::new(seed);
        for k in 1..1000u64 {
            assert_eq!(g.next_u64(), mix(seed.wrapping_add(GAMMA.wrapping_mul(k))));
        }
    }

    #[test]
    fn unit_is_in_range() {
        assert_eq!(unit(0), 0.0);
        assert!(unit(u64::MAX) < 1.0);
        assert_eq!(unit(u64::MAX), 1.0 - TWO_POW_MINUS_53);
    }
}
