"""PyTorch side of the `audio` benchmark: diffuse's audio networks in plain PyTorch (`build_network`
of crates/audio/tests/golden/make_network_golden.py, same parameter names, parity-tested), built
from the config.json files that diffuse-bench writes to target/bench-cache (DiffWave's and the
UNet1d's defaults), in eager mode. The training step (epsilon MSE at uniform random integer
timesteps, AdamW at 2e-4) and the two samplers are written here plainly, step for step as in
crates/core (losses.rs, samplers/diffwave.rs, samplers/ddpm.rs): DDPM linear betas 1e-4..0.02
over T = 200 in float64; DiffWave's fast sampler (Kong et al. 2021, appendix B) with
beta^infer = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5] run as its own ancestral chain, the network asked
at the aligned fractional timesteps, no clamping of the chain; DDPM ancestral sampling with
fixed-small variance and x0 clipped to [-1, 1] on 50 leading-spaced timesteps and on all 200.
Then the bundled drums model's network (the audio recipe) sampled by guided DDIM and trained at
its batch (`drums_recipe_cases`). Peak memory as in image.py."""
import json
import math
import os
import sys

import torch

from common import args, emit, memory_note, reset_peak_rss, time_ms

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "crates", "audio", "tests", "golden"))
from make_network_golden import build_network, forward_any_length  # noqa: E402

T = 200
BETAS = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
ALPHAS_CUMPROD = torch.cumprod(1.0 - BETAS, 0)
FAST_BETAS = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
RATE = 16000


def load_config(name):
    with open(os.path.join(ROOT, "target", "bench-cache", name)) as f:
        return json.load(f)


def train_step_case(device, config, name=None, batch=8, length=16384):
    torch.manual_seed(0)
    model = build_network(config).to(device).train()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    x0 = torch.randn(batch, 1, length, device=device) * 0.3
    abar = ALPHAS_CUMPROD.to(device)

    def step():
        opt.zero_grad(set_to_none=False)
        t = torch.randint(0, T, (batch,), device=device)
        noise = torch.randn_like(x0)
        a = abar[t].sqrt().float().view(-1, 1, 1)
        s = (1.0 - abar[t]).sqrt().float().view(-1, 1, 1)
        x_t = a * x0 + s * noise
        loss = (forward_any_length(model, x_t, t.float()) - noise).square().mean()
        loss.backward()
        opt.step()

    reset_peak_rss()
    ms = time_ms(device, 1, 3, 5.0, step)
    audio_s = batch * length / RATE
    emit(f"{name or config['type']} b{batch}x{length} train step (fwd+bwd+adamw)", ms,
         f"{params:.2f}M parameters, {audio_s * 1e3 / ms:.4f} s of 16 kHz audio per s{memory_note()}")


def aligned_timesteps(betas):
    """DiffWave's T^align: the real training timestep whose interpolated sqrt(alpha_bar) equals
    sqrt(alpha_bar_infer[s]) (lmnt-com/diffwave inference.py)."""
    talpha_cum = ALPHAS_CUMPROD.tolist()
    alpha_cum = []
    prod = 1.0
    for b in betas:
        prod *= 1.0 - b
        alpha_cum.append(prod)
    steps = []
    for s, a in enumerate(alpha_cum):
        if abs(a - talpha_cum[0]) < 1e-12 and a > talpha_cum[0]:
            steps.append(0.0)
            continue
        for t in range(T - 1):
            if talpha_cum[t + 1] <= a <= talpha_cum[t]:
                hi, lo = talpha_cum[t] ** 0.5, talpha_cum[t + 1] ** 0.5
                steps.append(t + (hi - a ** 0.5) / (hi - lo))
                break
        else:
            raise ValueError(f"inference step {s} (alpha_bar {a}) is outside the training schedule")
    return steps, alpha_cum


@torch.no_grad()
def diffwave_fast(model, x):
    """Kong et al. 2021, appendix B, algorithm 2, with the network at the aligned timesteps."""
    steps, alpha_cum = aligned_timesteps(FAST_BETAS)
    b = x.shape[0]
    for s in range(len(FAST_BETAS) - 1, -1, -1):
        beta, abar = FAST_BETAS[s], alpha_cum[s]
        t = torch.full((b,), steps[s], dtype=torch.float32, device=x.device)
        eps = forward_any_length(model, x, t)
        x = (x - eps * (beta / math.sqrt(1.0 - abar))) * (1.0 / math.sqrt(1.0 - beta))
        if s > 0:
            sigma = math.sqrt((1.0 - alpha_cum[s - 1]) / (1.0 - abar) * beta)
            x = x + torch.randn_like(x) * sigma
    return x


