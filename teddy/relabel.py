"""Stage relabel: FKD-style precomputed soft labels.

For each of E epochs and every synthetic image, draw the augmentation (random-resized-crop +
flip, stored as four numbers) and store the teacher's logits on that view (fp16). evaluate
replays the file, so the teacher runs once per synthetic set whatever the number of students.
"""

from __future__ import annotations

from pathlib import Path

import torch

from teddy import augment
from teddy.distill import load_synthetic
from teddy.pretrain_pool import load_pool
from teddy.utils import load_torch, save_torch

SOFT_LABELS = "soft_labels.pt"


@torch.no_grad()
def teacher_logits(teacher, images: torch.Tensor, crops: torch.Tensor, batch: int, device) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch):
        view = augment.apply_crops(
            images[start : start + batch].to(device), crops[start : start + batch].to(device)
        )
        out.append(teacher(view).float().cpu())
    return torch.cat(out)


def run(cfg, inputs: dict, outputs: dict, *, seed: int, device, tracker) -> dict:
    """inputs: ``synthetic`` dir, ``pool`` dir; outputs: ``out`` dir (soft_labels.pt)."""
    syn = load_synthetic(inputs["synthetic"])
    teacher = load_pool(inputs["pool"], "base", device)[0][0]
    images, labels = syn["images"], syn["labels"]
    epochs, r = cfg.evaluate.epochs, cfg.relabel
    gen = torch.Generator().manual_seed(seed)
    crops = torch.stack(
        [augment.sample_crops(len(images), r.crop_scale_min, r.flip, gen) for _ in range(epochs)]
    )  # (E, N, 4)
    logits = torch.stack(
        [teacher_logits(teacher, images, crops[e], cfg.evaluate.eval_batch_size, device) for e in range(epochs)]
    )  # (E, N, K)
    agree = (logits.argmax(-1) == labels[None]).float().mean().item() * 100
    out = Path(outputs["out"])
    out.mkdir(parents=True, exist_ok=True)
    save_torch({"crops": crops, "logits": logits.half(), "labels": labels, "seed": seed}, out / SOFT_LABELS)
    return {
        "method": syn["method"],
        "ipc": syn["ipc"],
        "teacher_agreement": agree,
        "views": epochs * len(images),
    }


def load_soft_labels(path_dir: str | Path) -> dict:
    return load_torch(Path(path_dir) / SOFT_LABELS)
