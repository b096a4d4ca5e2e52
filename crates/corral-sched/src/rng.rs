//! The one seeded random generator of the scheduler crates (splitmix64): the reference DRS
//! policies' random VM selection draws from it, with its state carried in the policy state, and
//! the benchmarks draw their synthetic pools from it, so every random choice is reproducible
//! from a seed.

/// splitmix64 (Steele, Lea & Flood; Vigna's constants): tiny, fast, and good enough for
/// choices and synthetic data; not for anything secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The state now: [`SplitMix64::new`] of it continues the same sequence.
    pub fn state(&self) -> u64 {
        self.0
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In 0..n, by the remainder of [`SplitMix64::next_u64`] (0 for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// In [0, 1), from the top 53 bits of [`SplitMix64::next_u64`].
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_splitmix64s() {
        // Vigna's reference implementation, seeded with 1234567.
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(r.next_u64(), 9_817_491_932_198_370_423);
        let mut r = SplitMix64::new(42);
        assert_eq!(r.next_u64(), 13_679_457_532_755_275_413);
        assert_eq!(r.state(), 42u64.wrapping_add(0x9E37_79B9_7F4A_7C15));
    }

    #[test]
    fn the_state_continues_the_sequence() {
        let mut a = SplitMix64::new(7);
        a.next_u64();
        let mut b = SplitMix64::new(a.state());
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn below_and_unit_stay_in_range() {
        let mut r = SplitMix64::new(1);
        for n in 1..50 {
            assert!(r.below(n) < n);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(r.below(0), 0);
        // Remainder and top bits of the same draw.
        let (mut a, mut b) = (SplitMix64::new(9), SplitMix64::new(9));
        assert_eq!(a.below(1000) as u64, b.next_u64() % 1000);
        let x = b.next_u64();
        assert_eq!(a.unit(), (x >> 11) as f64 / 9_007_199_254_740_992.0);
    }
}
