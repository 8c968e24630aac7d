"""Golden values for diffuse-core's schedules, from diffusers 0.42.1.

Run from the repository root (after `cargo xtask bench` has made target/pyref, or with diffusers importable):
    PYTHONPATH=target/pyref:target/libtorch python3 crates/core/tests/golden/make_golden.py
Writes crates/core/tests/golden/schedules.json; `cargo test` only reads it.
"""
import json
import os

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

out = {"diffusers": diffusers.__version__, "torch": torch.__version__}

BETAS = [
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "rescale_betas_zero_snr": True},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 50},
    {"beta_schedule": "linear", "num_train_timesteps": 7, "trained_betas": [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]},
]
out["betas"] = []
for cfg in BETAS:
    s = DDPMScheduler(**cfg)
    case = {"config": cfg, "betas": s.betas.double().tolist(), "alphas_cumprod": s.alphas_cumprod.double().tolist()}
    if cfg.get("rescale_betas_zero_snr"):
        # diffusers' own rescaling run in float64: the f32 result above loses ~1e-6 to cancellation
        # near zero terminal SNR, this one pins the formula itself.
        lo, hi = cfg["beta_start"], cfg["beta_end"]
        if cfg["beta_schedule"] == "linear":
            b64 = torch.linspace(lo, hi, 1000, dtype=torch.float64)
        else:
            b64 = torch.linspace(lo**0.5, hi**0.5, 1000, dtype=torch.float64) ** 2
        case["betas_f64"] = rescale_zero_terminal_snr(b64).tolist()
    out["betas"].append(case)

out["timesteps"] = []
for cls, offset in [(DDPMScheduler, 0), (DDIMScheduler, 1)]:
    for spacing in ["linspace", "leading", "trailing"]:
        for n in [1, 7, 10, 50, 1000]:
            s = cls(timestep_spacing=spacing, steps_offset=offset)
            s.set_timesteps(n)
            out["timesteps"].append(
                {"scheduler": cls.__name__, "spacing": spacing, "steps_offset": offset, "n": n,
                 "timesteps": s.timesteps.tolist()}
            )

out["sigmas"] = []
for kind in ["default", "karras", "exponential"]:
    for spacing in ["linspace", "leading", "trailing"]:
        for n in [7, 10, 50]:
            s = EulerDiscreteScheduler(
                timestep_spacing=spacing, use_karras_sigmas=kind == "karras",
                use_exponential_sigmas=kind == "exponential", steps_offset=1 if spacing == "leading" else 0,
            )
            s.set_timesteps(n)
            out["sigmas"].append(
                {"kind": kind, "spacing": spacing, "n": n, "steps_offset": 1 if spacing == "leading" else 0,
                 "sigmas": s.sigmas.double().tolist(), "timesteps": s.timesteps.double().tolist()}
            )

path = os.path.join(os.path.dirname(__file__), "schedules.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, os.path.getsize(path), "bytes")
