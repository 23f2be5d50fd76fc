"""Stage distill: build the synthetic set.

``teddy``: per iteration draw a model φ from the pool of weak (prior) models and minimise
CE(φ(A(x̃)), ỹ) + α_bn Σ_l w_l (‖μ_l − μ_l^φ‖₂ + ‖σ²_l − σ²_l^φ‖₂) over the pixels x̃.
``sre2l``: the same objective with the one fully trained base model.
``random``: IPC real training images per class (the honest baseline).

Optimisation batches are fixed up front: batch j holds one image of every class (IPC slot j) and
is seeded by (seed, j), so a batch's result does not depend on what else is synthesised.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from teddy import augment, prepare_data
from teddy.losses import BNStatsRecorder
from teddy.pretrain_pool import load_pool
from teddy.train import to_unit, warmup_cosine
from teddy.utils import atomic_path, read_json, save_torch

SYNTHETIC = "synthetic.pt"
GRID = "grid.png"


def batch_seed(seed: int, slot: int) -> int:
    return seed * 1_000_003 + slot


def random_real(data: dict, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IPC real training images per class, chosen with ``seed`` → ([0,1] images, labels)."""
    rng = np.random.default_rng(seed)
    y = data["train_y"].numpy()
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), ipc, replace=False) for c in np.unique(y)])
    return to_unit(data["train_x"][idx]), data["train_y"][idx].clone()


def init_batch(manifest: dict, cfg, data: dict | None, slot_seed: int) -> torch.Tensor:
    """One image per class: Gaussian noise around the dataset mean, or a real image."""
    n, c, s = manifest["num_classes"], manifest["channels"], manifest["image_size"]
    gen = torch.Generator().manual_seed(slot_seed)
    if cfg.distill.init == "real":
        x, _ = random_real(data, 1, slot_seed)
        return x
    mean = torch.tensor(manifest["mean"]).view(1, c, 1, 1)
    std = torch.tensor(manifest["std"]).view(1, c, 1, 1)
    return (mean + std * torch.randn(n, c, s, s, generator=gen)).clamp(0, 1)


def synthesize_batch(
    x0: torch.Tensor, labels: torch.Tensor, pool: list, cfg, slot_seed: int, device
) -> tuple[torch.Tensor, np.ndarray]:
    """Optimise one batch of pixels; returns the images and per-iteration (ce, bn) losses."""
    d = cfg.distill
    gen = torch.Generator().manual_seed(slot_seed)
    x = x0.clone().to(device).requires_grad_(True)
    labels = labels.to(device)
    opt = torch.optim.Adam([x], lr=d.lr, betas=(0.5, 0.9))
    sched = warmup_cosine(opt, d.iterations)
    recorders = [BNStatsRecorder(model) for model in pool]
    curve = np.zeros((d.iterations, 2), dtype=np.float32)
    for it in range(d.iterations):
        k = int(torch.randint(len(pool), (1,), generator=gen))
        view = augment.jitter(x, d.jitter, gen)
        view = augment.apply_crops(view, augment.sample_crops(len(x), d.crop_scale_min, d.flip, gen))
        with recorders[k].record() as rec:
            logits = pool[k](view)
        ce = F.cross_entropy(logits, labels)
        bn = rec.loss(d.first_bn_weight)
        loss = ce + d.alpha_bn * bn
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        curve[it] = (ce.item(), bn.item())
    return x.detach().cpu(), curve


def save_grid(images: torch.Tensor, labels: torch.Tensor, ipc: int, max_ipc: int, path) -> None:
    """Rows = classes, columns = the first ``max_ipc`` images of each class."""
    order = torch.argsort(labels, stable=True)
    n_classes = int(labels.max()) + 1
    per_class = images[order].view(n_classes, ipc, *images.shape[1:])[:, :max_ipc]
    with atomic_path(path) as tmp:
        torchvision.utils.save_image(
            per_class.reshape(-1, *images.shape[1:]),
            tmp,
            format="png",
            nrow=min(ipc, max_ipc),
            padding=1,
            pad_value=1.0,
        )


def run(cfg, inputs: dict, outputs: dict, *, method: str, ipc: int, seed: int, device, tracker) -> dict:
    """inputs: ``data`` dir, ``pool`` dir; outputs: ``out`` dir (synthetic.pt, grid.png)."""
    data_dir, out = Path(inputs["data"]), Path(outputs["out"])
    manifest = read_json(data_dir / prepare_data.MANIFEST)
    needs_real = method == "random" or cfg.distill.init == "real"
    data = prepare_data.load(data_dir / prepare_data.CACHE) if needs_real else None
    t0 = time.perf_counter()
    metrics: dict = {"method": method, "ipc": ipc, "seed": seed}
    if method == "random":
        images, labels = random_real(data, ipc, seed)
    else:
        if "pool" not in inputs:
            raise ValueError(f"method {method!r} needs the pool: pass --pool (pretrain-pool's folder)")
        pool = load_pool(inputs["pool"], "base" if method == "sre2l" else "prior", device)
        metrics["pool_size"] = len(pool)
        batches, curves = [], []
        labels_one = torch.arange(manifest["num_classes"])
        for slot in range(ipc):
            s = batch_seed(seed, slot)
            x, curve = synthesize_batch(init_batch(manifest, cfg, data, s), labels_one, pool, cfg, s, device)
            batches.append(x)
            curves.append(curve)
        images = torch.cat(batches)
        labels = labels_one.repeat(ipc)
        curve = np.mean(curves, axis=0)
        for it in range(0, len(curve), max(1, len(curve) // 100)):
            tracker.log_metrics({"loss_ce": float(curve[it, 0]), "loss_bn": float(curve[it, 1])}, step=it)
        metrics |= {"final_loss_ce": float(curve[-1, 0]), "final_loss_bn": float(curve[-1, 1])}
        elapsed = time.perf_counter() - t0
        metrics["iter_s"] = elapsed / (ipc * cfg.distill.iterations)
        metrics["images_per_s"] = ipc * manifest["num_classes"] * cfg.distill.iterations / elapsed
    out.mkdir(parents=True, exist_ok=True)
    save_torch(
        {"images": images.float(), "labels": labels.long(), "method": method, "ipc": ipc, "seed": seed},
        out / SYNTHETIC,
    )
    save_grid(images, labels, ipc, cfg.distill.grid_max_ipc, out / GRID)
    metrics["num_images"] = len(images)
    return metrics


def load_synthetic(path_dir: str | Path) -> dict:
    from teddy.utils import load_torch

    return load_torch(Path(path_dir) / SYNTHETIC)
