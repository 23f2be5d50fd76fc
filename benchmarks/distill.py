"""Distillation cost benchmarks → benchmarks/results/distill.json (fidelity: benchmarks/fidelity.py).

Run: make bench   (or python benchmarks/distill.py [--device cuda] [--quick] [--out DIR]). CPU by
default; every figure that is a comparison is a ratio of two measurements taken side by side in this
one run, on one device.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config, host, median_time, parse_args, peak_memory_mb, write  # noqa: E402

from teddy import models
from teddy.data.source import ArraySource  # noqa: E402
from teddy.method.objectives import BNMatching, Unrolled  # noqa: E402
from teddy.stages import distill

SPEC = models.InputSpec(10, 1, 28, (0.286,), (0.353,))  # Fashion-MNIST-sized
BATCH, WIDTH, POOL = 100, 128, 5
SMOKE = {"batch": 20, "width": 32}  # --quick: every code path in seconds, figures not for reporting
KS_COST = (1, 5, 10, 20)


def make_pool(device, n: int = POOL, width: int = WIDTH) -> list[torch.nn.Module]:
    pool = []
    for i in range(n):
        torch.manual_seed(i)
        model = models.create_model("convnet", SPEC, width=width)
        with torch.no_grad():  # give BN running statistics of (random) data, as a trained member has
            model.train()(torch.rand(256, 1, 28, 28))
        model = model.to(device).eval().requires_grad_(False)
        if device.type == "cuda":  # as teddy.pool.members.load_pool does
            model = model.to(memory_format=torch.channels_last)
        pool.append(model)
    return pool


def fake_data(n: int = 2000) -> ArraySource:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    manifest = {"num_classes": 10, "channels": 1, "image_size": 28}
    return ArraySource(
        manifest,
        {"train_x": x, "train_y": torch.arange(n) % 10, "val_x": x[:0], "val_y": x[:0, 0, 0, 0].long()},
    )


class EnsembleBN:
    """The multi-model style: match the statistics of every pool model at every step."""

    names = ("ce", "bn")

    def __init__(self, cfg, pool):
        self.single, self.pool = BNMatching(cfg), pool

    def __call__(self, model, view, labels, gen):
        parts = [self.single(m, view, labels, gen) for m in self.pool]
        return sum(p[0] for p in parts) / len(parts), torch.stack([p[1] for p in parts]).mean(0)


def setup(objective_name: str, iterations: int, k: int, device, batch: int = BATCH, width: int = WIDTH):
    """Build config, pool and objective; return ``steps()`` running ``iterations`` synthesis steps of
    one batch through distill.synthesize_batch (the real loop) from a fresh state."""
    cfg = config(f"distill.iterations={iterations}", f"distill.unroll_steps={k}", "distill.real_batch=16")
    pool = make_pool(device, width=width)
    labels = torch.arange(batch) % 10
    objective = {
        "teddy": lambda: BNMatching(cfg),
        "ensemble": lambda: EnsembleBN(cfg, pool),
        "unrolled": lambda: Unrolled(cfg, fake_data(), device),
    }[objective_name]()

    def draw(it, g):
        return int(torch.randint(len(pool), (1,), generator=g))

    def steps():
        gen = torch.Generator().manual_seed(0)
        st = distill.new_state(torch.rand(batch, 1, 28, 28, generator=gen), cfg, device)
        schedule = distill.draw_schedule(cfg, batch, draw, gen, device)
        distill.synthesize_batch(st, labels, pool, objective, schedule, cfg, gen, device)

    return steps


def time_per_step(
    objective_name: str, iterations: int, device, sizes: dict, k: int = 1, repeats: int = 3
) -> float:
    steps = setup(objective_name, iterations, k, device, **sizes)
    return median_time(steps, repeats, warmup=1, device=device) / iterations


def bare_forward_backward(iterations: int, device, batch: int = BATCH, width: int = WIDTH) -> float:
    model = make_pool(device, 1, width)[0]
    x = torch.rand(batch, 1, 28, 28, device=device, requires_grad=True)
    labels = (torch.arange(batch) % 10).to(device)

    def steps():
        for _ in range(iterations):
            F.cross_entropy(model(x), labels).backward()
            x.grad = None

    return median_time(steps, 3, warmup=1, device=device) / iterations


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cost(quick: bool, device) -> dict:
    n, sizes = (3, SMOKE) if quick else (20, {"batch": BATCH, "width": WIDTH})
    log("bare forward+backward, teddy and ensemble steps")
    bare = bare_forward_backward(n, device, **sizes)
    teddy = time_per_step("teddy", n, device, sizes)
    ensemble = time_per_step("ensemble", max(2, n // 4), device, sizes)
    out = {
        **sizes,
        "pool_size": POOL,
        "bare_fwd_bwd_s": bare,
        "teddy_step_s": teddy,
        "ensemble_step_s": ensemble,
        "overhead_vs_fwd_bwd": teddy / bare - 1,
        "ensemble_runtime_reduction": 1 - teddy / ensemble,
    }
    teddy_mem = peak_memory_mb(device, setup, "teddy", 2, 1, device, sizes["batch"], sizes["width"])
    out["teddy_peak_mb"] = teddy_mem
    out["unrolled"] = {}
    for k in KS_COST[:1] if quick else KS_COST:
        log(f"unrolled K={k}")
        t = time_per_step("unrolled", 2, device, sizes, k, repeats=1 if k >= 10 else 2)
        mem = peak_memory_mb(device, setup, "unrolled", 2, k, device, sizes["batch"], sizes["width"])
        out["unrolled"][k] = {"step_s": t, "peak_mb": mem}
    out["unrolled_time_ratio"] = {k: v["step_s"] / teddy for k, v in out["unrolled"].items()}
    out["unrolled_memory_ratio"] = {k: v["peak_mb"] / teddy_mem for k, v in out["unrolled"].items()}
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick, device = args.quick, args.device
    torch.set_num_threads(1)  # one core per measurement: stabler on a shared 2-core machine
    dtype = config().run.dtype if device.type == "cuda" else "float32"
    result = {"host": host(), "device": str(device), "dtype": dtype, "quick": quick, **cost(quick, device)}
    path = write("distill.json", result, args.out)
    print(f"wrote {path}")
    for key in (
        "overhead_vs_fwd_bwd",
        "ensemble_runtime_reduction",
        "unrolled_time_ratio",
        "unrolled_memory_ratio",
    ):
        print(f"{key}: {result[key]}")


if __name__ == "__main__":
    main()
