//! `diffuse-bench NAME [--device DEV]`: the Rust side of `cargo xtask bench`. Prints one JSON
//! line per case, `{"case", "ms", "work"}`; the peer script `xtask/bench/NAME.py` prints the
//! same cases for PyTorch, and xtask puts the two side by side.

use anyhow::{bail, Context, Result};
use diffuse_cli::measure::{matmul, time_ms};
use diffuse_tensor::optim::{AdamW, AdamWConfig};
use std::time::Duration;
use tch::nn::{self, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn emit(case: &str, ms: f64, work: &str) {
    println!(
        "{}",
        serde_json::json!({"case": case, "ms": ms, "work": work})
    );
}

fn bench_matmul(device: Device) {
    let sizes: &[i64] = if device.is_cuda() {
        &[2048, 8192]
    } else {
        &[512, 1024, 2048]
    };
    for &n in sizes {
        let (ms, gflops) = matmul(device, n, Duration::from_secs(2));
        emit(&format!("f32 {n}x{n}"), ms, &format!("{gflops:.1} GFLOP/s"));
    }
}

/// A small convolutional denoiser-shaped network; `xtask/bench/train_step.py` builds the same
/// layers with the same shapes, so the two time identical work.
fn conv_net(p: &nn::Path) -> nn::SequentialT {
    let conv = |name: &str, i, o, stride| {
        nn::conv2d(
            p / name,
            i,
            o,
            3,
            nn::ConvConfig {
                stride,
                padding: 1,
                ..Default::default()
            },
        )
    };
    nn::seq_t()
        .add(conv("conv1", 1, 32, 1))
        .add(nn::group_norm(p / "norm1", 8, 32, Default::default()))
        .add_fn(|x| x.silu())
        .add(conv("conv2", 32, 64, 2))
        .add(nn::group_norm(p / "norm2", 8, 64, Default::default()))
        .add_fn(|x| x.silu())
        .add(conv("conv3", 64, 64, 1))
        .add(nn::group_norm(p / "norm3", 8, 64, Default::default()))
        .add_fn(|x| x.silu())
        .add_fn(|x| x.upsample_nearest2d([28, 28], None, None))
        .add(conv("conv4", 64, 32, 1))
        .add_fn(|x| x.silu())
        .add(conv("conv5", 32, 1, 1))
}

fn bench_train_step(device: Device) -> Result<()> {
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net = conv_net(&vs.root());
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let batch = 64;
    let x = Tensor::randn([batch, 1, 28, 28], (Kind::Float, device));
    let target = Tensor::randn([batch, 1, 28, 28], (Kind::Float, device));
    let ms = time_ms(device, 3, 10, Duration::from_secs(3), || {
        opt.zero_grad();
        let loss = (net.forward_t(&x, true) - &target)
            .square()
            .mean(Kind::Float);
        loss.backward();
        opt.step(1e-4);
    });
    emit(
        "conv net b64 28x28 fwd+bwd+adamw",
        ms,
        &format!("{:.1} steps/s", 1e3 / ms),
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    diffuse_cli::report(run())
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut name = None;
    let mut device = Device::Cpu;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => {
                let value = args.next().context("--device needs a value")?;
                device = diffuse_tensor::parse_device(&value).context("--device")?;
            }
            other if !other.starts_with('-') && name.is_none() => name = Some(other.to_owned()),
            other => {
                bail!("unexpected argument '{other}' (usage: diffuse-bench NAME [--device DEV])")
            }
        }
    }
    match name.as_deref() {
        Some("matmul") => bench_matmul(device),
        Some("train_step") => bench_train_step(device)?,
        Some(other) => bail!("unknown benchmark '{other}': expected matmul or train_step"),
        None => bail!("usage: diffuse-bench NAME [--device DEV] (NAME: matmul, train_step)"),
    }
    Ok(())
}
