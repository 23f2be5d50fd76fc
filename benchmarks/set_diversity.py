"""How spread out is each synthetic set within its classes? → benchmarks/results/set_diversity_<name>.json.

Not a timing: an analysis of sets a run already made. For every ``distill/<method>/ipc<K>/seed<S>/
synthetic.pt`` under ``--distill`` (checksums verified) it computes the mean pairwise L2 distance
between images of the same class (pixels in [0, 1], as stored), averaged over classes, and the
paired difference of each method to ``--baseline`` over the seeds both have (mean and 95 % Student-t
interval, the report's ``paired_interval``). Issue 14 uses it to ask whether the teacher's selection
(the easiest of N candidates) makes a set less diverse than random real images of the same size:

    python benchmarks/set_diversity.py --distill /tmp/exp/results/fashion_mnist/distill --ipc 50 \\
        --name fashion_mnist_ipc50

Pixel distance cannot compare sets synthesised from noise with real ones (leftover noise inflates
it), so ``--pool`` measures the same distance between the pool's base model's features instead: the
input of its last Linear layer (a classifier's penultimate features), in eval mode.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, host  # noqa: E402

from teddy.io import artifacts
from teddy.pool import members as pool
from teddy.stages.report import paired_interval  # noqa: E402


def within_class_distance(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean L2 distance between two different images of that class."""
    flat = images.float().flatten(1)
    per_class = []
    for c in labels.unique():
        x = flat[labels == c]
        n = len(x)
        if n > 1:
            per_class.append(float(torch.cdist(x, x).sum() / (n * (n - 1))))
    if not per_class:
        raise ValueError("every class has one image: a within-class distance needs IPC ≥ 2")
    return sum(per_class) / len(per_class)


@torch.no_grad()
def penultimate(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Each image's input to ``model``'s last Linear layer (module order), flattened."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no Linear layer to take features from")
    features: list[torch.Tensor] = []
    hook = linear[-1].register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0].flatten(1)))
    try:
        for start in range(0, len(images), batch):
            model(images[start : start + batch].float())
    finally:
        hook.remove()
    return torch.cat(features)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--distill", type=Path, required=True, help="a results/<dataset>/distill folder")
    parser.add_argument("--ipc", type=int, required=True)
    parser.add_argument("--baseline", default="random")
    parser.add_argument("--name", required=True, help="writes set_diversity_<name>.json")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--pool", type=Path, help="a results/<dataset>/pool folder: measure in its base model's features"
    )
    args = parser.parse_args()
    base_model = pool.load_pool(args.pool, "base", "cpu")[0][0] if args.pool else None
    rows = []
    for folder in sorted(args.distill.glob(f"*/ipc{args.ipc}/seed*")):
        if not (folder / artifacts.SYNTHETIC).is_file():
            continue  # a set still being made
        syn = artifacts.load_synthetic(folder)
        points = syn["images"] if base_model is None else penultimate(base_model, syn["images"])
        rows.append(
            {
                "method": syn["method"],
                "seed": int(folder.name.removeprefix("seed")),
                "within_class_l2": within_class_distance(points, syn["labels"]),
            }
        )
    if not rows:
        parser.error(f"--distill {args.distill}: no */ipc{args.ipc}/seed*/{artifacts.SYNTHETIC} there")
    df = pd.DataFrame(rows)
    if args.baseline not in set(df.method):
        parser.error(f"--baseline {args.baseline}: no such sets at IPC {args.ipc} under {args.distill}")
    base = df[df.method == args.baseline].set_index("seed").within_class_l2
    methods = {}
    for method, group in df.groupby("method"):
        values = group.set_index("seed").within_class_l2
        entry = {"per_seed": {int(s): round(v, 4) for s, v in values.items()}, "mean": round(values.mean(), 4)}
        if method != args.baseline:
            diffs = (values - base).dropna()
            mean, low, high, n = paired_interval(diffs)
            none_if_nan = {
                k: None if v != v else round(v, 4) for k, v in {"mean": mean, "low": low, "high": high}.items()
            }
            entry[f"minus_{args.baseline}"] = none_if_nan | {"n": n}  # one seed: no interval
            entry[f"ratio_to_{args.baseline}"] = round(values[diffs.index].mean() / base[diffs.index].mean(), 4)
        methods[method] = entry
    out = args.out / f"set_diversity_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    measure = "within_class_l2" if args.pool is None else "within_class_l2_base_model_features"
    record = {"distill": str(args.distill), "ipc": args.ipc, "measure": measure, "host": host()}
    if args.pool is not None:
        record["pool"] = str(args.pool)
    out.write_text(json.dumps(record | {"methods": methods}, indent=2) + "\n")
    print(json.dumps(methods, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
