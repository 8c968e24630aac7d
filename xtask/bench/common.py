"""Timing shared by the PyTorch peers of `cargo xtask bench`: the same protocol as
crates/cli/src/measure.rs (warm-up calls, then the median of timed calls, CUDA synchronised)."""
import argparse
import json
import time

import torch


def args():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(device, warmup, min_iters, min_time_s, f):
    for _ in range(warmup):
        f()
    sync(device)
    samples = []
    start = time.perf_counter()
    while len(samples) < min_iters or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        f()
        sync(device)
        samples.append((time.perf_counter() - t) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def emit(case, ms, work):
    print(json.dumps({"case": case, "ms": ms, "work": work}), flush=True)


def reset_peak_rss():
    """Reset this process's peak resident set (Linux: 5 to /proc/self/clear_refs), as diffuse-bench does."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def memory_note():
    """", peak RSS N MB" since the last reset (VmHWM), or "" where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return f", peak RSS {int(line.split()[1]) / 1024:.0f} MB"
    except OSError:
        pass
    return ""
