//! Seeding. libtorch's CPU generator is the one PyTorch uses, so `manual_seed(s)` followed by
//! `Tensor::randn` gives exactly `torch.manual_seed(s); torch.randn(...)`: seeded runs can be
//! compared number for number with diffusers.

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
}
