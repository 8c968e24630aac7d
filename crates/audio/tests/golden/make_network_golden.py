"""The audio denoisers of diffuse-audio (`crates/audio/src/diffwave.rs`, `unet1d.rs`, and the
padding wrapper of `network.rs`) in plain PyTorch, and the golden fixtures their parity test reads.

`DiffWave` and `UNet1d` take the same `config.json` as the Rust `AudioNetworkConfig` (an object
tagged `"type": "diffwave" | "unet1d"`) and have the same parameter names, so a
`model.safetensors` written by either loads into the other (`DiffWave`'s names are also those of
lmnt-com/diffwave's `model.py`). The classes depend on torch alone and are importable (the
PyTorch side of the audio speed benchmark uses them):

    sys.path.insert(0, "crates/audio/tests/golden")
    from make_network_golden import build_network, forward_any_length
    model = build_network(json.load(open("config.json")))
    eps = forward_any_length(model, x, t)  # x [B, C, L] with any L, t [B] real timesteps
    eps = forward_any_length(model, x, t, labels)  # class-conditional: labels [B] int64

Both networks take the optional conditioning of `network.rs`: `num_class_embeds` (a
`class_embedding` table whose last row is the null class, used when no labels are given, added to
the time embedding before its activation) and `position_channel` with `position_frames` (arange(L)
/ position_frames appended as the last input channel, made on the padded length); UNet1d also
takes `attention_levels` (self-attention after every resnet of the chosen levels, down and up).

Run as a script, it writes `networks/<case>/` for each case below: config.json, model.safetensors
(seeded random weights, every parameter perturbed away from its initial value so that the
zero-initialised output convolutions and the norms matter) and io.safetensors (inputs x, real
fractional timesteps t, class labels for the class-conditional cases, and the outputs PyTorch
computes; float32, CPU; metadata: torch version and parameter count). Each case seeds its own
generators, so adding a case leaves the others' files byte for byte as they were; name cases on the
command line to write only those.

    PYTHONPATH=target/pyref:target/libtorch python3 crates/audio/tests/golden/make_network_golden.py
"""

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_EPS = 1e-5
CONV_IN_KERNEL = 7
STEP_FEATURES = 128

DIFFWAVE_DEFAULTS = dict(
    in_channels=1,
    out_channels=1,
    residual_channels=64,
    residual_layers=20,
    dilation_cycle=10,
    time_embed_dim=512,
    num_class_embeds=None,
    position_channel=False,
    position_frames=None,
)

UNET1D_DEFAULTS = dict(
    in_channels=1,
    out_channels=1,
    block_out_channels=[32, 64, 96, 128],
    down_factors=[4, 4, 4],
    layers_per_block=2,
    attention=True,
    attention_head_dim=32,
    norm_num_groups=8,
    dropout=0.0,
    time_embed_dim=128,
    num_class_embeds=None,
    position_channel=False,
    position_frames=None,
    attention_levels=[],
)


def _with_defaults(config, defaults):
    unknown = set(config) - set(defaults) - {"type"}
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    cfg = {k: config.get(k, v) for k, v in defaults.items()}
    if cfg["position_channel"] != (cfg["position_frames"] is not None):
        raise ValueError("position_channel and position_frames go together")
    return cfg


def with_positions(x, cfg):
    """x with the position channel (arange(L) / position_frames, float32 then x's dtype) appended."""
    if not cfg["position_channel"]:
        return x
    b, _, n = x.shape
    pos = torch.arange(n, dtype=torch.float32, device=x.device) / cfg["position_frames"]
    return torch.cat([x, pos.to(x.dtype).view(1, 1, n).expand(b, 1, n)], dim=1)


def class_rows(embedding, labels, batch, device, dtype):
    """The class embedding's rows for labels [B] (the null class, the last row, when None)."""
    if embedding is None:
        if labels is not None:
            raise ValueError("class labels given to a network without num_class_embeds")
        return None
    if labels is None:
        labels = torch.full((batch,), embedding.num_embeddings - 1, dtype=torch.long, device=device)
    return embedding(labels.to(device=device, dtype=torch.long)).to(dtype)


