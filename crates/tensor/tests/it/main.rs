//! Integration tests of diffuse-tensor: golden values from PyTorch and diffusers, strict and
//! atomic weights I/O, and the training loop's checkpoint/resume guarantees.

mod golden;
mod train_loop;
mod weights_io;

/// The CUDA part of a test runs only where a GPU is present; elsewhere it says so.
pub fn cuda_or_skip(test: &str) -> Option<tch::Device> {
    if diffuse_tensor::device::cuda_device_count() > 0 {
        Some(tch::Device::Cuda(0))
    } else {
        eprintln!("{test}: skipped: no CUDA device");
        None
    }
}

/// libtorch's generator is process-global and the test harness runs tests on several threads:
/// every test whose result depends on the random stream holds this lock.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
