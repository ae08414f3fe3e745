//! Seeded randomness with results fixed by this crate, not by a dependency's version: the
//! shard layout and the epoch orders are part of the data format, so the shuffle and the
//! bounded draws are written here on top of the raw xoshiro stream.

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A generator for one purpose: `seed` is the user's seed, `stream` tells purposes apart
/// (e.g. the ingest shuffle and an epoch's order) so they never share draws.
pub fn rng(seed: u64, stream: u64) -> Xoshiro256PlusPlus {
    // splitmix-style mixing so that nearby (seed, stream) pairs give unrelated states
    let mixed = seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Xoshiro256PlusPlus::seed_from_u64(mixed)
}

/// splitmix64's finalizer: a bijection of u64 that scatters nearby inputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of one sample's augmentation draws in one epoch: a pure function of
/// (seed, epoch, global index), whatever thread or order computes it.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> Xoshiro256PlusPlus {
    rng(seed, mix64(mix64(epoch ^ 0xA5A5_0000_0000_0000) ^ index))
}

/// Uniform in [0, 1) with 53 random bits.
pub fn unit(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Seeded pseudo-random bytes, for tests that need varied pixels.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rng(seed, 0).fill_bytes(&mut bytes);
    bytes
}

/// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject).
pub fn below(rng: &mut impl Rng, n: u64) -> u64 {
    assert!(n > 0, "below(0)");
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Fisher-Yates shuffle.
pub fn shuffle<T>(items: &mut [T], rng: &mut impl Rng) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_fixed_by_the_seed() {
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b = a.clone();
        shuffle(&mut a, &mut rng(7, 0));
        shuffle(&mut b, &mut rng(7, 0));
        assert_eq!(a, b);
        let mut c: Vec<u32> = (0..1000).collect();
        shuffle(&mut c, &mut rng(7, 1));
        assert_ne!(a, c, "another stream gives another order");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn below_is_uniform_within_binomial_bounds() {
        // 60,000 draws over 6 cells: each count is Binomial(60000, 1/6), sd ~ 91.3;
        // a 5-sd band fails with probability ~1e-6 per cell.
        let mut r = rng(1, 2);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[below(&mut r, 6) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 5.0 * 91.3, "{counts:?}");
        }
    }

    #[test]
    fn shuffle_puts_each_item_everywhere_evenly() {
        // Position of item 0 after shuffling 4 items, 40,000 times: uniform over 4 places.
        let mut r = rng(3, 0);
        let mut at = [0u32; 4];
        for _ in 0..40_000 {
            let mut v = [0u8, 1, 2, 3];
            shuffle(&mut v, &mut r);
            at[v.iter().position(|&x| x == 0).unwrap()] += 1;
        }
        // Binomial(40000, 1/4): sd ~ 86.6
        for c in at {
            assert!((c as f64 - 10_000.0).abs() < 5.0 * 86.6, "{at:?}");
        }
    }
}