def _class_embedding(cfg):
    rows = cfg["num_class_embeds"]
    return nn.Embedding(rows, cfg["time_embed_dim"]) if rows is not None else None


# ---------------------------------------------------------------------------------------------
# DiffWave (Kong et al. 2021), unconditional; lmnt-com/diffwave's module names.


def _kaiming_conv(cin, cout, k, dilation=1):
    """lmnt-com/diffwave's Conv1d: Kaiming-normal weight, PyTorch's default bias."""
    conv = nn.Conv1d(cin, cout, k, padding=dilation * (k - 1) // 2, dilation=dilation)
    nn.init.kaiming_normal_(conv.weight)
    return conv


class DiffusionEmbedding(nn.Module):
    """128 sinusoidal features of the real step t ([sin, cos] of 10^(4i/63) t), two Linear + SiLU."""

    def __init__(self, dim):
        super().__init__()
        exponent = torch.arange(STEP_FEATURES // 2, dtype=torch.float32) * 4.0 / 63.0
        self.register_buffer("freqs", torch.pow(10.0, exponent), persistent=False)
        self.projection1 = nn.Linear(STEP_FEATURES, dim)
        self.projection2 = nn.Linear(dim, dim)

    def forward(self, t, dtype, class_emb=None):
        args = t.float().unsqueeze(1) * self.freqs.unsqueeze(0)
        x = torch.cat([torch.sin(args), torch.cos(args)], dim=1).to(dtype)
        x = self.projection2(F.silu(self.projection1(x)))
        return F.silu(x if class_emb is None else x + class_emb)


class ResidualBlock(nn.Module):
    def __init__(self, channels, embed_dim, dilation):
        super().__init__()
        self.dilated_conv = _kaiming_conv(channels, 2 * channels, 3, dilation)
        self.diffusion_projection = nn.Linear(embed_dim, channels)
        self.output_projection = _kaiming_conv(channels, 2 * channels, 1)

    def forward(self, x, emb):
        y = x + self.diffusion_projection(emb).unsqueeze(-1)
        y = self.dilated_conv(y)
        gate, filt = torch.chunk(y, 2, dim=1)
        y = torch.sigmoid(gate) * torch.tanh(filt)
        y = self.output_projection(y)
        residual, skip = torch.chunk(y, 2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class DiffWave(nn.Module):
    """[B, out_channels, L] from audio [B, in_channels, L] (any L) and real timesteps t [B]."""

    def __init__(self, config):
        super().__init__()
        cfg = _with_defaults(config, DIFFWAVE_DEFAULTS)
        self.cfg = cfg
        c = cfg["residual_channels"]
        self.input_projection = _kaiming_conv(cfg["in_channels"] + int(cfg["position_channel"]), c, 1)
        self.diffusion_embedding = DiffusionEmbedding(cfg["time_embed_dim"])
        self.class_embedding = _class_embedding(cfg)
        self.residual_layers = nn.ModuleList(
            [
                ResidualBlock(c, cfg["time_embed_dim"], 2 ** (i % cfg["dilation_cycle"]))
                for i in range(cfg["residual_layers"])
            ]
        )
        self.skip_projection = _kaiming_conv(c, c, 1)
        self.output_projection = nn.Conv1d(c, cfg["out_channels"], 1)
        nn.init.zeros_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def length_multiple(self):
        return 1

    def forward(self, x, t, labels=None):
        rows = class_rows(self.class_embedding, labels, x.shape[0], x.device, x.dtype)
        emb = self.diffusion_embedding(t, x.dtype, rows)
        x = F.relu(self.input_projection(with_positions(x, self.cfg)))
        skip = None
        for layer in self.residual_layers:
            x, s = layer(x, emb)
            skip = s if skip is None else skip + s
        x = skip / math.sqrt(len(self.residual_layers))
        x = F.relu(self.skip_projection(x))
        return self.output_projection(x)


# ---------------------------------------------------------------------------------------------
# UNet1d: diffusers' UNet2DModel layout in one dimension.


class TimestepEmbedding(nn.Module):
    """diffusers' Timesteps (flip_sin_to_cos, shift 0) and TimestepEmbedding (linear_1, SiLU, linear_2)."""

    def __init__(self, features, dim):
        super().__init__()
        half = features // 2
        exponent = torch.arange(half, dtype=torch.float32) * -math.log(10000.0)
        self.register_buffer("freqs", torch.exp(exponent / half), persistent=False)
        self.linear_1 = nn.Linear(features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t, dtype):
        args = t.float().unsqueeze(1) * self.freqs.unsqueeze(0)
        x = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock1d(nn.Module):
    def __init__(self, cin, cout, cfg):
        super().__init__()
        g = cfg["norm_num_groups"]
        self.norm1 = nn.GroupNorm(g, cin, eps=NORM_EPS)
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(cfg["time_embed_dim"], cout)
        self.norm2 = nn.GroupNorm(g, cout, eps=NORM_EPS)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv1d(cin, cout, 1) if cin != cout else None
        self.dropout = cfg["dropout"]

    def forward(self, x, temb_act):
        h = self.conv1(F.silu(self.norm1(x))) + self.time_emb_proj(temb_act).unsqueeze(-1)
        h = F.dropout(F.silu(self.norm2(h)), self.dropout, self.training)
        h = self.conv2(h)
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class Attention1d(nn.Module):
    def __init__(self, channels, cfg):
        super().__init__()
        self.group_norm = nn.GroupNorm(cfg["norm_num_groups"], channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.heads = channels // cfg["attention_head_dim"]

    def forward(self, x):
        b, c, n = x.shape
        h = self.group_norm(x).transpose(1, 2)

        def split(t):
            return t.view(b, n, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(h)), split(self.to_k(h)), split(self.to_v(h))
        o = F.scaled_dot_product_attention(q, k, v)
        o = self.to_out[0](o.transpose(1, 2).reshape(b, n, c))
        return o.transpose(1, 2) + x


class Downsample1d(nn.Module):
    """Strided conv: kernel 2f, stride f, padding ceil(f/2) maps L (a multiple of f) to L / f."""

    def __init__(self, channels, factor):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 2 * factor, stride=factor, padding=(factor + 1) // 2)

    def forward(self, x):
        return self.conv(x)


class Upsample1d(nn.Module):
    """Nearest-neighbour x f (each sample repeated f times), then a k 3 conv."""

    def __init__(self, channels, factor):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        self.factor = factor

    def forward(self, x):
        b, c, n = x.shape
        x = x.unsqueeze(-1).expand(b, c, n, self.factor).reshape(b, c, n * self.factor)
        return self.conv(x)


def _attentions(on, count, channels, cfg):
    """diffusers' AttnDownBlock2D / AttnUpBlock2D: one attention after each resnet."""
    return nn.ModuleList([Attention1d(channels, cfg) for _ in range(count)]) if on else None


class DownBlock1d(nn.Module):
    def __init__(self, cin, cout, factor, attention, cfg):
        super().__init__()
        lpb = cfg["layers_per_block"]
        self.resnets = nn.ModuleList([ResnetBlock1d(cin if j == 0 else cout, cout, cfg) for j in range(lpb)])
        self.attentions = _attentions(attention, lpb, cout, cfg)
        self.downsamplers = nn.ModuleList([Downsample1d(cout, factor)]) if factor else None


class MidBlock1d(nn.Module):
    def __init__(self, channels, cfg):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock1d(channels, channels, cfg) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention1d(channels, cfg)]) if cfg["attention"] else None


class UpBlock1d(nn.Module):
    def __init__(self, prev_out, cout, skip_in, factor, attention, cfg):
        super().__init__()
        lpb = cfg["layers_per_block"]
        resnets = []
        for j in range(lpb + 1):
            skip = skip_in if j == lpb else cout
            res_in = prev_out if j == 0 else cout
            resnets.append(ResnetBlock1d(res_in + skip, cout, cfg))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = _attentions(attention, lpb + 1, cout, cfg)
        self.upsamplers = nn.ModuleList([Upsample1d(cout, factor)]) if factor else None


class UNet1d(nn.Module):
    """[B, out_channels, L] from audio [B, in_channels, L] (L a multiple of the product of the down
    factors) and real timesteps t [B]."""

    def __init__(self, config):
        super().__init__()
        cfg = _with_defaults(config, UNET1D_DEFAULTS)
        self.cfg = cfg
        ch = cfg["block_out_channels"]
        factors = cfg["down_factors"]
        n = len(ch)
        assert len(factors) == n - 1
        levels = cfg["attention_levels"] or [False] * n
        assert len(levels) == n
        c0 = ch[0]
        self.time_embedding = TimestepEmbedding(c0, cfg["time_embed_dim"])
        cin = cfg["in_channels"] + int(cfg["position_channel"])
        self.conv_in = nn.Conv1d(cin, c0, CONV_IN_KERNEL, padding=CONV_IN_KERNEL // 2)
        self.class_embedding = _class_embedding(cfg)
        downs = []
        cin = c0
        for i, cout in enumerate(ch):
            downs.append(DownBlock1d(cin, cout, factors[i] if i < n - 1 else None, levels[i], cfg))
            cin = cout
        self.down_blocks = nn.ModuleList(downs)
        self.mid_block = MidBlock1d(ch[-1], cfg)
        rev = list(reversed(ch))
        ups = []
        prev_out = rev[0]
        for i, cout in enumerate(rev):
            skip_in = rev[min(i + 1, n - 1)]
            factor = factors[n - 2 - i] if i < n - 1 else None
            ups.append(UpBlock1d(prev_out, cout, skip_in, factor, levels[n - 1 - i], cfg))
            prev_out = cout
        self.up_blocks = nn.ModuleList(ups)
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], c0, eps=NORM_EPS)
        self.conv_out = nn.Conv1d(c0, cfg["out_channels"], 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def length_multiple(self):
        return math.prod(self.cfg["down_factors"])

    def forward(self, x, t, labels=None):
        if x.shape[-1] % self.length_multiple() != 0:
            raise ValueError(f"length {x.shape[-1]} is not a multiple of {self.length_multiple()}")
        temb = self.time_embedding(t, x.dtype)
        rows = class_rows(self.class_embedding, labels, x.shape[0], x.device, x.dtype)
        if rows is not None:
            temb = temb + rows
        temb_act = F.silu(temb)
        h = self.conv_in(with_positions(x, self.cfg))
        skips = [h]
        for block in self.down_blocks:
            for m, resnet in enumerate(block.resnets):
                h = resnet(h, temb_act)
                if block.attentions is not None:
                    h = block.attentions[m](h)
                skips.append(h)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, temb_act)
        if self.mid_block.attentions is not None:
            h = self.mid_block.attentions[0](h)
        h = self.mid_block.resnets[1](h, temb_act)
        for block in self.up_blocks:
            for m, resnet in enumerate(block.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), temb_act)
                if block.attentions is not None:
                    h = block.attentions[m](h)
            if block.upsamplers is not None:
                h = block.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


