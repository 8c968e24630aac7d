"""PyTorch/diffusers side of the `sampler_step` benchmark: the same samplers, shapes and 50-step
loops with a precomputed model output as crates/cli/src/bin/diffuse-bench.rs, timed the same way,
beside one forward of diffusers' UNet2DModel built from the config diffuse-bench writes to
target/bench-cache (the bundled model's architecture at 3x32x32)."""
import json
import os

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, UNet2DModel)

from common import args, emit, time_ms

a = args()
device = torch.device(a.device)
shape = (16, 3, 32, 32)
steps = 50
torch.manual_seed(0)
x0 = torch.randn(shape, device=device)
model_output = torch.randn(shape, device=device) * 0.1
cache = os.path.join(os.path.dirname(__file__), "..", "..", "target", "bench-cache")
with open(os.path.join(cache, "sampler_step_unet_config.json")) as f:
    unet = UNet2DModel.from_config(json.load(f)).to(device).eval()
params = sum(p.numel() for p in unet.parameters())
t500 = torch.full((shape[0],), 500, device=device)
with torch.no_grad():
    forward_ms = time_ms(device, 2, 5, 3.0, lambda: unet(x0, t500))
emit("UNet2d forward (reference model), b16 3x32x32", forward_ms, f"{params / 1e6:.2f}M parameters")

samplers = [
    ("ddpm", DDPMScheduler), ("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler),
    ("euler_ancestral", EulerAncestralDiscreteScheduler), ("heun", HeunDiscreteScheduler),
    ("dpm++2m", DPMSolverMultistepScheduler),
]
for name, cls in samplers:
    def loop():
        s = cls()
        s.set_timesteps(steps, device=device)
        x = x0 * s.init_noise_sigma
        for t in s.timesteps:
            s.scale_model_input(x, t)
            x = s.step(model_output, t, x).prev_sample

    ms = time_ms(device, 1, 3, 2.0, loop)
    evaluations = 2 * steps - 1 if name == "heun" else steps
    emit(f"{name} step, b16 3x32x32", ms / evaluations,
         f"{evaluations} steps per loop; {100 * ms / evaluations / forward_ms:.2f}% of one reference forward")

