//! Timing helpers shared by `diffuse doctor` and `diffuse-bench`: run a closure until enough
//! time has passed and report the median, synchronising CUDA so GPU work is really counted.

use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Wait for queued GPU work on `device` to finish (no-op on the CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median milliseconds per call of `f` on `device`, after `warmup` calls, timing at least
/// `min_iters` calls and at least `min_time`.
pub fn time_ms(
    device: Device,
    warmup: usize,
    min_iters: usize,
    min_time: Duration,
    mut f: impl FnMut(),
) -> f64 {
    for _ in 0..warmup {
        f();
    }
    sync(device);
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_iters || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        sync(device);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// Throughput of an n x n by n x n f32 matrix multiply on `device`: (milliseconds, GFLOP/s).
pub fn matmul(device: Device, n: i64, min_time: Duration) -> (f64, f64) {
    tch::manual_seed(0);
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let ms = time_ms(device, 2, 3, min_time, || {
        let _ = a.matmul(&b);
    });
    let flops = 2.0 * (n as f64).powi(3);
    (ms, flops / (ms * 1e-3) / 1e9)
}
