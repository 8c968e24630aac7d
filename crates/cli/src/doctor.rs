//! `diffuse doctor`: what this installation is built on and what the machine can do with it —
//! versions, threads, CUDA and cuDNN with device names, and a timed matmul on every device.

use crate::measure;
use anyhow::{Context, Result};
use diffuse_tensor::device::{cuda_device_count, device_name, DeviceSpec};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::Device;

#[derive(Serialize)]
struct CudaDevice {
    index: usize,
    name: String,
    memory_gib: Option<f64>,
}

#[derive(Serialize)]
struct MatmulResult {
    device: String,
    n: i64,
    ms: f64,
    gflops: f64,
}

#[derive(Serialize)]
struct Report {
    diffuse: String,
    tch: String,
    libtorch: Option<String>,
    libtorch_dir: Option<PathBuf>,
    libtorch_cuda_loaded: bool,
    threads: i32,
    /// Why libtorch has this many threads (see diffuse_tensor::runtime::adapt_threads).
    threads_reason: String,
    cpu: String,
    logical_cores: usize,
    cuda_available: bool,
    cudnn_available: bool,
    cuda_devices: Vec<CudaDevice>,
    matmul: Vec<MatmulResult>,
}

/// The shared libraries of this process, from /proc/self/maps (Linux), to tell which libtorch
/// was really loaded rather than which one the build saw.
fn loaded_libraries() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .map(PathBuf::from)
        .collect();
    libs.dedup();
    libs
}

/// A libtorch's version from the files it ships beside `lib/`.
fn libtorch_version_at(lib_dir: &Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        return Some(text.trim().to_owned());
    }
    let text = std::fs::read_to_string(root.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__"))
        .and_then(|rest| rest.split(['\'', '"']).nth(1))
        .map(str::to_owned)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

/// GPU names and memory from the CUDA driver API (libcuda), which tch does not expose.
fn cuda_devices(count: usize) -> Vec<CudaDevice> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;
    type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    let query = |index: usize| -> Option<(String, Option<f64>)> {
        // SAFETY: the signatures are the CUDA driver API's (cuda.h); buffers outlive the calls.
        unsafe {
            let lib = libloading::Library::new("libcuda.so.1").ok()?;
            let init: libloading::Symbol<CuInit> = lib.get(b"cuInit").ok()?;
            let get: libloading::Symbol<CuDeviceGet> = lib.get(b"cuDeviceGet").ok()?;
            let name_of: libloading::Symbol<CuDeviceGetName> = lib.get(b"cuDeviceGetName").ok()?;
            if init(0) != 0 {
                return None;
            }
            let mut dev = 0i32;
            if get(&mut dev, index as i32) != 0 {
                return None;
            }
            let mut buf = [0 as std::ffi::c_char; 256];
            if name_of(buf.as_mut_ptr(), buf.len() as i32, dev) != 0 {
                return None;
            }
            let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned();
            let memory = lib
                .get::<CuDeviceTotalMem>(b"cuDeviceTotalMem_v2")
                .ok()
                .and_then(|total| {
                    let mut bytes = 0usize;
                    (total(&mut bytes, dev) == 0).then(|| bytes as f64 / (1u64 << 30) as f64)
                });
            Some((name, memory))
        }
    };
    (0..count)
        .map(|index| {
            let (name, memory_gib) =
                query(index).unwrap_or_else(|| (format!("CUDA device {index}"), None));
            CudaDevice {
                index,
                name,
                memory_gib,
            }
        })
        .collect()
}

pub fn run(device: Option<&str>, json: bool) -> Result<()> {
    // Resolve the device first: a bad --device is reported before anything is timed.
    let only: Option<Device> = match device {
        None => None,
        Some(text) => Some(
            text.parse::<DeviceSpec>()
                .and_then(DeviceSpec::resolve)
                .context("--device")?,
        ),
    };
    let libs = loaded_libraries();
    let libtorch_dir = libs
        .iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libtorch_cpu.so"))
        })
        .and_then(|p| p.parent())
        .map(Path::to_path_buf);
    let libtorch = libtorch_dir
        .as_deref()
        .and_then(libtorch_version_at)
        .or_else(|| diffuse_tensor::LIBTORCH_VERSION.map(str::to_owned));
    let libtorch_cuda_loaded = libs.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libtorch_cuda.so"))
    });
    let count = cuda_device_count();
    let mut devices = Vec::new();
    match only {
        Some(d) => devices.push(d),
        None => {
            devices.push(Device::Cpu);
            devices.extend((0..count).map(Device::Cuda));
        }
    }
    let matmul = devices
        .iter()
        .map(|&d| {
            let n = if d.is_cuda() { 4096 } else { 1024 };
            let (ms, gflops) = measure::matmul(
                d,
                n,
                Duration::from_millis(if d.is_cuda() { 300 } else { 600 }),
            );
            MatmulResult {
                device: device_name(d),
                n,
                ms,
                gflops,
            }
        })
        .collect();
    let report = Report {
        diffuse: env!("CARGO_PKG_VERSION").to_owned(),
        tch: diffuse_tensor::TCH_VERSION.to_owned(),
        libtorch,
        libtorch_dir,
        libtorch_cuda_loaded,
        threads: tch::get_num_threads(),
        threads_reason: diffuse_tensor::runtime::threads_choice()
            .map_or_else(|| "libtorch's default".to_owned(), ToString::to_string),
        cpu: cpu_model(),
        logical_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cuda_available: count > 0,
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cuda_devices: cuda_devices(count),
        matmul,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

fn print_human(r: &Report) {
    let row = |k: &str, v: String| println!("{k:<12} {v}");
    row("diffuse", r.diffuse.clone());
    row("tch", r.tch.clone());
    row(
        "libtorch",
        format!(
            "{}  ({})",
            r.libtorch.as_deref().unwrap_or("unknown version"),
            r.libtorch_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "path unknown".into())
        ),
    );
    row(
        "threads",
        format!("{} (libtorch intra-op; {})", r.threads, r.threads_reason),
    );
    row(
        "cpu",
        format!("{} ({} logical cores)", r.cpu, r.logical_cores),
    );
    if r.cuda_available {
        row(
            "cuda",
            format!("available, {} device(s)", r.cuda_devices.len()),
        );
        for d in &r.cuda_devices {
            let memory = d
                .memory_gib
                .map(|m| format!(", {m:.1} GiB"))
                .unwrap_or_default();
            row(
                &format!("  cuda:{}", d.index),
                format!("{}{memory}", d.name),
            );
        }
    } else {
        let why = if r.libtorch_cuda_loaded {
            "libtorch_cuda is linked, but no GPU or driver was found"
        } else {
            "this libtorch has no CUDA support (CPU-only build)"
        };
        row("cuda", format!("not available ({why})"));
    }
    row(
        "cudnn",
        if r.cudnn_available {
            "available".into()
        } else {
            "not available".into()
        },
    );
    for m in &r.matmul {
        row(
            &format!("matmul {}", m.device),
            format!(
                "f32 {n}x{n}: {:.2} ms, {:.1} GFLOP/s",
                m.ms,
                m.gflops,
                n = m.n
            ),
        );
    }
}
