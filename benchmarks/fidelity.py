"""Fidelity of every distillation objective the pipeline offers → benchmarks/results/fidelity.json
(+ fidelity.png).

The reference is the exact bi-level meta-gradient: ∇x̃ of the real-batch CE after K inner SGD steps
(lr η) on the synthetic batch (``distill --method unrolled``). For each objective ``distill`` can run
— ``matching: taylor`` (the paper's first-order term −ηK⟨∇θL_real, ∇θL_syn⟩), ``matching: cosine``
(per-class 1 − cos of gradients) and ``matching: bn`` (CE + BN statistics, the form Teddy runs at
scale) — the figure is cos(∇x̃ exact, ∇x̃ objective), on the same model, synthetic batch and real
batch, mean ± std over draws. Each objective is the pipeline's own class (teddy.method.objectives via
make_objective), so the benchmark measures exactly what ``distill`` optimises.

Model: a weak (one-epoch) BN ConvNet trained on embedded digits, as a prior pool member would be.
Run: make bench-fidelity   (or python benchmarks/fidelity.py [--device cuda] [--quick] [--out DIR]).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config, host, parse_args, write  # noqa: E402

from teddy import models  # noqa: E402
from teddy.data.source import open_source  # noqa: E402
from teddy.method.objectives import make_objective  # noqa: E402

OBJECTIVES = {"taylor": ("teddy", "taylor"), "cosine": ("teddy", "cosine"), "bn": ("teddy", "bn")}
KS, ETAS = (1, 2, 5, 10), (0.01, 0.1)


def trained_digits_model(tmp: Path):
    """A weak (one-epoch) BN ConvNet on embedded digits and the real data it saw."""
    from teddy.stages import prepare_data, pretrain_pool
    from teddy.tracking import NullTracker

    cfg = config(
        "pretrain_pool.epochs=1",
        "pretrain_pool.width=32",
        "pretrain_pool.prior_epochs=[]",
        "pretrain_pool.post_members=1",  # config checks want some pool; train_base ignores it
        "distill.pool=post",
    )
    prepare_data.run(cfg, {}, {"out": tmp}, device="cpu", tracker=NullTracker())
    data = open_source(tmp)
    manifest = {"num_classes": 10, "channels": 1, "image_size": 16, "mean": [0.3], "std": [0.32]}
    spec = models.InputSpec.from_manifest(manifest)
    model = pretrain_pool.train_base(cfg, data, spec, "cpu", NullTracker())
    return model.eval().requires_grad_(False), data


def image_gradient(objective, model, x, labels, seed: int) -> torch.Tensor:
    """∇x̃ of an objective; its real batch is drawn from a generator seeded with ``seed``, so every
    objective of one draw sees the same real images."""
    x = x.detach().requires_grad_(True)
    loss, _ = objective(model, x, labels, torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fidelity(quick: bool, device) -> dict:
    """{objective: {η: {K: {mean, std, draws}}}} of cos(∇x̃ exact unrolled, ∇x̃ objective)."""
    with tempfile.TemporaryDirectory() as tmp:
        model, data = trained_digits_model(Path(tmp))
    model = model.to(device)
    table: dict = {name: {} for name in OBJECTIVES}
    for eta in ETAS:
        for k in KS[:2] if quick else KS:
            cfg = config(f"distill.inner_lr={eta}", f"distill.unroll_steps={k}", "distill.real_batch=16")
            exact = make_objective("unrolled", cfg, data, device)
            objectives = {
                name: make_objective(
                    method,
                    config(
                        f"distill.matching={matching}",
                        "distill.real_batch=16",
                        f"distill.inner_lr={eta}",
                        f"distill.unroll_steps={k}",
                    ),
                    data,
                    device,
                )
                for name, (method, matching) in OBJECTIVES.items()
            }
            cosines: dict = {name: [] for name in OBJECTIVES}
            for draw in range(1 if quick else 8):
                gen = torch.Generator().manual_seed(draw)
                labels = torch.arange(10, device=device)
                x = torch.rand(10, 1, 16, 16, generator=gen).to(device)
                reference = image_gradient(exact, model, x, labels, draw).flatten()
                for name, objective in objectives.items():
                    grad = image_gradient(objective, model, x, labels, draw).flatten()
                    cosines[name].append(F.cosine_similarity(reference, grad, dim=0).item())
            for name, values in cosines.items():
                t = torch.tensor(values)
                spread = t.std().item() if len(t) > 1 else 0.0
                table[name].setdefault(str(eta), {})[str(k)] = {
                    "mean": t.mean().item(),
                    "std": spread,
                    "draws": len(t),
                }
    return table


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ETAS), figsize=(4.2 * len(ETAS), 3.4), sharey=True)
    for ax, eta in zip(axes, ETAS, strict=True):
        for name, by_eta in table.items():
            row = by_eta[str(eta)]
            ks = sorted(row, key=int)
            ax.errorbar(
                [int(k) for k in ks],
                [row[k]["mean"] for k in ks],
                yerr=[row[k]["std"] for k in ks],
                marker="o",
                capsize=3,
                label=f"matching: {name}",
            )
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel="unrolled inner steps K", title=f"inner lr η = {eta}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cos(∇x̃ exact, ∇x̃ objective)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle("Which objectives follow the exact meta-gradient")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    table = fidelity(args.quick, args.device)
    result = {"host": host(), "device": str(args.device), "quick": args.quick, "fidelity": table}
    result["fidelity_eta_0.01"] = {
        name: {k: v["mean"] for k, v in t["0.01"].items()} for name, t in table.items()
    }
    path = write("fidelity.json", result, args.out)
    plot(table, path.parent / "fidelity.png")
    print(f"wrote {path}")
    for name, row in result["fidelity_eta_0.01"].items():
        print(f"{name}: {row}")


if __name__ == "__main__":
    main()
