"""Golden sampling loops for diffuse-core's DPM-Solver multistep sampler, from diffusers 0.42.1.

The dummy model of make_sampler_golden.py (no weights, the same formula in tests/it/dpm_solver.rs)
is run through `DPMSolverMultistepScheduler` from seeded noise; every intermediate sample, the
timesteps and the sigmas are recorded. Each case is also run through diffusers' code made f64
(see `_F64`), to measure how much of any difference is diffusers' own f32 arithmetic.
    PYTHONPATH=target/pyref:target/libtorch python3 crates/core/tests/golden/make_dpm_golden.py
Writes crates/core/tests/golden/dpm_solver.json; `cargo test` only reads it.
"""
import json
import os

import diffusers
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm
import numpy as np
import torch

torch.set_num_threads(1)
SHAPE = (2, 3, 4, 4)


def dummy_model(x, t, learned):
    # t as a float: the Rust loop hands the model the sampler's timestep as an f32 tensor.
    tt = torch.full((x.shape[0], 1, 1, 1), float(t))
    mean = 0.3 * torch.sin(x * 1.7 + tt / 250.0) + 0.1 * x
    if not learned:
        return mean
    extra = torch.tanh(x * 0.8 - tt / 1000.0)
    return torch.cat([mean, extra], dim=1)


SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
CASES = [
    ({}, 10),
    ({}, 25),
    ({"use_karras_sigmas": True}, 10),
    ({"use_karras_sigmas": True}, 20),
    ({"solver_order": 3}, 10),
    ({"solver_order": 3}, 20),
    ({"solver_order": 1}, 10),
    ({"solver_type": "heun"}, 10),
    ({"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 10),
    ({"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1}, 10),
    ({"use_exponential_sigmas": True}, 10),
    ({"use_lu_lambdas": True}, 10),
    ({"algorithm_type": "sde-dpmsolver++"}, 10),
    ({"algorithm_type": "sde-dpmsolver++"}, 20),
    ({"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "use_karras_sigmas": True}, 15),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, 20),
    ({"thresholding": True, "sample_max_value": 1.5}, 10),
    ({}, 1),
    ({}, 7),
    ({"final_sigmas_type": "sigma_min"}, 10),
    ({"final_sigmas_type": "sigma_min", "euler_at_final": True}, 20),
    ({**SD}, 10),
    ({**SD, "use_karras_sigmas": True, "solver_order": 3}, 25),
    ({**SD, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 10),
    ({"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}, 10),
    # (Not cosine with Karras or exponential sigmas: they repeat timestep 998, and diffusers' first
    # step then starts at the second copy and runs off the end of its sigmas.)
    ({"variance_type": "learned_range"}, 10),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, 10),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun", "solver_order": 3}, 20),
    ({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}, 10),
    ({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"}, 10),
]


class _F64:
    """A stand-in for a module whose `float32` is `float64`: patched into diffusers' scheduler module,
    it runs diffusers' own DPM-Solver code with an f64 schedule and f64 arithmetic."""

    def __init__(self, module, f64):
        self._module, self._f64 = module, f64

    def __getattr__(self, name):
        return self._f64 if name == "float32" else getattr(self._module, name)


def run(config, n, seed, f64):
    saved = (dpm.np, dpm.torch, dpm.randn_tensor)
    if f64:
        dpm.np, dpm.torch = _F64(np, np.float64), _F64(torch, torch.float64)
        # The SDE noise is still drawn in f32 from the same stream, then widened.
        dpm.randn_tensor = lambda *a, **k: saved[2](*a, **{**k, "dtype": torch.float32}).double()
    try:
        s = dpm.DPMSolverMultistepScheduler(**config)
        s.set_timesteps(n)
        learned = config.get("variance_type") in ("learned", "learned_range")
        torch.manual_seed(seed)
        x = torch.randn(SHAPE)
        x = x * s.init_noise_sigma
        x_init = x.clone()
        if f64:
            x = x.double()
        samples = []
        for t in s.timesteps:
            model_input = s.scale_model_input(x, t)
            o = dummy_model(model_input, t, learned)
            x = s.step(o, t, x).prev_sample
            samples.append(x.flatten().tolist())
        return s, x_init, samples
    finally:
        dpm.np, dpm.torch, dpm.randn_tensor = saved


def gap(a, b):
    """Largest |a - b| / max(1, |b|) over every step."""
    return max(abs(u - v) / max(1.0, abs(v)) for sa, sb in zip(a, b) for u, v in zip(sa, sb))


out = {"diffusers": diffusers.__version__, "torch": torch.__version__, "shape": SHAPE, "cases": []}
for seed, (config, n) in enumerate(CASES):
    s, x_init, samples = run(config, n, seed, f64=False)
    s64, _, samples64 = run(config, n, seed, f64=True)
    assert s64.sigmas.dtype == torch.float64 and list(s64.timesteps) == list(s.timesteps)
    case = {
        "config": config, "n": n, "seed": seed,
        "timesteps": [float(t) for t in s.timesteps], "sigmas": [float(v) for v in s.sigmas],
        "x_init": x_init.flatten().tolist(), "samples": samples,
        # How far diffusers' own f32 run is from the same code in f64.
        "f32_gap": gap(samples, samples64),
    }
    if case["f32_gap"] > 5e-6:
        # Where that gap is comparable to 1e-5 the f64 run is kept: diffuse in f64 must match it.
        case["samples_f64"] = samples64
    print(config, n, "diffusers f32 vs f64: %.1e" % case["f32_gap"])
    out["cases"].append(case)

path = os.path.join(os.path.dirname(__file__), "dpm_solver.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, os.path.getsize(path), "bytes")
