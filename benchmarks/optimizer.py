"""The student optimizer's step: AdamW as teddy.train.make_optimizer builds it (the fused kernel)
against PyTorch's CPU default (one tensor at a time) and ``foreach``, on the students make run trains
→ benchmarks/results/optimizer.json.

Run: python benchmarks/optimizer.py [--device cuda] [--quick] [--out DIR]. One thread on CPU; the
three variants are interleaved step by step over the repeats so a loaded machine moves them alike;
each figure is the median step (forward + backward + optimizer step) and its spread (min, max).
Before timing, one step from the same weights and batch must give the same parameters in every
variant (to float rounding: the kernel changes speed, not the update; later steps drift apart as
training amplifies rounding, as between any two runs of different kernels).
"""

from __future__ import annotations

import statistics
import time

import torch
from common import host, parse_args, sync, write

from teddy import models
from teddy.train import make_optimizer

# (arch, image size, batch): the quickstart's ResNet-18 at IPC 1 and 10 (digits 8 px, batch 50 caps
# at the set size), the Fashion-MNIST protocol's ResNet-18 (28 px) and a ConvNet
CASES = [("resnet18", 8, 10), ("resnet18", 8, 50), ("resnet18", 28, 50), ("convnet", 28, 50)]
QUICK = [("convnet", 8, 10)]
VARIANTS = {"package (fused)": None, "default (single tensor)": False, "foreach": True}


def optimizer(model, variant):
    if variant is None:
        return make_optimizer(model, "adamw", 2e-3, 0.01)
    return torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, foreach=variant, fused=False)


def one_step_agreement(arch, spec, x, y, device) -> dict[str, float]:
    """Largest parameter difference after one step from the same weights, relative to the update
    the default makes (max |Δθ| over the tensor)."""
    after = {}
    for name, variant in VARIANTS.items():
        torch.manual_seed(0)
        model = models.create_model(arch, spec, width=64).to(device)
        before = [p.detach().clone() for p in model.parameters()]
        opt = optimizer(model, variant)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        after[name] = [(p.detach() - b) for p, b in zip(model.parameters(), before, strict=True)]
    ref = after["default (single tensor)"]
    return {
        name: max(
            float((d - r).abs().max() / r.abs().max().clamp_min(1e-12))
            for d, r in zip(deltas, ref, strict=True)
        )
        for name, deltas in after.items()
    }


def case(arch: str, size: int, batch: int, device, repeats: int) -> dict:
    spec = models.InputSpec(10, 3, size, (0.5,) * 3, (0.25,) * 3)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.arange(batch, device=device) % 10
    agreement = one_step_agreement(arch, spec, x, y, device)
    runs = {}
    for name, variant in VARIANTS.items():
        torch.manual_seed(0)
        model = models.create_model(arch, spec, width=64).to(device)
        runs[name] = (model, optimizer(model, variant), [])
    for step in range(repeats + 2):  # interleaved: one step of each variant in turn
        for model, opt, times in runs.values():
            sync(device)
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(device)
            if step >= 2:
                times.append(time.perf_counter() - t)
    out = {"arch": arch, "image_size": size, "batch": batch, "variants": {}}
    for name, (_model, opt, times) in runs.items():
        out["variants"][name] = {
            "fused": bool(opt.defaults.get("fused")),
            "step_ms_median": 1000 * statistics.median(times),
            "step_ms_min": 1000 * min(times),
            "step_ms_max": 1000 * max(times),
            "one_step_max_rel_diff_vs_default": agreement[name],
        }
    base = out["variants"]["default (single tensor)"]["step_ms_median"]
    out["speedup_package_vs_default"] = base / out["variants"]["package (fused)"]["step_ms_median"]
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if args.device.type == "cpu":
        torch.set_num_threads(1)
    repeats = 3 if args.quick else 15
    results = [case(*c, args.device, repeats) for c in (QUICK if args.quick else CASES)]
    for r in results:
        worst = max(v["one_step_max_rel_diff_vs_default"] for v in r["variants"].values())
        assert worst < 1e-4, f"{r['arch']}: the variants' parameters differ by {worst:.2e} (relative)"
        print(
            f"{r['arch']} {r['image_size']}px batch {r['batch']}: "
            f"package {r['speedup_package_vs_default']:.2f}x the default step"
        )
    write(
        "optimizer.json",
        {"host": host(), "device": str(args.device), "quick": args.quick, "repeats": repeats, "cases": results},
        args.out,
    )


if __name__ == "__main__":
    main()
