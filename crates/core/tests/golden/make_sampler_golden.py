"""Golden sampling loops for diffuse-core's samplers, from diffusers 0.42.1.

A fixed dummy model (no weights, the same formula in tests/it/samplers.rs) is run through each
scheduler for a few steps from seeded noise; every intermediate sample is recorded.
    PYTHONPATH=target/pyref:target/libtorch python3 crates/core/tests/golden/make_sampler_golden.py
"""
import json
import os

import diffusers
import torch
from diffusers import DDIMScheduler, DDPMScheduler

torch.set_num_threads(1)
SHAPE = (2, 3, 4, 4)


def dummy_model(x, t, out_channels):
    tt = torch.full((x.shape[0], 1, 1, 1), float(t))
    mean = 0.3 * torch.sin(x * 1.7 + tt / 250.0) + 0.1 * x
    if out_channels == x.shape[1]:
        return mean
    # Learned variance channels: in [-1, 1] (learned_range), positive and small (learned).
    extra = torch.tanh(x * 0.8 - tt / 1000.0)
    return torch.cat([mean, extra], dim=1)


CASES = [
    ("DDPMScheduler", {}, 10, {}),
    ("DDPMScheduler", {"variance_type": "fixed_large", "prediction_type": "v_prediction", "clip_sample": False,
                       "timestep_spacing": "trailing"}, 10, {}),
    ("DDPMScheduler", {"variance_type": "fixed_small_log", "prediction_type": "sample", "timestep_spacing": "linspace"}, 7, {}),
    ("DDPMScheduler", {"variance_type": "learned_range", "beta_schedule": "squaredcos_cap_v2"}, 10, {}),
    ("DDPMScheduler", {"thresholding": True, "sample_max_value": 1.5, "clip_sample": False}, 10, {}),
    ("DDPMScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                       "timestep_spacing": "trailing", "clip_sample": False}, 10, {}),
    ("DDIMScheduler", {}, 10, {}),
    ("DDIMScheduler", {"prediction_type": "v_prediction", "clip_sample": False}, 50, {}),
    ("DDIMScheduler", {"prediction_type": "sample", "timestep_spacing": "trailing"}, 10, {"eta": 1.0}),
    ("DDIMScheduler", {"set_alpha_to_one": False, "steps_offset": 1}, 10, {"eta": 0.5}),
    ("DDIMScheduler", {"thresholding": True, "clip_sample": False}, 20, {"use_clipped_model_output": True}),
]

out = {"diffusers": diffusers.__version__, "torch": torch.__version__, "shape": SHAPE, "cases": []}
for seed, (name, config, n, step_kwargs) in enumerate(CASES):
    cls = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}[name]
    s = cls(**config)
    s.set_timesteps(n)
    learned = config.get("variance_type") in ("learned", "learned_range")
    torch.manual_seed(seed)
    x = torch.randn(SHAPE)
    x_init = x.clone()
    samples = []
    for t in s.timesteps:
        o = dummy_model(x, int(t), SHAPE[1] * (2 if learned else 1))
        x = s.step(o, t, x, **step_kwargs).prev_sample
        samples.append(x.flatten().tolist())
    out["cases"].append({
        "scheduler": name, "config": config, "n": n, "step_kwargs": step_kwargs, "seed": seed,
        "timesteps": [float(t) for t in s.timesteps], "x_init": x_init.flatten().tolist(), "samples": samples,
    })

path = os.path.join(os.path.dirname(__file__), "samplers.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, os.path.getsize(path), "bytes")
