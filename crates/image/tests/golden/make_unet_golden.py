"""Golden fixtures for diffuse's UNet2d, from diffusers 0.42.1 `UNet2DModel` (torch 2.11, CPU, float32).

For each config below: build the model with seeded random weights, perturb every parameter (norm
weights and biases too, which start at 1 and 0) so that parity means something, save it with
`save_pretrained` (config.json + diffusion_pytorch_model.safetensors), and run it on fixed inputs.
`io.safetensors` holds the inputs (x, timesteps as float, as int and as a 0-d scalar, class labels)
and diffusers' outputs; its metadata records the versions and diffusers' parameter count.
The `learned` fixture's weights are rewritten with the old attention names
(query / key / value / proj_attn) so the renaming on load is tested; diffusers itself still
loads it (checked below).

    PYTHONPATH=target/pyref:target/libtorch python3 crates/image/tests/golden/make_unet_golden.py

Check that diffusers loads what diffuse writes: run the Rust test with DIFFUSE_UNET_EXPORT=DIR
(`DIFFUSE_UNET_EXPORT=/tmp/unet-export cargo test -p diffuse-image --test it unet::export`), then

    PYTHONPATH=target/pyref:target/libtorch python3 crates/image/tests/golden/make_unet_golden.py \
        --check-export /tmp/unet-export
"""

import argparse
import json
import os
import sys

import diffusers
import safetensors.torch
import torch
from diffusers import UNet2DModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "unet")

