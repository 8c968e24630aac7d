"""PyTorch/diffusers side of the `poisson` benchmark: the Gaussian half only (count diffusion has no
PyTorch peer in diffusers; its row shows diffuse alone). diffusers' UNet2DModel built from the
config.json diffuse-bench writes to target/bench-cache (the bundled MNIST architecture), trained on
MNIST for the same wall-clock budget (DIFFUSE_BENCH_SECONDS, default 300 s) with the same recipe:
batch 64 from seeded epoch shuffles, pixels scaled to [-1, 1], DDPMScheduler's linear betas and
add_noise, epsilon MSE, AdamW lr 5e-4 (weight decay 0.01) after 100 linear warm-up steps (the first
step's rate is 0), gradient clipping at 1, no EMA. Then 500 samples with DDIMScheduler in 50 steps,
250 per batch, timed. The MNIST IDX files come from data/datasets/mnist (DIFFUSE_DATA_DIR
overrides data/datasets)."""
import json
import math
import os
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from common import args, emit, sync

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
BATCH, SEED, NUM_SAMPLES, SAMPLE_STEPS, LR, WARMUP = 64, 0, 500, 50, 5e-4, 100


def budget_seconds():
    v = os.environ.get("DIFFUSE_BENCH_SECONDS")
    if v is None:
        return 300.0
    s = float(v.strip())
    if not (s > 0 and math.isfinite(s)):
        raise SystemExit(f"DIFFUSE_BENCH_SECONDS={v!r}: expected seconds > 0")
    return s


def rust_display(s):
    """How Rust's `{}` prints an f64 (300.0 -> "300"), so the case names match."""
    return str(int(s)) if s == int(s) else repr(s)


def read_idx_images(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, n, h, w = np.frombuffer(data[:16], dtype=">u4")
    if magic != 2051:
        raise SystemExit(f"{path}: not an IDX image file")
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, 1, h, w)


def main():
    a = args()
    device = torch.device(a.device)
    seconds = budget_seconds()
    base = os.environ.get("DIFFUSE_DATA_DIR") or os.path.join(ROOT, "data", "datasets")
    images = read_idx_images(os.path.join(base, "mnist", "train-images-idx3-ubyte"))
    train = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)
    with open(os.path.join(ROOT, "target", "bench-cache", "poisson_unet_config.json")) as f:
        config = json.load(f)

    torch.manual_seed(SEED)
    unet = UNet2DModel.from_config(config).to(device)
    unet.train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    order, pos = torch.randperm(len(train), generator=gen), 0
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if pos + BATCH > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        x0 = train[order[pos:pos + BATCH]].to(device)
        pos += BATCH
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (BATCH,), device=device)
        loss = (unet(scheduler.add_noise(x0, noise, t), t).sample - noise).square().mean()
        for g in opt.param_groups:
            g["lr"] = LR * min(1.0, steps / WARMUP)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        steps += 1
    sync(device)
    ms = (time.perf_counter() - start) * 1e3 / steps

    unet.eval()
    ddim = DDIMScheduler(num_train_timesteps=1000)
    torch.manual_seed(1)
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(NUM_SAMPLES // 250):
            ddim.set_timesteps(SAMPLE_STEPS, device=device)
            x = torch.randn(250, 1, 28, 28, device=device)
            for t in ddim.timesteps:
                x = ddim.step(unet(x, t).sample, t, x).prev_sample
    sync(device)
    sample_seconds = time.perf_counter() - started
    emit(f"Gaussian diffusion (epsilon, linear betas), {rust_display(seconds)} s of training", ms,
         f"{steps} steps; {NUM_SAMPLES} samples, ddim {SAMPLE_STEPS} steps, {sample_seconds:.1f} s = "
         f"{sample_seconds * 1e3 / NUM_SAMPLES:.1f} ms/image (no classifier-Fréchet or bits/dim on this side)")


main()
