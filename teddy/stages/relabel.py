"""Stage relabel: FKD-style soft labels.

For each of E student epochs and every synthetic image, draw the augmentation — a
random-resized-crop + flip (four numbers) and, per ``relabel.mix``, a Mixup/CutMix partner, λ and
box centre — and store it. ``precomputed`` also stores the teacher's logits on every view (fp16),
so the teacher runs once per synthetic set whatever the number of students; ``online`` stores
only the views and evaluate runs the teacher inside the student's loop on the very same views.
The teacher is the fully trained base model, or the mean logits of the pool (``ensemble``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from teddy import augment
from teddy.augment import render
from teddy.io import artifacts
from teddy.io.artifacts import SOFT_LABELS
from teddy.pool.members import Teacher
from teddy.protocol import student_epochs
from teddy.runtime.progress import Progress


def draw_views(n: int, epochs: int, r, gen: torch.Generator) -> dict:
    crops, mixes = [], []
    for _ in range(epochs):
        crops.append(augment.sample_crops(n, r.crop_scale_min, r.flip, gen))
        mixes.append(augment.sample_mix(n, r.mix, r.mix_alpha, gen))
    return {"crops": torch.stack(crops), "mix": torch.stack(mixes), "mix_mode": r.mix}  # (E, N, 4) each


@torch.no_grad()
def teacher_logits(teacher, images: torch.Tensor, views: dict, epoch: int, batch: int) -> torch.Tensor:
    idx = torch.arange(len(images), device=images.device)
    return torch.cat(
        [teacher(render(images, views, epoch, idx[s : s + batch])).cpu() for s in range(0, len(images), batch)]
    )


FP16_MAX = torch.finfo(torch.float16).max  # soft labels are stored in fp16


def check_teacher_logits(logits: torch.Tensor, teacher: str, pool: str) -> None:
    """A teacher whose logits are not finite, or do not fit fp16 (stored as ±inf, which evaluate then
    refuses), has diverged: say so here, where rebuilding the soft labels would not help."""
    finite = torch.isfinite(logits)
    peak = logits[finite].abs().max().item() if finite.any() else float("nan")
    if finite.all() and peak <= FP16_MAX:
        return
    what = "non-finite logits" if not finite.all() else f"logits up to {peak:.4g}, beyond fp16's {FP16_MAX:.0f}"
    raise artifacts.ArtifactError(
        f"relabel.teacher {teacher!r} from {pool} gives {what}: the teacher has diverged (see its val "
        "top-1 in that pool's metrics.json); retrain the pool with a lower pretrain_pool.lr or more "
        "pretrain_pool.warmup_epochs — rebuilding the soft labels alone gives the same"
    )


def run(cfg, inputs: dict, outputs: dict, *, seed: int, device, tracker) -> dict:
    """inputs: ``synthetic`` dir, ``pool`` dir; outputs: ``out`` dir (soft_labels.pt)."""
    syn = artifacts.load_synthetic(inputs["synthetic"])
    images, labels = syn["images"].to(device), syn["labels"]
    r = cfg.relabel
    epochs = student_epochs(cfg, syn["method"], syn["ipc"])  # one stored view per student epoch
    views = draw_views(len(images), epochs, r, torch.Generator().manual_seed(seed))
    record = {**views, "labels": labels, "seed": seed, "mode": r.mode, "teacher": r.teacher}
    record |= {"method": syn["method"], "ipc": syn["ipc"], "synthetic_sha256": syn["sha256"]}
    metrics = {"method": syn["method"], "ipc": syn["ipc"], "views": epochs * len(images)}
    out = Path(outputs["out"])
    out.mkdir(parents=True, exist_ok=True)
    if r.mode == "precomputed":
        teacher = Teacher(inputs["pool"], r.teacher, device, cfg)

        dev_views = {**views, "crops": views["crops"].to(device), "mix": views["mix"].to(device)}
        agree = 0.0
        step = r.shard_epochs or epochs
        shards = []
        progress = Progress(f"relabel {syn['method']} ipc{syn['ipc']}", epochs)
        for start in range(0, epochs, step):
            stop = min(epochs, start + step)
            per_epoch = []
            for e in range(start, stop):
                per_epoch.append(teacher_logits(teacher, images, dev_views, e, cfg.evaluate.eval_batch_size))
                progress.update(e + 1)  # per epoch: one shard can be the whole run
            logits = torch.stack(per_epoch)  # (E_shard, N, K)
            check_teacher_logits(logits, r.teacher, inputs["pool"])
            agree += (logits.argmax(-1) == labels[None]).float().sum().item()
            part = artifacts.pack_logits(logits, r.topk)
            if r.topk is None and r.shard_epochs is None:
                record |= part  # the small datasets: everything in soft_labels.pt
            else:
                name = f"logits_e{start:04d}-{stop:04d}.pt"
                shards.append(
                    {"file": name, "start": start, "stop": stop, "sha256": artifacts.save(part, out / name)}
                )
        if shards:
            record |= {"logit_shards": shards, "num_classes": int(logits.shape[-1]), "topk": r.topk}
        metrics["teacher_agreement"] = agree / (epochs * len(labels)) * 100
    artifacts.save(record, out / SOFT_LABELS)
    # what evaluate reads: soft_labels.pt (views, and the logits unless sharded) + any logit shards
    metrics["soft_label_bytes"] = (out / SOFT_LABELS).stat().st_size + artifacts.soft_label_bytes(
        out, record.get("logit_shards", [])
    )
    return metrics
