"""PyTorch side of the `dist` benchmark: diffusers' UNet2DModel from the config.json diffuse-bench
writes to target/bench-cache (the bundled MNIST architecture), trained on the same fixed batch of
32 images per rank, as 1 process and as 2 processes wrapped in DistributedDataParallel over the
gloo (CPU) or nccl (CUDA) backend, one thread each; the median step time over 15 timed steps after
3 warm-up steps, ranks aligned by a barrier before each step, as crates/cli/src/bin/diffuse-bench.rs
does. DDP overlaps its all-reduce with the backward pass, so its all-reduce time is not separable
and is not reported. The script re-runs itself as the ranks (DIFFUSE_BENCH_DIST_CHILD)."""
import json
import os
import socket
import subprocess
import sys
import time

BATCH, WARMUP, STEPS = 32, 3, 15
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def rank_main(device_name):
    import torch
    import torch.distributed as dist
    from diffusers import UNet2DModel

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    with open(os.path.join(ROOT, "target", "bench-cache", "dist_unet_config.json")) as f:
        config = json.load(f)
    torch.manual_seed(0)
    model = UNet2DModel.from_config(config).to(device)
    model.train()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, 1, 28, 28, device=device)
    noise = torch.randn(BATCH, 1, 28, 28, device=device)
    t = torch.randint(0, 1000, (BATCH,), device=device)
    times = []
    for i in range(WARMUP + STEPS):
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = (net(x, t).sample - noise).square().mean()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= WARMUP:
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"step_ms": times[len(times) // 2]}), flush=True)
    if world > 1:
        dist.destroy_process_group()


def run(world, device_name):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, DIFFUSE_BENCH_DIST_CHILD="1", OMP_NUM_THREADS="1")
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, __file__, "--device", device_name],
                                      env=env, stdout=subprocess.PIPE, text=True))
    result = None
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a rank failed with status {p.returncode}")
        for line in out.splitlines():
            try:
                result = json.loads(line)["step_ms"]
            except (ValueError, KeyError, TypeError):
                pass
    return result


def main():
    from common import args, emit

    a = args()
    if os.environ.get("DIFFUSE_BENCH_DIST_CHILD"):
        rank_main(a.device)
        return
    one = run(1, a.device)
    emit("UNet2d train step, 1 process x 1 thread, 32 images", one,
         f"{BATCH * 1e3 / one:.0f} images/s")
    two = run(2, a.device)
    emit("UNet2d train step, 2 processes x 1 thread (gloo), 32 images each", two,
         f"{2 * BATCH * 1e3 / two:.0f} images/s = {2 * one / two:.2f}x one process (DDP, all-reduce "
         f"overlapped with backward)")


main()
