"""Golden values for diffuse-tensor's tests, from the reference implementations.

Run from the repository root after `cargo xtask setup` (torch) and with diffusers importable:
    PYTHONPATH=target/pyref:target/libtorch python3 crates/tensor/tests/golden/make_golden.py
Writes crates/tensor/tests/golden/golden.json. `cargo test` only reads that file.
"""
import json
import math
import os

import torch
import diffusers
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

torch.set_num_threads(1)
out = {"torch": torch.__version__, "diffusers": diffusers.__version__}

# 1. Seeded draws on the CPU generator.
torch.manual_seed(0)
a = torch.randn(8)
torch.manual_seed(42)
b = torch.randn(2, 3)
c = torch.rand(4)
torch.manual_seed(2**40 + 7)
d = torch.randn(5, dtype=torch.float64)
out["seeds"] = [
    {"seed": 0, "op": "randn", "shape": [8], "values": a.tolist()},
    {"seed": 42, "op": "randn", "shape": [2, 3], "values": b.flatten().tolist()},
    {"seed": 42, "op": "rand_after_randn", "shape": [4], "values": c.tolist()},
    {"seed": 2**40 + 7, "op": "randn_f64", "shape": [5], "values": d.tolist()},
]

# 2. AdamW on the CPU (PyTorch's default single-tensor path), fixed gradients.
p0 = torch.linspace(-1.0, 1.0, 12, dtype=torch.float32).reshape(3, 4)
grads = [torch.sin(p0 * (3.0 + k) + k).to(torch.float32) * (0.1 + k) for k in range(6)]
lrs = [1e-2, 2e-2, 3e-2, 3e-2, 1e-2, 5e-3]
param = torch.nn.Parameter(p0.clone())
opt = torch.optim.AdamW([param], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
trajectory = []
for g, lr in zip(grads, lrs):
    for group in opt.param_groups:
        group["lr"] = lr
    param.grad = g.clone()
    opt.step()
    trajectory.append(param.detach().flatten().tolist())
st = opt.state[param]
out["adamw"] = {
    "shape": [3, 4],
    "p0": p0.flatten().tolist(),
    "grads": [g.flatten().tolist() for g in grads],
    "lrs": lrs,
    "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1,
    "trajectory": trajectory,
    "exp_avg": st["exp_avg"].flatten().tolist(),
    "exp_avg_sq": st["exp_avg_sq"].flatten().tolist(),
}

# 3. diffusers' EMAModel: decay schedules and the averaged values.
def ema_case(name, **kw):
    w = torch.nn.Parameter(p0.clone())
    ema = EMAModel([w], **kw)
    decays, values = [], []
    for k in range(12):
        with torch.no_grad():
            w.copy_(p0 * math.cos(k) + 0.25 * k)
        ema.step([w])
        decays.append(ema.cur_decay_value)
        values.append(ema.shadow_params[0].flatten().tolist())
    return {"name": name, "kwargs": kw, "decays": decays, "shadow": values}

out["ema"] = {
    "p0": p0.flatten().tolist(),
    "cases": [
        ema_case("default"),
        ema_case("warmup", decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75),
        ema_case("update_after", decay=0.5, update_after_step=3, min_decay=0.1),
    ],
}

# 4. Learning-rate schedules (multipliers of the base rate for optimiser steps 0..N-1).
def lr_case(name, warmup, total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    factors = []
    for _ in range(total + 2):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return {"name": name, "warmup": warmup, "total": total, "factors": factors}

out["lr"] = [lr_case(n, 7, 40) for n in ["constant", "constant_with_warmup", "linear", "cosine"]]

# 5. Gradient clipping by global norm.
ps = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
gs = [torch.sin(torch.arange(12.0)).reshape(3, 4) * 2.0, torch.cos(torch.arange(5.0)) * 3.0]
for p, g in zip(ps, gs):
    p.grad = g.clone()
total = torch.nn.utils.clip_grad_norm_(ps, max_norm=1.5)
out["clip"] = {
    "grads": [g.flatten().tolist() for g in gs],
    "shapes": [[3, 4], [5]],
    "max_norm": 1.5,
    "total_norm": total.item(),
    "clipped": [p.grad.flatten().tolist() for p in ps],
}

path = os.path.join(os.path.dirname(__file__), "golden.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print("wrote", path)
