"""The text transformer of diffuse-text (`crates/text/src/transformer.rs`) in plain PyTorch, and
the golden fixtures its parity test reads.

`TextTransformer` takes the same `config.json` and has the same parameter names as the Rust
network, so a `model.safetensors` written by either loads into the other. The class depends on
torch alone and is importable (the PyTorch side of the text speed benchmark uses it):

    sys.path.insert(0, "crates/text/tests/golden")
    from make_transformer_golden import TextTransformer
    model = TextTransformer(json.load(open("config.json")))

Run as a script, it writes `transformer/<name>/` for each config below: config.json,
model.safetensors (seeded random weights, every parameter perturbed away from its initial value
so that the zero-initialised modulations and head matter) and io.safetensors (tokens, noise
levels and the logits PyTorch computes; float32, CPU).

    PYTHONPATH=target/pyref:target/libtorch python3 crates/text/tests/golden/make_transformer_golden.py
"""

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

TIME_FREQ_DIM = 256
ROTARY_BASE = 10000.0
NORM_EPS = 1e-5

CONFIG_KEYS = [
    "vocab_size",
    "output_vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "mlp_ratio",
    "max_seq_len",
    "positions",
    "dropout",
    "causal",
    "cond_dim",
]


def modulated(cfg):
    """adaLN modulations exist for a bidirectional network with time conditioning (configs
    written before `time_conditioning` existed had them)."""
    return not cfg["causal"] and cfg.get("time_conditioning", True)


def modulate(x, shift, scale):
    return x * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class TimeEmbed(nn.Module):
    """DiT's timestep embedder: 256 sinusoidal features ([cos, sin]), Linear, SiLU, Linear."""

    def __init__(self, cond_dim):
        super().__init__()
        half = TIME_FREQ_DIM // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / half))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(TIME_FREQ_DIM, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, t, dtype):
        args = t.float().unsqueeze(1) * self.freqs.unsqueeze(0)
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)
        return F.silu(self.mlp(features))


class Attention(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)


class MLP(nn.Module):
    def __init__(self, hidden, width):
        super().__init__()
        self.fc1 = nn.Linear(hidden, width)
        self.fc2 = nn.Linear(width, hidden)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h = cfg["hidden_size"]
        self.norm1 = nn.LayerNorm(h, eps=NORM_EPS)
        self.attn = Attention(h)
        self.norm2 = nn.LayerNorm(h, eps=NORM_EPS)
        self.mlp = MLP(h, round(cfg["mlp_ratio"] * h))
        if modulated(cfg):
            self.modulation = nn.Linear(cfg["cond_dim"], 6 * h)
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)