# ---------------------------------------------------------------------------------------------
# The AudioNetwork wrapper.


def build_network(config):
    """The network an AudioNetworkConfig JSON object describes."""
    kind = config.get("type")
    if kind == "diffwave":
        return DiffWave(config)
    if kind == "unet1d":
        return UNet1d(config)
    raise ValueError(f"unknown audio network type {kind!r} (expected diffwave or unet1d)")


def forward_any_length(model, x, t, labels=None):
    """AudioNetwork::forward_t: zero-pad the length up to the network's multiple (the position
    channel, if any, is then made on the padded length), crop back. labels: [B] int64 class labels
    or None (the null class on a class-conditional network)."""
    n = x.shape[-1]
    m = model.length_multiple()
    pad = (m - n % m) % m
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    out = model(F.pad(x, (0, pad)) if pad else x, t, labels)
    return out[..., :n] if pad else out


# ---------------------------------------------------------------------------------------------
# Fixtures.

CASES = {
    # Dilations 1, 2, 4, 1, 2, 4; two channels in, three out; a length that is no power of two.
    "diffwave": (
        dict(type="diffwave", in_channels=2, out_channels=3, residual_channels=8,
             residual_layers=6, dilation_cycle=3, time_embed_dim=32),
        (3, 2, 50),
    ),
    # Three levels with an odd factor (3), attention in the middle, one resnet per level, and a
    # length (40) that the wrapper pads to 42 and crops back.
    "unet1d_attention": (
        dict(type="unet1d", in_channels=1, out_channels=1, block_out_channels=[8, 12, 16],
             down_factors=[2, 3], layers_per_block=1, attention=True, attention_head_dim=8,
             norm_num_groups=4, dropout=0.1, time_embed_dim=16),
        (3, 1, 40),
    ),
    # Two levels, x4, two resnets per level, no attention; a length that is a multiple.
    "unet1d_plain": (
        dict(type="unet1d", in_channels=1, out_channels=2, block_out_channels=[8, 12],
             down_factors=[4], layers_per_block=2, attention=False, attention_head_dim=8,
             norm_num_groups=4, dropout=0.0, time_embed_dim=16),
        (3, 1, 64),
    ),
    # Class-conditional (3 classes + the null class; the labels include the null class), the
    # position channel scaled to 32 frames (so positions pass 1 inside the 40 frames and in the
    # padding to 42), attention after every resnet of the two coarser levels as well as in the
    # middle (head dim 4 divides 12 and 16), two resnets per level.
    "unet1d_classes_position_attnlevels": (
        dict(type="unet1d", in_channels=1, out_channels=1, block_out_channels=[8, 12, 16],
             down_factors=[2, 3], layers_per_block=2, attention=True, attention_head_dim=4,
             norm_num_groups=4, dropout=0.1, time_embed_dim=16, num_class_embeds=4,
             position_channel=True, position_frames=32, attention_levels=[False, True, True]),
        (3, 1, 40),
        [0, 2, 3],
    ),
    # DiffWave, class-conditional (2 classes + null) and with the position channel.
    "diffwave_classes": (
        dict(type="diffwave", in_channels=1, out_channels=1, residual_channels=8,
             residual_layers=4, dilation_cycle=2, time_embed_dim=32, num_class_embeds=3,
             position_channel=True, position_frames=48),
        (3, 1, 50),
        [1, 2, 0],
    ),
}


