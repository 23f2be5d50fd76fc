"""The package's synthesis step against SRe2L's recover loop → benchmarks/results/peers.json.

Run: make bench-peers   (or python benchmarks/peers.py [--device cuda] [--quick] [--out DIR]).

SRe2L's side is written here from reading their public code (VILA-Lab/SRe2L, commit 8d00cba):
SRe2L/recover/data_synthesis.py ``get_images`` lines 20-106 (Adam with betas (0.5, 0.9) and eps 1e-8
on the image batch, line 46; a cosine learning rate without warm-up set every iteration, lines 47/53;
one RandomResizedCrop + RandomHorizontalFlip for the whole batch, lines 55-59; a random roll of up to
``jitter`` pixels, lines 61-64; cross-entropy plus ``r_bn`` times the BN-statistics distance with the
first layer weighted ``first_bn_multiplier``, lines 67-75; the image priors, computed whatever their
coefficient, lines 78-81; backward, step, per-channel clipping to the valid pixel range, lines 98-104;
``loss.item()`` for the best-image bookkeeping, line 106) and SRe2L/recover/utils.py
(``BNFeatureHook`` line 92: batch mean and biased variance of each BN input, 2-norm distance to the
running statistics; ``lr_cosine_policy`` line 24; ``clip`` line 57; ``get_image_prior_losses``
line 106). The package's side is ``teddy.stages.distill.synthesize_batch`` with the ``bn`` objective
(what ``sre2l`` runs), the real loop.

A third side, ``bare``, is the floor: forward, input backward and an Adam step with cross-entropy
only. Both sides run the same model (the package's ResNet-18 for the image size, BN statistics primed on
random data), batch, iterations and device, one thread on CPU. Repeats interleave the two sides
(A B, B A, ...), so a loaded machine slows both alike; the file reports images/s as median and min
over the repeats and each side's peak memory. Before timing, both objectives are evaluated on one
identical view and must agree (loss and input gradient) to 1e-5 relative, else the run stops.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config, host, parse_args, peak_memory_mb, sync, write  # noqa: E402

from teddy import models  # noqa: E402
from teddy.method.losses import bn_layers  # noqa: E402
from teddy.method.objectives import BNMatching  # noqa: E402
from teddy.stages import distill  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU_SIZES = {32: 64, 64: 32, 224: 8}  # image side → batch (CPU: minutes, not hours)
CUDA_SIZES = {32: 100, 64: 100, 224: 100}
QUICK = {32: 4}  # --quick: the code path in seconds (make test runs it through gpu_check)
ITERATIONS, REPEATS = 4, 5
R_BN, FIRST_BN, JITTER = 0.01, 10.0, 32  # SRe2L/recover/recover.sh and data_synthesis.py defaults


def make_model(size: int, device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.create_model("resnet18", models.InputSpec(100, 3, size, MEAN, STD), width=64)
    with torch.no_grad():  # BN running statistics of (random) data, as a trained teacher has
        model.train()(torch.rand(32, 3, size, size))
    model = model.to(device).eval().requires_grad_(False)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def package_cfg(iterations: int):
    return config(
        f"distill.iterations={iterations}",
        f"distill.alpha_bn={R_BN}",
        f"distill.first_bn_weight={FIRST_BN}",
        "distill.class_bn=0",
        "run.dtype=float32",
    )


# -- SRe2L's recover loop, as their code runs it ------------------------------------------------


class BNFeatureHook:
    def __init__(self, module):
        self.hook = module.register_forward_hook(self.hook_fn)

    def hook_fn(self, module, inputs, output):
        x = inputs[0]
        nch = x.shape[1]
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).contiguous().reshape([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(
            module.running_mean.data - mean, 2
        )

    def close(self):
        self.hook.remove()


def prior_losses(x):
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    l2 = torch.norm(d1) + torch.norm(d2) + torch.norm(d3) + torch.norm(d4)
    l1 = sum((d.abs() / 255.0).mean() for d in (d1, d2, d3, d4)) * 255.0
    return l1, l2


def clip(x):
    for c in range(3):
        x[:, c] = torch.clamp(x[:, c], -MEAN[c] / STD[c], (1 - MEAN[c]) / STD[c])
    return x


def sre2l_loss(model, hooks, view, targets, tv_l2=0.0, l2_scale=0.0):
    outputs = model(view)
    loss_ce = F.cross_entropy(outputs, targets)
    rescale = [FIRST_BN] + [1.0] * (len(hooks) - 1)
    loss_bn = sum(h.r_feature * rescale[i] for i, h in enumerate(hooks))
    _, loss_var_l2 = prior_losses(view)
    loss_l2 = torch.norm(view.reshape(view.shape[0], -1), dim=1).mean()
    return loss_ce + tv_l2 * loss_var_l2 + l2_scale * loss_l2 + R_BN * loss_bn


def sre2l_steps(model, batch: int, size: int, iterations: int, device):
    """``iterations`` steps of SRe2L's loop on one batch (lr 0.25, recover.sh)."""
    hooks = [BNFeatureHook(m) for m in bn_layers(model)]
    targets = (torch.arange(batch) % 100).to(device)
    aug = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()])

    def steps():
        inputs = torch.randn((batch, 3, size, size), requires_grad=True, device=device)
        optimizer = torch.optim.Adam([inputs], lr=0.25, betas=[0.5, 0.9], eps=1e-8)
        best_cost = 1e4
        for iteration in range(iterations):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * iteration / iterations)) * 0.25
            inputs_jit = aug(inputs)
            off1, off2 = random.randint(0, JITTER), random.randint(0, JITTER)
            inputs_jit = torch.roll(inputs_jit, shifts=(off1, off2), dims=(2, 3))
            optimizer.zero_grad()
            loss = sre2l_loss(model, hooks, inputs_jit, targets)
            loss.backward()
            optimizer.step()
            inputs.data = clip(inputs.data)
            if best_cost > loss.item() or iteration == 1:
                best_inputs = inputs.data.clone()  # noqa: F841 - their bookkeeping, kept for its cost

    return steps


