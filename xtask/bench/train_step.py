"""PyTorch side of the `train_step` benchmark: the same conv net, batch and optimiser as
crates/cli/src/bin/diffuse-bench.rs, in eager mode as a PyTorch user would run it."""
import torch
from torch import nn

from common import args, emit, time_ms

a = args()
device = torch.device(a.device)
torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(1, 32, 3, stride=1, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
    nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
    nn.Conv2d(64, 64, 3, stride=1, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
    nn.Upsample(size=(28, 28), mode="nearest"),
    nn.Conv2d(64, 32, 3, stride=1, padding=1), nn.SiLU(),
    nn.Conv2d(32, 1, 3, stride=1, padding=1),
).to(device)
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
x = torch.randn(64, 1, 28, 28, device=device)
target = torch.randn(64, 1, 28, 28, device=device)


def step():
    opt.zero_grad(set_to_none=False)
    loss = (net(x) - target).square().mean()
    loss.backward()
    opt.step()


ms = time_ms(device, 3, 10, 3.0, step)
emit("conv net b64 28x28 fwd+bwd+adamw", ms, f"{1e3 / ms:.1f} steps/s")
