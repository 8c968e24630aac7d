//! Integration tests of diffuse-audio: file formats, resampling, datasets, log-mel features,
//! network parity with PyTorch twins, the model pipeline and a learning test on sines.

mod data;
mod features;
mod judge;
mod learning;
mod networks;
mod pipeline;
mod resample;
mod wav;

/// libtorch's generator is process-global and tests run on several threads: tests whose results
/// depend on the exact random stream hold this lock.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
