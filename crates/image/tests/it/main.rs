//! Integration tests of diffuse-image: UNet2d parity with diffusers 0.42.1 (fixtures from
//! `tests/golden/make_unet_golden.py`), datasets, picture I/O, pipeline directories, the classifier
//! and the Fréchet distance.

mod classifier;
mod data;
mod io;
mod pipeline;
mod unet;

/// libtorch's generator is process-global and tests run on several threads: tests whose results
/// depend on the exact random stream hold this lock.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
