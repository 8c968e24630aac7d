"""PyTorch/diffusers side of the `sampler_step` benchmark: the same samplers, shapes and 50-step
loops with a precomputed model output as crates/cli/src/bin/diffuse-bench.rs, timed the same way."""
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler)
from torch import nn

from common import args, emit, time_ms

a = args()
device = torch.device(a.device)
shape = (16, 3, 32, 32)
steps = 50
torch.manual_seed(0)
x0 = torch.randn(shape, device=device)
model_output = torch.randn(shape, device=device) * 0.1
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
    emit(f"{name} step, b16 3x32x32", ms / evaluations, f"{evaluations} steps per loop")

layers = [nn.Conv2d(3, 128, 3, padding=1), nn.SiLU()]
for _ in range(7):
    layers += [nn.Conv2d(128, 128, 3, padding=1), nn.SiLU()]
layers.append(nn.Conv2d(128, 3, 3, padding=1))
net = nn.Sequential(*layers).to(device)
params = sum(p.numel() for p in net.parameters())
with torch.no_grad():
    ms = time_ms(device, 1, 3, 3.0, lambda: net(x0))
emit("conv net forward (reference model), b16 3x32x32", ms, f"{params / 1e6:.2f}M parameters")