# -- the package's step -------------------------------------------------------------------------


def package_steps(model, batch: int, size: int, iterations: int, device):
    cfg = package_cfg(iterations)
    objective = BNMatching(cfg)
    labels = torch.arange(batch) % 100

    def steps():
        gen = torch.Generator().manual_seed(0)
        st = distill.new_state(torch.rand(batch, 3, size, size, generator=gen), cfg, device)
        schedule = distill.draw_schedule(cfg, batch, lambda it, g: 0, gen, device)
        distill.synthesize_batch(st, labels, [model], objective, schedule, cfg, gen, device)

    return steps


def bare_steps(model, batch: int, size: int, iterations: int, device):
    """The floor both sides sit on: forward, input backward and an Adam step with cross-entropy only
    (no augmentation, no BN statistics, no clamp): the BN terms are a reduction over activations the
    forward pass computes anyway, so this is the objective's physical limit."""
    labels = (torch.arange(batch) % 100).to(device)

    def steps():
        x = torch.rand(batch, 3, size, size, device=device, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.25, betas=(0.5, 0.9))
        for _ in range(iterations):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), labels).backward()
            opt.step()

    return steps


def agreement(size: int, device) -> dict:
    """Both objectives on one identical view: loss and input gradient, relative difference."""
    model = make_model(size, device)
    view = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    labels = torch.arange(4).to(device)
    ours_view = view.clone().requires_grad_(True)
    ours, _ = BNMatching(package_cfg(1))(model, ours_view, labels, None)
    (ours_grad,) = torch.autograd.grad(ours, ours_view)
    hooks = [BNFeatureHook(m) for m in bn_layers(model)]
    theirs_view = view.clone().requires_grad_(True)
    theirs = sre2l_loss(model, hooks, theirs_view, labels)
    (theirs_grad,) = torch.autograd.grad(theirs, theirs_view)
    for h in hooks:
        h.close()
    loss_rel = abs(ours.item() - theirs.item()) / abs(theirs.item())
    grad_rel = ((ours_grad - theirs_grad).norm() / theirs_grad.norm()).item()
    return {
        "size": size,
        "loss_ours": ours.item(),
        "loss_sre2l": theirs.item(),
        "loss_rel": loss_rel,
        "grad_rel": grad_rel,
    }


