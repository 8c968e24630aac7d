"""Golden sampling loops for the Euler-family samplers (Euler, Euler ancestral, Heun), from
diffusers 0.42.1, with the dummy model of make_sampler_golden.py. Each case records diffusers'
own timesteps and sigmas too, so the tests can check the step maths on identical schedules.
    PYTHONPATH=target/pyref:target/libtorch python3 crates/core/tests/golden/make_sigma_golden.py
"""
import json
import os

import diffusers
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

torch.set_num_threads(1)
SHAPE = (2, 3, 4, 4)


def dummy_model(x, t):
    tt = torch.full((x.shape[0], 1, 1, 1), float(t))
    return 0.3 * torch.sin(x * 1.7 + tt / 250.0) + 0.1 * x


SCALED = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
CASES = [
    ("euler", {}, 10, {}),
    ("euler", {"use_karras_sigmas": True}, 10, {}),
    ("euler", {"use_exponential_sigmas": True}, 12, {}),
    ("euler", {"timestep_spacing": "leading", "steps_offset": 1}, 10, {}),
    ("euler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 7, {}),
    ("euler", {"final_sigmas_type": "sigma_min", **SCALED}, 10, {}),
    ("euler", {"prediction_type": "sample"}, 10, {}),
    ("euler", {}, 10, {"s_churn": 0.8, "s_tmin": 0.05, "s_tmax": 50.0}),
    ("euler_ancestral", {}, 10, {}),
    ("euler_ancestral", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 20, {}),
    ("euler_ancestral", {"timestep_spacing": "leading", "steps_offset": 1, **SCALED}, 10, {}),
    ("heun", {}, 10, {}),
    ("heun", {"use_karras_sigmas": True}, 10, {}),
    ("heun", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 7, {}),
    ("heun", {"clip_sample": True, "prediction_type": "sample"}, 10, {}),
    # Zero terminal SNR: diffusers clamps alpha_bar_T to 2^-24 so that sigma_max is finite.
    ("euler", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 8, {}),
    ("euler_ancestral", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction", **SCALED}, 8, {}),
]
CLASSES = {"euler": EulerDiscreteScheduler, "euler_ancestral": EulerAncestralDiscreteScheduler, "heun": HeunDiscreteScheduler}

out = {"diffusers": diffusers.__version__, "torch": torch.__version__, "shape": SHAPE, "cases": []}
for seed, (name, config, n, step_kwargs) in enumerate(CASES):
    s = CLASSES[name](**config)
    s.set_timesteps(n)
    torch.manual_seed(100 + seed)
    x = torch.randn(SHAPE) * s.init_noise_sigma
    x_init = x.clone()
    samples = []
    for t in s.timesteps:
        o = dummy_model(s.scale_model_input(x, t), t)
        x = s.step(o, t, x, **step_kwargs).prev_sample
        samples.append(x.flatten().tolist())
    out["cases"].append({
        "sampler": name, "config": config, "n": n, "step_kwargs": step_kwargs, "seed": 100 + seed,
        "timesteps": s.timesteps.double().tolist(), "sigmas": s.sigmas.double().tolist(),
        "init_noise_sigma": float(s.init_noise_sigma), "x_init": x_init.flatten().tolist(), "samples": samples,
    })

path = os.path.join(os.path.dirname(__file__), "sigma_samplers.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, os.path.getsize(path), "bytes")