def perturb(model, gen):
    """Move every parameter away from its initial value (norms start at 1 and 0, the output
    convolutions at 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.startswith("output_projection") or name.startswith("conv_out"):
                p.copy_(0.2 * noise)
            else:
                p.add_(0.1 * noise)


def make(only=()):
    import safetensors.torch

    unknown = set(only) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)} (known: {', '.join(CASES)})")
    here = os.path.dirname(os.path.abspath(__file__))
    total = 0
    for name, (cfg, shape, *labels) in CASES.items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1234)
        model = build_network(cfg).eval()
        perturb(model, gen)
        d = os.path.join(here, "networks", name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(weights, os.path.join(d, "model.safetensors"))
        x = torch.randn(shape, generator=gen) * 0.5
        # Real, fractional timesteps over a T = 200 schedule (what DiffWave's fast sampler asks).
        t = torch.tensor([0.0, 37.25, 181.6], dtype=torch.float32)
        labels = torch.tensor(labels[0], dtype=torch.int64) if labels else None
        with torch.no_grad():
            out = forward_any_length(model, x, t, labels)
        io = {"x": x, "t": t, "out": out.contiguous()}
        if labels is not None:
            io["labels"] = labels
        meta = {
            "torch_version": torch.__version__,
            "num_parameters": str(sum(p.numel() for p in model.parameters())),
        }
        safetensors.torch.save_file(io, os.path.join(d, "io.safetensors"), metadata=meta)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        total += size
        print(f"{name}: {meta['num_parameters']} parameters, {size} bytes, "
              f"max |out| {float(out.abs().max()):.3f}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    import sys

    make(sys.argv[1:])