class TextTransformer(nn.Module):
    """Logits [B, L, output_vocab_size] from tokens [B, L] (int64) and noise levels cond [B]."""

    def __init__(self, config):
        super().__init__()
        cfg = {k: config[k] for k in CONFIG_KEYS}
        cfg["time_conditioning"] = config.get("time_conditioning", True)
        self.cfg = cfg
        h = cfg["hidden_size"]
        self.heads = cfg["num_heads"]
        self.head_dim = h // self.heads
        self.token_embed = nn.Embedding(cfg["vocab_size"], h)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        if cfg["positions"] == "learned":
            self.pos_embed = nn.Embedding(cfg["max_seq_len"], h)
            nn.init.normal_(self.pos_embed.weight, std=0.02)
        else:
            d = self.head_dim
            inv_freq = torch.exp(
                torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(ROTARY_BASE) / d)
            )
            t = torch.arange(cfg["max_seq_len"], dtype=torch.float32)
            freqs = t.unsqueeze(1) * inv_freq.unsqueeze(0)
            emb = torch.cat([freqs, freqs], dim=-1)
            self.register_buffer("rotary_cos", emb.cos(), persistent=False)
            self.register_buffer("rotary_sin", emb.sin(), persistent=False)
        if modulated(cfg):
            self.time_embed = TimeEmbed(cfg["cond_dim"])
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["num_layers"])])
        self.final_norm = nn.LayerNorm(h, eps=NORM_EPS)
        if modulated(cfg):
            self.final_modulation = nn.Linear(cfg["cond_dim"], 2 * h)
            nn.init.zeros_(self.final_modulation.weight)
            nn.init.zeros_(self.final_modulation.bias)
        self.head = nn.Linear(h, cfg["output_vocab_size"])
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def rotate(self, x):
        n = x.shape[2]
        cos = self.rotary_cos[:n].to(x.dtype)
        sin = self.rotary_sin[:n].to(x.dtype)
        return x * cos + rotate_half(x) * sin

    def forward(self, tokens, cond=None):
        cfg = self.cfg
        b, n = tokens.shape
        if n > cfg["max_seq_len"]:
            raise ValueError(f"sequence length {n} > max_seq_len {cfg['max_seq_len']}")
        x = self.token_embed(tokens)
        if cfg["positions"] == "learned":
            x = x + self.pos_embed(torch.arange(n, device=tokens.device)).unsqueeze(0)
        c = None
        if modulated(cfg):
            t = cond if cond is not None else torch.zeros(b, device=tokens.device)
            if t.dim() == 0:
                t = t.expand(b)
            c = self.time_embed(t, x.dtype)
        p = cfg["dropout"] if self.training else 0.0
        for block in self.blocks:
            mods = block.modulation(c).chunk(6, dim=-1) if c is not None else None
            y = block.norm1(x)
            if mods is not None:
                y = modulate(y, mods[0], mods[1])
            qkv = block.attn.qkv(y).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if cfg["positions"] == "rotary":
                q, k = self.rotate(q), self.rotate(k)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=cfg["causal"])
            a = F.dropout(block.attn.out(a.transpose(1, 2).reshape(b, n, -1)), p, self.training)
            x = x + (mods[2].unsqueeze(1) * a if mods is not None else a)
            y = block.norm2(x)
            if mods is not None:
                y = modulate(y, mods[3], mods[4])
            m = F.dropout(block.mlp(y), p, self.training)
            x = x + (mods[5].unsqueeze(1) * m if mods is not None else m)
        x = self.final_norm(x)
        if c is not None:
            shift, scale = self.final_modulation(c).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.head(x)


def base_config(**overrides):
    cfg = dict(
        vocab_size=12,
        output_vocab_size=11,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        mlp_ratio=4.0,
        max_seq_len=16,
        positions="rotary",
        dropout=0.1,
        causal=False,
        cond_dim=16,
    )
    cfg.update(overrides)
    return cfg


CONFIGS = {
    # The masked-diffusion denoiser: [MASK] = id 11 is an input only, rotary positions.
    "rotary": base_config(),
    # Learned positions, a non-integer MLP ratio, one output per input id.
    "learned": base_config(positions="learned", mlp_ratio=2.5, output_vocab_size=12, cond_dim=8),
    # The autoregressive baseline: causal attention, no time conditioning, four heads of 4.
    "causal": base_config(causal=True, num_heads=4, vocab_size=11),
}


def perturb(model, gen):
    """Move every parameter away from its initial value (norms start at 1 and 0, the
    modulations and the head at 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "modulation" in name or name.startswith("head"):
                p.copy_(0.2 * noise)
            elif "embed" in name and "mlp" not in name:
                p.copy_(noise)
            else:
                p.add_(0.1 * noise)


def make():
    import safetensors.torch

    here = os.path.dirname(os.path.abspath(__file__))
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(4321)
        model = TextTransformer(cfg).eval()
        perturb(model, gen)
        d = os.path.join(here, "transformer", name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(weights, os.path.join(d, "model.safetensors"))
        tokens = torch.randint(0, cfg["vocab_size"], (3, 10), generator=gen)
        io = {"tokens": tokens}
        with torch.no_grad():
            if cfg["causal"]:
                io["logits"] = model(tokens)
            else:
                io["cond"] = torch.tensor([0.5, 250.0, 999.0])
                io["logits"] = model(tokens, io["cond"])
                io["logits_no_cond"] = model(tokens)
        meta = {
            "torch_version": torch.__version__,
            "num_parameters": str(sum(p.numel() for p in model.parameters())),
        }
        safetensors.torch.save_file(io, os.path.join(d, "io.safetensors"), metadata=meta)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{name}: {meta['num_parameters']} parameters, {size} bytes, "
              f"max |logits| {float(io['logits'].abs().max()):.3f}")


if __name__ == "__main__":
    make()
