"""PyTorch/diffusers side of the `threads` benchmark: the same 20-step DPM-Solver++ 2M loop over
diffusers' UNet2DModel with the bundled MNIST architecture (the config diffuse-bench writes to
target/bench-cache), 4 images, in a fresh Python process per OpenMP setting (libgomp reads its
environment once, when torch is imported), on an idle machine and beside one busy process. The
"diffuse default" row applies diffuse's rule (one thread per core that other processes leave free,
measured over 50 ms at start) to PyTorch too, so the two sides compare like for like."""
import json
import os
import subprocess
import sys
import time

SETTINGS = [
    ("2 threads, libgomp default (spin, then sleep)", {}),
    ("diffuse default: threads for the free cores", {"DIFFUSE_BENCH_ADAPT_THREADS": "1"}),
    ("2 threads, passive wait (OMP_WAIT_POLICY=PASSIVE)", {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("2 threads, short spin (GOMP_SPINCOUNT=10000)", {"GOMP_SPINCOUNT": "10000"}),
    ("1 thread", {"OMP_NUM_THREADS": "1"}),
]


def busy_cores(window_s=0.05):
    """Cores busy over the window, from /proc/stat: the rule diffuse's adapt_threads applies."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]
    t0, i0 = read()
    time.sleep(window_s)
    t1, i1 = read()
    return os.cpu_count() * (t1 - t0 - (i1 - i0)) / max(t1 - t0, 1)


def child(device_name):
    adapt = os.environ.get("DIFFUSE_BENCH_ADAPT_THREADS")
    busy = round(busy_cores()) if adapt else 0
    import torch
    if busy:
        torch.set_num_threads(max(1, os.cpu_count() - busy))
    from diffusers import DPMSolverMultistepScheduler, UNet2DModel

    from common import time_ms

    device = torch.device(device_name)
    cache = os.path.join(os.path.dirname(__file__), "..", "..", "target", "bench-cache")
    with open(os.path.join(cache, "threads_unet_config.json")) as f:
        config = json.load(f)
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(config).to(device).eval()
    x = torch.randn(4, 1, 28, 28, device=device)

    @torch.no_grad()
    def sample_loop():
        s = DPMSolverMultistepScheduler()
        s.set_timesteps(20, device=device)
        sample = x * s.init_noise_sigma
        for step_t in s.timesteps:
            eps = unet(s.scale_model_input(sample, step_t), step_t).sample
            sample = s.step(eps, step_t, sample).prev_sample

    ms = time_ms(device, 1, 3, 4.0, sample_loop)
    print(json.dumps({"ms": ms, "threads": f"{torch.get_num_threads()} thread{'' if torch.get_num_threads() == 1 else 's'}"}), flush=True)


def main():
    from common import args, emit

    a = args()
    for busy in (False, True):
        neighbour = subprocess.Popen(["sh", "-c", "while :; do :; done"]) if busy else None
        try:
            for name, extra in SETTINGS:
                env = {k: v for k, v in os.environ.items()
                       if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
                env.update(extra)
                env["DIFFUSE_BENCH_THREADS_CHILD"] = "1"
                out = subprocess.run([sys.executable, __file__, "--device", a.device], env=env,
                                     check=True, capture_output=True, text=True).stdout
                result = next(json.loads(l) for l in out.splitlines() if l.startswith("{"))
                ms = result["ms"]
                place = "beside 1 busy process" if busy else "idle machine"
                emit(f"sample 4 images, dpm++2m 20 steps, {name}, {place}", ms,
                     f"{4e3 / ms:.1f} images/s ({result['threads']})")
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()


if __name__ == "__main__":
    if os.environ.get("DIFFUSE_BENCH_THREADS_CHILD"):
        device_name = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
        child(device_name)
    else:
        main()
