//! Seeding. libtorch's CPU generator is the one PyTorch uses, so `manual_seed(s)` followed by
//! `Tensor::randn` gives exactly `torch.manual_seed(s); torch.randn(...)`: seeded runs can be
//! compared number for number with diffusers. Where a figure must not depend on (or disturb)
//! that global generator, e.g. the random subsets of an evaluation, [`SplitMix`] draws from a
//! seed of its own.

/// Seed libtorch's CPU generator and every CUDA generator, as `torch.manual_seed` does.
pub fn manual_seed(seed: u64) {
    // tch takes an i64 and libtorch reinterprets it as the u64 PyTorch uses; the bit pattern is what counts.
    tch::manual_seed(seed as i64);
    if tch::Cuda::is_available() {
        tch::Cuda::manual_seed_all(seed);
    }
}

/// A seed for stream `index` of a run seeded with `base` (SplitMix64 finaliser, Steele et al. 2014).
///
/// The training loop reseeds before every micro-batch from (run seed, micro-batch index), so the
/// random numbers a step draws depend only on the step, never on how many steps ran before in
/// this process: that is what lets a resumed run continue bit for bit.
pub fn derive_seed(base: u64, index: u64) -> u64 {
    let mut z = base
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    // Keep the seed within i64's positive range so it prints the same in Rust and Python.
    (z ^ (z >> 31)) >> 1
}

/// SplitMix64 (Steele et al. 2014): a small seeded generator of its own, apart from libtorch's.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `k` distinct indices of `0..n` in random order (a partial Fisher-Yates shuffle); all `n`
    /// of them when `k > n`.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<i64> {
        let k = k.min(n);
        let mut all: Vec<i64> = (0..n as i64).collect();
        for i in 0..k {
            let j = i + (self.next_u64() % (n - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ_and_repeat() {
        assert_eq!(derive_seed(7, 3), derive_seed(7, 3));
        assert_ne!(derive_seed(7, 3), derive_seed(7, 4));
        assert_ne!(derive_seed(7, 3), derive_seed(8, 3));
        assert!(derive_seed(u64::MAX, u64::MAX) <= i64::MAX as u64);
    }

    #[test]
    fn split_mix_samples_distinct_indices_and_repeats_with_its_seed() {
        let mut idx = SplitMix::new(3).sample(10, 10);
        idx.sort_unstable();
        assert_eq!(idx, (0..10).collect::<Vec<i64>>());
        let a = SplitMix::new(5).sample(100, 7);
        assert_eq!(a, SplitMix::new(5).sample(100, 7));
        assert_ne!(a, SplitMix::new(6).sample(100, 7));
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), 7);
        assert!(b.iter().all(|&i| (0..100).contains(&i)));
        assert_eq!(SplitMix::new(1).sample(3, 5).len(), 3);
    }
}