@torch.no_grad()
def ddpm(model, x, steps):
    """DDPM ancestral sampling (Ho et al. 2020) on `steps` leading-spaced timesteps: fixed-small
    variance, x0 clipped to [-1, 1] (diffusers' DDPMScheduler defaults)."""
    ratio = T // steps
    timesteps = [k * ratio for k in range(steps - 1, -1, -1)]
    abar = ALPHAS_CUMPROD.tolist()
    b = x.shape[0]
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        abar_t = abar[t]
        abar_s = abar[prev] if prev is not None else 1.0
        eps = forward_any_length(model, x, torch.full((b,), float(t), device=x.device))
        x0 = ((x - eps * math.sqrt(1.0 - abar_t)) / math.sqrt(abar_t)).clamp(-1.0, 1.0)
        beta = 1.0 - abar_t / abar_s
        coef_x0 = math.sqrt(abar_s) * beta / (1.0 - abar_t)
        coef_xt = math.sqrt(abar_t / abar_s) * (1.0 - abar_s) / (1.0 - abar_t)
        x = x0 * coef_x0 + x * coef_xt
        if t > 0:
            var = max((1.0 - abar_s) / (1.0 - abar_t) * beta, 1e-20)
            x = x + torch.randn_like(x) * math.sqrt(var)
    return x


def zero_snr_alphas_cumprod(betas):
    """Lin et al. 2023, algorithm 1 (diffusers' rescale_zero_terminal_snr): shift and scale
    sqrt(alpha_bar) so the last step is pure noise and the first is unchanged."""
    sqrt_abar = torch.cumprod(1.0 - betas, 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    return sqrt_abar.square()


@torch.no_grad()
def ddim_guided(model, x, steps, label, null, scale, abar, clip):
    """DDIM (Song et al. 2021, eta 0) on `steps` trailing timesteps of a v-prediction model, x0
    clipped to +-clip, the final step to alpha_bar 1 (diffusers' DDIMScheduler with
    set_alpha_to_one), each step guided (Ho & Salimans 2022) by the null class's output."""
    n = len(abar)
    ratio = n / steps
    timesteps = [round(n - k * ratio) - 1 for k in range(steps)]
    b = x.shape[0]
    cond = torch.full((b,), label, dtype=torch.int64, device=x.device)
    uncond = torch.full((b,), null, dtype=torch.int64, device=x.device)
    for i, t in enumerate(timesteps):
        tt = torch.full((b,), float(t), device=x.device)
        v_c = forward_any_length(model, x, tt, cond)
        v_u = forward_any_length(model, x, tt, uncond)
        v = v_u + (v_c - v_u) * scale
        a, s = math.sqrt(abar[t]), math.sqrt(1.0 - abar[t])
        x0 = (x * a - v * s).clamp(-clip, clip)
        eps = v * a + x * s
        abar_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        x = x0 * math.sqrt(abar_prev) + eps * math.sqrt(max(1.0 - abar_prev, 0.0))
    return x


def drums_recipe_cases(device):
    """The bundled drums model's network (data/models/drums/config.json, weights left random:
    they do not change the cost) sampled as the library's bench case does: 5 clips of 0.512 s,
    DDIM 50 steps, guidance 3 for class 0; then its training step at batch 16 x 8192."""
    model_dir = os.path.join(ROOT, "data", "models", "drums")
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(model_dir, "scheduler_config.json")) as f:
        scheduler = json.load(f)
    with open(os.path.join(model_dir, "diffuse.json")) as f:
        info = json.load(f)
    betas = torch.linspace(scheduler["beta_start"], scheduler["beta_end"],
                           scheduler["num_train_timesteps"], dtype=torch.float64)
    abar = zero_snr_alphas_cumprod(betas).tolist()
    torch.manual_seed(0)
    model = build_network(config).to(device).eval()
    frames = info["clip_frames"]
    null = config["num_class_embeds"] - 1

    def run():
        torch.manual_seed(1)
        x = torch.randn(5, 1, frames).to(device)
        ddim_guided(model, x, 50, 0, null, 3.0, abar, scheduler["clip_sample_range"])

    reset_peak_rss()
    ms = time_ms(device, 1, 3, 0.0, run)
    audio_s = 5 * frames / RATE
    emit("drums recipe sample 5 x 0.512 s, ddim 50 steps, guidance 3", ms,
         f"100 model calls at batch 5, real-time factor {audio_s * 1e3 / ms:.4f} (s of audio per s)"
         f"{memory_note()}")
    del model
    train_step_case(device, config, "drums recipe", 16, 8192)


def main():
    a = args()
    device = torch.device(a.device)
    diffwave_config = load_config("audio_diffwave_config.json")
    unet_config = load_config("audio_unet1d_config.json")

    torch.manual_seed(0)
    model = build_network(diffwave_config).to(device).eval()
    length = RATE
    cases = [
        ("diffwave-fast", len(FAST_BETAS), 1, 3, diffwave_fast),
        ("ddpm", 50, 0, 1, lambda m, x: ddpm(m, x, 50)),
        ("ddpm", 200, 0, 1, lambda m, x: ddpm(m, x, 200)),
    ]
    for name, steps, warmup, runs, sampler in cases:
        def run():
            torch.manual_seed(1)
            x = torch.randn(1, 1, length, device=device)
            sampler(model, x)

        reset_peak_rss()
        ms = time_ms(device, warmup, runs, 0.0, run)
        emit(f"diffwave sample 1 s at 16 kHz, {name} {steps} steps", ms,
             f"{steps} model calls, real-time factor {1e3 / ms:.4f} (s of audio per s){memory_note()}")

    del model
    drums_recipe_cases(device)
    train_step_case(device, unet_config)
    train_step_case(device, diffwave_config)


if __name__ == "__main__":
    main()
