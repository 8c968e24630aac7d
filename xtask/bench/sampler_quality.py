"""diffusers side of the `sampler_quality` benchmark: the MLP that diffuse-bench trained and saved to
target/bench-cache, sampled by diffusers' schedulers from the same seeded noise, scored on the same
held-out data with the same metrics (see crates/core/src/toy.rs)."""
import math
import pathlib
import time

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, HeunDiscreteScheduler
from safetensors.torch import load_file
from torch import nn

from common import args, emit

args()
torch.set_grad_enabled(False)
weights = load_file(str(pathlib.Path(__file__).resolve().parents[2] / "target" / "bench-cache" / "toy_mixture_mlp.safetensors"))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        dims = [18, 128, 128, 128, 2]
        for i in range(4):
            setattr(self, f"fc{i}", nn.Linear(dims[i], dims[i + 1]))

    def forward(self, x, t):
        freqs = torch.exp(torch.arange(8, dtype=torch.float32) * (-math.log(1000.0) / 8.0))
        angles = t.float()[:, None] * freqs[None]
        h = torch.cat([x, torch.sin(angles), torch.cos(angles)], 1)
        for i in range(4):
            h = getattr(self, f"fc{i}")(h)
            if i < 3:
                h = torch.nn.functional.silu(h)
        return h


model = Mlp()
model.load_state_dict(weights)
centers = torch.stack([torch.cos(torch.arange(8.0) * 2 * math.pi / 8), torch.sin(torch.arange(8.0) * 2 * math.pi / 8)], 1) * 1.5
torch.manual_seed(3)
reference = centers[torch.randint(8, (2000,))] + torch.randn(2000, 2) * 0.1


def mode_mass_error(samples):
    idx = torch.cdist(samples, centers).argmin(1)
    masses = torch.bincount(idx, minlength=8).float() / samples.shape[0]
    return (masses * 8 - 1).abs().max().item()


def mmd2(a, b, bw=0.2):
    k = lambda x, y: torch.exp(torch.cdist(x, y).square() / (-2 * bw * bw))
    n, m = a.shape[0], b.shape[0]
    kaa, kbb = k(a, a), k(b, b)
    return ((kaa.sum() - n) / (n * (n - 1)) + (kbb.sum() - m) / (m * (m - 1)) - 2 * k(a, b).mean()).item()


cases = [
    ("dpm++2m", 10, lambda: DPMSolverMultistepScheduler()),
    ("dpm++2m", 20, lambda: DPMSolverMultistepScheduler()),
    ("heun", 10, lambda: HeunDiscreteScheduler(beta_start=0.0001, beta_end=0.02)),
    ("heun", 20, lambda: HeunDiscreteScheduler(beta_start=0.0001, beta_end=0.02)),
    ("ddpm", 1000, lambda: DDPMScheduler(clip_sample=False)),
]
def sci(v):
    """Rust's {:.2e} spelling (3.52e-2), so both sides' descriptions compare equal."""
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


for name, steps, make in cases:
    # One untimed run, then the fastest of 3 identical seeded runs, as the diffuse side.
    ms = float("inf")
    for run in range(4):
        s = make()
        s.set_timesteps(steps)
        torch.manual_seed(2)
        x = torch.randn(2000, 2) * s.init_noise_sigma
        start = time.perf_counter()
        for t in s.timesteps:
            out = model(s.scale_model_input(x, t), torch.full((2000,), float(t)))
            x = s.step(out, t, x).prev_sample
        if run > 0:
            ms = min(ms, (time.perf_counter() - start) * 1e3)
    emit(f"{name} {steps} steps", ms,
         f"{len(s.timesteps)} evaluations, mode-mass error {100 * mode_mass_error(x):.1f}%, MMD^2 {sci(mmd2(x, reference))}")