def timed(steps, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    steps()
    sync(device)
    return time.perf_counter() - t0


def measure(size: int, batch: int, iterations: int, repeats: int, device) -> dict:
    model = make_model(size, device)
    sides = {
        "teddy": package_steps(model, batch, size, iterations, device),
        "sre2l": sre2l_steps(model, batch, size, iterations, device),
        "bare": bare_steps(model, batch, size, iterations, device),
    }
    for steps in sides.values():  # warm-up: allocator, kernels, first-call costs
        steps()
    times = {name: [] for name in sides}
    for r in range(repeats):  # rotate the order: each side runs first, middle and last alike
        order = list(sides)[r % 3 :] + list(sides)[: r % 3]
        for name in order:
            times[name].append(timed(sides[name], device))
    images = batch * iterations
    out = {"size": size, "batch": batch, "iterations": iterations, "repeats": repeats}
    for name, ts in times.items():
        out[name] = {
            "images_per_s_median": images / statistics.median(ts),
            "images_per_s_max": images / min(ts),
            "seconds": ts,
        }
    out["speedup_median"] = out["teddy"]["images_per_s_median"] / out["sre2l"]["images_per_s_median"]
    out["speedup_best"] = out["teddy"]["images_per_s_max"] / out["sre2l"]["images_per_s_max"]
    for name in ("teddy", "sre2l"):  # time per step over the bare step's, minus 1
        out[f"{name}_overhead_vs_bare"] = (
            out["bare"]["images_per_s_median"] / out[name]["images_per_s_median"] - 1
        )
    return out


def make_side(name: str, size: int, batch: int, iterations: int, device: str):
    torch.set_num_threads(1)
    model = make_model(size, device)
    build = {"teddy": package_steps, "sre2l": sre2l_steps}[name]
    return build(model, batch, size, iterations, device)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = args.device
    if device.type == "cpu":
        torch.set_num_threads(1)
    sizes = QUICK if args.quick else CUDA_SIZES if device.type == "cuda" else CPU_SIZES
    iterations, repeats = (2, 2) if args.quick else (ITERATIONS, REPEATS)
    random.seed(0)
    checks = [agreement(size, device) for size in sizes]
    for c in checks:
        log(
            f"agreement at {c['size']} px: loss {c['loss_rel']:.2e}, "
            f"input gradient {c['grad_rel']:.2e} (relative)"
        )
        if c["loss_rel"] > 1e-5 or c["grad_rel"] > 1e-5:
            raise SystemExit(
                f"the two objectives disagree at {c['size']} px: {c}; the timing would compare different work"
            )
    rows = []
    for size, batch in sizes.items():
        log(f"{size} px, batch {batch}: {repeats} interleaved repeats of {iterations} steps per side")
        row = measure(size, batch, iterations, repeats, device)
        for name in ("teddy", "sre2l"):
            row[name]["peak_memory_mb"] = peak_memory_mb(
                device, make_side, name, size, batch, iterations, str(device)
            )
        log(
            f"  teddy {row['teddy']['images_per_s_median']:.2f} img/s, "
            f"sre2l {row['sre2l']['images_per_s_median']:.2f} img/s: {row['speedup_median']:.2f}x "
            f"(best {row['speedup_best']:.2f}x); over the bare step: teddy "
            f"{row['teddy_overhead_vs_bare']:+.1%}, sre2l {row['sre2l_overhead_vs_bare']:+.1%}; peak memory "
            f"{row['teddy']['peak_memory_mb']:.0f} vs {row['sre2l']['peak_memory_mb']:.0f} MiB"
        )
        rows.append(row)
    payload = {
        "what": "images/s of one synthesis step: the package (teddy.stages.distill.synthesize_batch, bn "
        "objective) vs SRe2L's recover loop re-implemented from VILA-Lab/SRe2L@8d00cba; same model, batch, "
        "device; interleaved repeats",
        "command": "python benchmarks/peers.py"
        + (" --quick" if args.quick else "")
        + f" --device {device.type}",
        "host": host(),
        "device": str(device),
        "agreement": checks,
        "agreement_max_rel": max(max(c["loss_rel"], c["grad_rel"]) for c in checks),
        "speedup_median": {f"{r['size']}px": r["speedup_median"] for r in rows},
        "teddy_overhead_vs_bare": {f"{r['size']}px": r["teddy_overhead_vs_bare"] for r in rows},
        "sre2l_overhead_vs_bare": {f"{r['size']}px": r["sre2l_overhead_vs_bare"] for r in rows},
        "peak_memory_ratio": {
            f"{r['size']}px": r["teddy"]["peak_memory_mb"] / max(r["sre2l"]["peak_memory_mb"], 1e-9)
            for r in rows
        },
        "sizes": rows,
    }
    path = write("peers.json", payload, args.out)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
