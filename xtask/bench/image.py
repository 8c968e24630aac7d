"""PyTorch/diffusers side of the `image` benchmark: diffusers' UNet2DModel built from the config.json
that diffuse-bench writes to target/bench-cache (the bundled MNIST model's architecture), the same
batches, optimiser, 20-step DPM-Solver++ 2M loop and timing as crates/cli/src/bin/diffuse-bench.rs,
in eager mode as a diffusers user would run it. Peak memory is the process's peak resident set
between cases (reset by writing 5 to /proc/self/clear_refs, as the Rust side does)."""
import json
import os

import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DModel

from common import args, emit, memory_note, reset_peak_rss, time_ms

a = args()
device = torch.device(a.device)
cache = os.path.join(os.path.dirname(__file__), "..", "..", "target", "bench-cache")
with open(os.path.join(cache, "image_unet_config.json")) as f:
    config = json.load(f)


torch.manual_seed(0)
unet = UNet2DModel.from_config(config).to(device)
params = sum(p.numel() for p in unet.parameters()) / 1e6
opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
batch = 64
x = torch.randn(batch, 1, 28, 28, device=device)
noise = torch.randn(batch, 1, 28, 28, device=device)
t = torch.randint(0, 1000, (batch,), device=device)
unet.train()


def train_step():
    opt.zero_grad(set_to_none=False)
    loss = (unet(x, t).sample - noise).square().mean()
    loss.backward()
    opt.step()


reset_peak_rss()
ms = time_ms(device, 2, 5, 5.0, train_step)
emit("UNet2d 1x28x28 b64 train step (fwd+bwd+adamw)", ms,
     f"{params:.2f}M parameters, {batch * 1e3 / ms:.0f} images/s{memory_note()}")

unet.eval()
x16, t16 = x[:16], t[:16]
reset_peak_rss()
with torch.no_grad():
    ms = time_ms(device, 2, 10, 3.0, lambda: unet(x16, t16))
emit("UNet2d 1x28x28 b16 forward (no grad)", ms, f"{16e3 / ms:.0f} images/s{memory_note()}")


@torch.no_grad()
def sample_loop():
    s = DPMSolverMultistepScheduler()
    s.set_timesteps(20, device=device)
    sample = x16 * s.init_noise_sigma
    for step_t in s.timesteps:
        eps = unet(s.scale_model_input(sample, step_t), step_t).sample
        sample = s.step(eps, step_t, sample).prev_sample


reset_peak_rss()
ms = time_ms(device, 1, 3, 5.0, sample_loop)
emit("sample 16 images, dpm++2m 20 steps", ms, f"{16e3 / ms:.1f} images/s{memory_note()}")