CONFIGS = {
    # Plain residual blocks; the mid block keeps its (default) attention, two heads of 4.
    "plain": dict(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=[4, 8],
        down_block_types=["DownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "UpBlock2D"],
        layers_per_block=1,
        norm_num_groups=2,
        attention_head_dim=4,
    ),
    # Attention blocks, scale-shift conditioning (so the mid attention has no group norm), a class
    # embedding table, padding-0 downsampling, DDPM-style sin/cos order and frequency shift.
    "attn": dict(
        sample_size=16,
        in_channels=2,
        out_channels=2,
        block_out_channels=[4, 8, 8],
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        layers_per_block=1,
        norm_num_groups=2,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        num_class_embeds=10,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        norm_eps=1e-6,
        dropout=0.1,
    ),
    # Gaussian Fourier time embedding (log t in, output divided by t), class labels through the
    # time projection, one full-width head, no mid attention, resnet down/up-samplers, mish,
    # non-square input.
    "fourier": dict(
        sample_size=[16, 24],
        in_channels=3,
        out_channels=3,
        block_out_channels=[4, 8, 8],
        down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
        layers_per_block=2,
        norm_num_groups=2,
        attention_head_dim=None,
        time_embedding_type="fourier",
        class_embed_type="timestep",
        add_attention=False,
        downsample_type="resnet",
        upsample_type="resnet",
        act_fn="mish",
    ),
    # Learned time embedding table, identity class embedding (labels are embeddings), centred
    # input, mid-block output scale 2, explicit attention groups, custom time embedding width, gelu.
    "learned": dict(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        block_out_channels=[4, 8],
        down_block_types=["AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D"],
        layers_per_block=1,
        norm_num_groups=2,
        attention_head_dim=2,
        time_embedding_type="learned",
        num_train_timesteps=50,
        time_embedding_dim=12,
        dropout=0.2,
        class_embed_type="identity",
        center_input_sample=True,
        mid_block_scale_factor=2,
        attn_norm_num_groups=2,
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    ),
}

OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def perturb(model, gen):
    """Move every parameter away from its initial value (norms start at exactly 1 and 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name == "time_proj.weight" and model.config.time_embedding_type == "fourier":
                p.copy_(p * 0.1)  # keep sin/cos arguments moderate: scale 16 makes them huge
            else:
                p.add_(0.05 * noise)


def inputs(name, cfg, model, gen):
    b = 2
    hw = cfg["sample_size"]
    h, w = (hw, hw) if isinstance(hw, int) else hw
    x = torch.randn(b, cfg["in_channels"], h, w, generator=gen)
    io = {"x": x}
    kind = cfg.get("time_embedding_type", "positional")
    if kind == "positional":
        io["t_float"] = torch.tensor([3.7, 520.25], dtype=torch.float32)
        io["t_int"] = torch.tensor([7, 999], dtype=torch.int64)
        io["t_scalar"] = torch.tensor(42.5, dtype=torch.float32)
    elif kind == "fourier":
        io["t_float"] = torch.tensor([0.35, 12.5], dtype=torch.float32)
        io["t_int"] = torch.tensor([1, 40], dtype=torch.int64)
        io["t_scalar"] = torch.tensor(2.5, dtype=torch.float32)
    else:  # learned: an embedding table, integer timesteps only
        io["t_int"] = torch.tensor([3, 49], dtype=torch.int64)
        io["t_scalar"] = torch.tensor(17, dtype=torch.int64)
    ce = cfg.get("class_embed_type")
    if ce is None and cfg.get("num_class_embeds") is not None:
        io["labels"] = torch.tensor([3, 9], dtype=torch.int64)
    elif ce == "timestep":
        io["labels"] = torch.tensor([2, 7], dtype=torch.int64)
    elif ce == "identity":
        temb = cfg.get("time_embedding_dim") or 4 * cfg["block_out_channels"][0]
        io["labels"] = torch.randn(b, temb, generator=gen)
    labels = io.get("labels")
    with torch.no_grad():
        for key in ["t_float", "t_int", "t_scalar"]:
            if key in io:
                io["out" + key[1:]] = model(x, io[key], class_labels=labels).sample
    return io


def make():
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1234)
        model = UNet2DModel(**cfg).eval()
        perturb(model, gen)
        io = inputs(name, cfg, model, gen)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        weights = os.path.join(d, "diffusion_pytorch_model.safetensors")
        if name == "learned":
            sd = safetensors.torch.load_file(weights)
            renamed = {}
            for k, v in sd.items():
                for new, old in OLD_NAMES.items():
                    if ".attentions." in k and f".{new}." in k:
                        k = k.replace(f".{new}.", f".{old}.")
                renamed[k] = v
            assert any(".query." in k for k in renamed), "no attention to rename"
            safetensors.torch.save_file(renamed, weights, metadata={"format": "pt"})
        meta = {
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
            "num_parameters": str(sum(p.numel() for p in model.parameters())),
        }
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"), metadata=meta
        )
        # The fixture must load back into diffusers and reproduce itself (old names included).
        again = UNet2DModel.from_pretrained(d).eval()
        with torch.no_grad():
            for key in ["t_float", "t_int", "t_scalar"]:
                if key in io:
                    out = again(io["x"], io[key], class_labels=io.get("labels")).sample
                    assert torch.equal(out, io["out" + key[1:]]), (name, key)
        sizes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        outs = {k: float(v.abs().max()) for k, v in io.items() if k.startswith("out")}
        print(f"{name}: {meta['num_parameters']} parameters, {sizes} bytes, max |out| {outs}")


def check_export(root):
    """Load every model directory diffuse wrote under `root` with diffusers and compare outputs."""
    ok = True
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isfile(os.path.join(d, "config.json")):
            continue
        model, info = UNet2DModel.from_pretrained(d, output_loading_info=True)
        model.eval()
        problems = {k: v for k, v in info.items() if v}
        io = safetensors.torch.load_file(os.path.join(d, "io.safetensors"))
        with open(os.path.join(d, "config.json")) as f:
            written = json.load(f)
        unused = set(written) - set(model.config) - {"_class_name", "_diffusers_version"}
        with torch.no_grad():
            for key in ["t_float", "t_int", "t_scalar"]:
                if key not in io:
                    continue
                out = model(io["x"], io[key], class_labels=io.get("labels")).sample
                diff = float((out - io["out" + key[1:]]).abs().max())
                print(f"{name} {key}: max |diffusers - diffuse| = {diff:.3g}")
                ok &= diff <= 1e-4
        print(f"{name}: loading info problems {problems or 'none'}, config keys diffusers ignored {unused or 'none'}")
        ok &= not problems and not unused
    print("OK" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-export", metavar="DIR")
    args = parser.parse_args()
    if args.check_export:
        sys.exit(0 if check_export(args.check_export) else 1)
    make()
