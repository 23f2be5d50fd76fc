"""Evaluation-loop benchmarks → benchmarks/results/evaluate.json.

1. Student-training throughput (images/s) of teddy.stages.evaluate.train_student (batched augmentation on
   tensors, views replayed from a soft-label file) vs the usual pipeline: the same crop + flip
   applied per sample by torchvision transforms in a Dataset, batched by a DataLoader; same model,
   same batch, same KL step. Ratio: ``throughput_ratio_vs_dataloader``. The same model step on
   pre-made batches (no augmentation, no loading) bounds both: ``max_possible_ratio_vs_dataloader``.
2. Replay vs online relabel: wall time of evaluating 3 architectures × 3 seeds on one synthetic set
   (precomputed = teacher once in relabel; online = teacher inside every student's loop).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, config, host, parse_args, sync, write  # noqa: E402

from teddy import cli, models
from teddy.io import artifacts
from teddy.method.losses import soft_kl  # noqa: E402
from teddy.stages import evaluate, relabel
from teddy.train import make_optimizer  # noqa: E402

SPEC = models.InputSpec(10, 1, 28, (0.286,), (0.353,))
N, BATCH = 500, 100


class PerSample(Dataset):
    def __init__(self, images, targets):
        self.images, self.targets = images, targets
        self.tf = v2.Compose(
            [v2.RandomResizedCrop(28, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        )

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.tf(self.images[i]), self.targets[i]


def kl_throughput(batches, n: int, epochs: int, cfg, device) -> float:
    """Images/s of the KL training step on a fresh ConvNet over ``batches`` (re-iterated each epoch;
    batches still on the host are copied to ``device`` inside the timed loop, as a loader's are)."""
    torch.manual_seed(0)
    model = models.create_model("convnet", SPEC, width=64).to(device)
    opt = make_optimizer(model, "adamw", 1e-3, 0.01)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, t in batches:
            x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
            loss = soft_kl(model(x), t, cfg.evaluate.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return epochs * n / (time.perf_counter() - t0)


def dataloader_throughput(images, targets, epochs: int, cfg, device) -> float:
    pin = device.type == "cuda"
    loader = DataLoader(
        PerSample(images, targets), batch_size=BATCH, shuffle=True, num_workers=0, pin_memory=pin
    )
    return kl_throughput(loader, len(images), epochs, cfg, device)


def model_only_throughput(images, targets, epochs: int, cfg, device) -> float:
    """The same model, batch and KL step on fixed, already-batched images on the device: no
    augmentation and no data loading at all, so no training loop can be faster (the ceiling for
    both loops above)."""
    batches = list(zip(images.to(device).split(BATCH), targets.to(device).split(BATCH), strict=True))
    return kl_throughput(batches, len(images), epochs, cfg, device)


def replay_throughput(images, epochs: int, cfg, device) -> float:
    views = relabel.draw_views(len(images), epochs, cfg.relabel, torch.Generator().manual_seed(0))
    soft = {**views, "logits": torch.randn(epochs, len(images), 10).half()}
    soft["replay"] = artifacts.SoftTargets(Path("."), soft)  # as artifacts.load_soft_labels attaches it
    torch.manual_seed(0)
    model = models.create_model("convnet", SPEC, width=64).to(device)
    sync(device)
    t0 = time.perf_counter()
    evaluate.train_student(cfg, model, images, soft, 0, device, lambda e, loss, extra: None)
    sync(device)
    return epochs * len(images) / (time.perf_counter() - t0)


def teddy(*argv: str) -> None:
    if cli.main(list(argv)) != 0:
        raise RuntimeError(f"teddy {' '.join(argv)} failed")


def replay_vs_online(quick: bool, device) -> dict:
    archs, seeds = (("convnet",), (0, 1)) if quick else (("convnet", "mobilenetv2", "resnet18"), (0, 1, 2))
    out = {"archs": archs, "seeds": seeds}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = [
            "--config",
            str(ROOT / "config" / "config.yaml"),
            "--set",
            "tracking.enabled=false",
            "--set",
            f"run.device={device}",
            "--set",
            f"evaluate.epochs={2 if quick else 30}",
            "--set",
            f"pretrain_pool.epochs={2 if quick else 5}",
            "--set",
            f"pretrain_pool.prior_epochs={[1] if quick else [2, 4]}",
        ]
        d, p, s = tmp / "data", tmp / "pool", tmp / "syn"
        teddy("prepare-data", *base, "--out", str(d))
        teddy("pretrain-pool", *base, "--data", str(d), "--out", str(p))
        teddy(
            *[
                "distill",
                *base,
                "--data",
                str(d),
                "--method",
                "random",
                "--ipc",
                "10",
                "--seed",
                "0",
                "--out",
                str(s),
            ]
        )
        for mode in ("precomputed", "online"):
            cfg = [*base, "--set", f"relabel.mode={mode}"]
            t0 = time.perf_counter()
            teddy(
                *[
                    "relabel",
                    *cfg,
                    "--synthetic",
                    str(s),
                    "--pool",
                    str(p),
                    "--seed",
                    "0",
                    "--out",
                    str(tmp / mode),
                ]
            )
            for arch in archs:
                for seed in seeds:
                    teddy(
                        *[
                            "evaluate",
                            *cfg,
                            "--data",
                            str(d),
                            "--synthetic",
                            str(s),
                            "--soft-labels",
                            str(tmp / mode),
                            "--pool",
                            str(p),
                            "--arch",
                            arch,
                            "--seed",
                            str(seed),
                            "--out",
                            str(tmp / f"e_{mode}_{arch}_{seed}"),
                        ]
                    )
            out[f"{mode}_wall_s"] = time.perf_counter() - t0
    out["online_over_precomputed"] = out["online_wall_s"] / out["precomputed_wall_s"]
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick, device = args.quick, args.device
    torch.set_num_threads(1)
    cfg = config("relabel.flip=true", f"evaluate.epochs={2 if quick else 5}", f"evaluate.batch_size={BATCH}")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N, 1, 28, 28, generator=g)
    targets = torch.randn(N, 10, generator=g)
    epochs = cfg.evaluate.epochs
    ours = replay_throughput(images, epochs, cfg, device)
    theirs = dataloader_throughput(images, targets, epochs, cfg, device)
    ceiling = model_only_throughput(images, targets, epochs, cfg, device)
    result = {
        "host": host(),
        "device": str(device),
        "quick": quick,
        "images": N,
        "batch": BATCH,
        "epochs": epochs,
        "model": "convnet width 64, 28x28x1",
        "throughput_images_per_s": ours,
        "dataloader_images_per_s": theirs,
        "throughput_ratio_vs_dataloader": ours / theirs,
        # model step alone on pre-made batches: the most any loop can reach on this model and host
        "model_only_images_per_s": ceiling,
        "max_possible_ratio_vs_dataloader": ceiling / theirs,
        "replay_vs_online": replay_vs_online(quick, device),
    }
    path = write("evaluate.json", result, args.out)
    print(
        f"wrote {path}: throughput ratio {ours / theirs:.2f} (ceiling {ceiling / theirs:.2f}), "
        f"online/precomputed {result['replay_vs_online']['online_over_precomputed']:.2f}"
    )


if __name__ == "__main__":
    main()
