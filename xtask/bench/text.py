"""PyTorch side of the `text` benchmark: diffuse's text transformer in plain PyTorch (the class
`TextTransformer` of crates/text/tests/golden/make_transformer_golden.py, same parameter names,
parity-tested), built from the config.json that diffuse-bench writes to target/bench-cache (the
bundled model's architecture, 84 data tokens plus [MASK]), in eager mode. The MDLM loss and the
cached ancestral sampler are written here in plain torch, step for step as in
crates/core/src/categorical/mdlm.rs (log-linear schedule, eps 1e-3; SUBS; f64 inverse-CDF
draws, one uniform per position every step), so both sides do the same work; with the same seed
and the untrained model (zero-initialised head: uniform predictions) they make the same draws and
the same number of model calls. Peak memory as in image.py.

Importable: text_quality.py reuses `TextTransformer`, `mdlm_loss` and the MDLM constants."""
import json
import os
import sys

import torch
import torch.nn.functional as F

from common import args, emit, memory_note, reset_peak_rss, time_ms

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "crates", "text", "tests", "golden"))
from make_transformer_golden import TextTransformer  # noqa: E402

# MDLM defaults (MdlmConfig::new): log-linear alpha_t = 1 - (1 - EPS) t, times on [EPS, 1].
EPS = 1e-3
SAMPLING_EPS = 1e-3


def antithetic_times(n, group, device_u=None):
    """n times in [SAMPLING_EPS, 1]: uniforms stratified over groups of `group` (Mdlm::times_from_uniforms)."""
    u = torch.rand(n, dtype=torch.float64) if device_u is None else device_u
    i = torch.arange(n, dtype=torch.float64)
    u = (u / group + torch.remainder(i, group) / group) % 1.0
    return (1.0 - SAMPLING_EPS) * u + SAMPLING_EPS


def subs_log_probs(logits, x_t, mask_id):
    """log p~(x_0 | x_t): -inf on [MASK], carry-over on unmasked positions (SUBS)."""
    k = logits.shape[-1]
    forbid = torch.zeros(k, dtype=logits.dtype, device=logits.device)
    forbid[mask_id] = float("-inf")
    lp = (logits + forbid).log_softmax(-1)
    copy = F.one_hot(x_t, k).to(logits.dtype).log()
    return torch.where((x_t == mask_id).unsqueeze(-1), lp, copy)


def mdlm_per_sequence(model, x0, t, mask_id, dtype=torch.float32):
    """Weighted cross-entropy per sequence [B] (nats, summed over positions) at times t [B] (f64)."""
    device = x0.device
    p_mask = ((1.0 - EPS) * t).to(device)
    masked = torch.rand(x0.shape, dtype=torch.float64, device=device) < p_mask.unsqueeze(1)
    x_t = torch.where(masked, torch.full_like(x0, mask_id), x0)
    logits = model(x_t).to(dtype)
    log_p = subs_log_probs(logits, x_t, mask_id)
    nll = -log_p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    # ELBO weight -alpha'_t / (1 - alpha_t) = 1 / t for the log-linear schedule.
    w = ((1.0 - EPS) / ((1.0 - EPS) * t)).to(dtype).to(device)
    return nll.sum(-1) * w


def mdlm_loss(model, x0, mask_id):
    """MDLM's continuous-time ELBO in nats per token, at antithetic times (Mdlm::loss)."""
    b = x0.shape[0]
    t = antithetic_times(b, b)
    return mdlm_per_sequence(model, x0, t, mask_id).sum() / x0.numel()


@torch.no_grad()
def mdlm_sample(model, batch, length, steps, cache, mask_id, device):
    """MDLM ancestral sampling from all [MASK] (Mdlm::run, temperature 1, no nucleus); returns
    (tokens, model calls)."""
    k = mask_id + 1
    x = torch.full((batch, length), mask_id, dtype=torch.int64, device=device)
    cached = None
    calls = 0
    for i in range(steps):
        t = 1.0 - i / steps
        s = 1.0 - (i + 1) / steps
        if cache and cached is not None:
            logits = cached
        else:
            calls += 1
            logits = model(x)
        cached = None
        u = torch.rand(batch * length, dtype=torch.float64, device=device)
        masked = (x.reshape(-1) == mask_id).nonzero().squeeze(-1)
        if masked.numel() > 0:
            rows = logits.reshape(-1, k).index_select(0, masked).double()
            rows[:, mask_id] = float("-inf")
            p_x0 = rows.softmax(-1)
            stay = 0.0 if i + 1 == steps else ((1.0 - EPS) * s) / ((1.0 - EPS) * t)
            probs = p_x0 * (1.0 - stay)
            probs[:, mask_id] = stay
            cdf = probs.cumsum(-1)
            target = u.index_select(0, masked).unsqueeze(-1) * cdf[:, -1:]
            draws = (cdf <= target).sum(-1).clamp_max(k - 1)
            nxt = x.reshape(-1).index_copy(0, masked, draws).reshape(batch, length)
        else:
            nxt = x
        if torch.equal(nxt, x):
            cached = logits
        x = nxt
    return x, calls


def main():
    a = args()
    device = torch.device(a.device)
    with open(os.path.join(ROOT, "target", "bench-cache", "text_transformer_config.json")) as f:
        config = json.load(f)
    vocab = config["vocab_size"] - 1
    mask_id = vocab

    torch.manual_seed(0)
    model = TextTransformer(config).to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, length = 32, 128
    x0 = torch.randint(0, vocab, (batch, length), device=device)
    model.train()

    def train_step():
        opt.zero_grad(set_to_none=False)
        loss = mdlm_loss(model, x0, mask_id)
        loss.backward()
        opt.step()

    reset_peak_rss()
    ms = time_ms(device, 2, 5, 5.0, train_step)
    emit("transformer b32x128 MDLM train step (fwd+bwd+adamw)", ms,
         f"{params:.2f}M parameters, {batch * length * 1e3 / ms:.0f} tokens/s{memory_note()}")

    model.eval()
    x_t = torch.randint(0, vocab + 1, (batch, length), device=device)
    reset_peak_rss()
    with torch.no_grad():
        ms = time_ms(device, 2, 10, 3.0, lambda: model(x_t))
    emit("transformer b32x128 forward (no grad)", ms,
         f"{batch * length * 1e3 / ms:.0f} tokens/s{memory_note()}")

    steps = 128
    for num, cache in ((8, True), (8, False), (1, True), (1, False)):
        calls = [0]

        def run():
            torch.manual_seed(1)
            _, calls[0] = mdlm_sample(model, num, length, steps, cache, mask_id, device)

        reset_peak_rss()
        ms = time_ms(device, 1, 3, 5.0, run)
        emit(f"MDLM sampling {num}x{length}, {steps} steps, {'cache' if cache else 'no cache'}", ms,
             f"{num * length * 1e3 / ms:.0f} characters/s, {calls[0]} model calls{memory_note()}")


if __name__ == "__main__":
    main()
