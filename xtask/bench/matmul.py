"""PyTorch side of the `matmul` benchmark (see crates/cli/src/bin/diffuse-bench.rs)."""
import torch

from common import args, emit, time_ms

a = args()
device = torch.device(a.device)
sizes = [2048, 8192] if device.type == "cuda" else [512, 1024, 2048]
for n in sizes:
    torch.manual_seed(0)
    x = torch.randn(n, n, device=device)
    y = torch.randn(n, n, device=device)
    ms = time_ms(device, 2, 3, 2.0, lambda: x @ y)
    emit(f"f32 {n}x{n}", ms, f"{2 * n**3 / (ms * 1e-3) / 1e9:.1f} GFLOP/s")
