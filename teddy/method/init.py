"""Where a synthetic image starts (distill.init): Gaussian noise around the dataset mean, a random
real training image, or a real candidate chosen by the teacher's cross-entropy (easiest, or spread
over the ranks: distill.init_pick); and the random real images of the ``random`` method.

A ``batch`` here is distill's batch plan entry (teddy.stages.distill.Batch): its IPC ``slots``,
``classes`` and the ``labels`` of its images."""

from __future__ import annotations

import numpy as np
import torch

from teddy import augment
from teddy.train import to_unit


def random_real(source, ipc: int, seed: int, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """IPC real training images per class, chosen with ``seed`` → ([0,1] images, labels)."""
    rng = np.random.default_rng(seed)
    by_class = source.by_class("train")
    classes = [c for c in by_class if len(by_class[c])] if classes is None else classes
    idx = np.concatenate([rng.choice(by_class[int(c)].numpy(), ipc, replace=False) for c in classes])
    idx = torch.from_numpy(idx)
    return to_unit(source.images("train", idx)), source.labels("train")[idx].clone()


def candidates(source, batch, ipc: int, per_image: int, seed: int) -> torch.Tensor:
    """Training-set indices (slots × classes, n) of real candidates for each image of the batch.

    A class's images are shuffled once per set seed and IPC slot s takes block s of that order, so
    the slots of a set never share a candidate whichever batch or shard they are in; n shrinks to
    what the smallest class of the batch can give every slot."""
    by_class = source.by_class("train")
    n = min([per_image] + [len(by_class[c]) // ipc for c in batch.classes])
    rows = []
    for slot in batch.slots:
        for c in batch.classes:
            order = torch.randperm(len(by_class[c]), generator=torch.Generator().manual_seed(seed * 7919 + c))
            rows.append(by_class[c][order[slot * n : (slot + 1) * n]])
    return torch.stack(rows)


def pick_rank(slot: int, ipc: int, n: int, pick: str, spread: float) -> int:
    """Which of a slot's ``n`` candidates, ranked easiest first, IPC slot ``slot`` keeps.

    ``easiest``: rank 0 for every slot. ``stratified``: the slots of a class spread evenly over the
    easiest ``spread`` share of the ranks (slot 0 the easiest; with spread 1 the last slots the
    hardest), so the set covers the teacher's difficulty range as IPC grows while one image per
    class is still the easiest (coverage-centric selection, Zheng et al. 2023). Each slot ranks only
    its own disjoint candidates, so batches and shards never need each other's scores."""
    if pick == "easiest":
        return 0
    return min(n - 1, int(slot * spread * n / ipc))


@torch.no_grad()
def teacher_choice(
    teacher, images: torch.Tensor, labels: torch.Tensor, views: int, cfg, gen, device, ranks
) -> torch.Tensor:
    """Index into each row of candidate ``images`` (m, n, C, H, W): the candidate at ``ranks[i]``
    (0: the easiest) when ordered by mean teacher CE over ``views`` random-resized crops
    (distill.crop_scale_min, distill.flip), lowest first (ties: the earlier candidate)."""
    m, n = images.shape[:2]
    flat = images.reshape(m * n, *images.shape[2:])
    target = labels.repeat_interleave(n).to(device)
    loss = torch.zeros(m * n)
    step = cfg.evaluate.eval_batch_size
    for _ in range(views):
        crops = augment.sample_crops(m * n, cfg.distill.crop_scale_min, cfg.distill.flip, gen)
        for s in range(0, m * n, step):
            view = augment.apply_crops(flat[s : s + step].to(device), crops[s : s + step])
            ce = torch.nn.functional.cross_entropy(teacher(view), target[s : s + step], reduction="none")
            loss[s : s + step] += ce.cpu()
    loss = loss.view(m, n)
    order = loss.argsort(dim=1, stable=True)
    return order[torch.arange(m), torch.as_tensor(ranks)]


def init_batch(
    manifest: dict,
    cfg,
    source,
    batch,
    seed: int,
    *,
    ipc: int = 1,
    set_seed: int = 0,
    teacher=None,
    device="cpu",
) -> torch.Tensor:
    """One image per (slot, class) of the batch, batch seed ``seed``: Gaussian noise around the
    dataset mean, a random real image (``real``), or a real candidate chosen by the teacher's CE
    (``teacher``: the easiest, or by distill.init_pick, see pick_rank); real candidates come from
    the set's ``ipc`` and ``set_seed`` (see candidates)."""
    d = cfg.distill
    if d.init in ("real", "teacher"):
        idx = candidates(source, batch, ipc, d.init_candidates if d.init == "teacher" else 1, set_seed)
        flat = to_unit(source.images("train", idx.flatten()))
        images = flat.view(*idx.shape, *flat.shape[1:])
        if d.init == "real":
            return images[:, 0]
        gen = torch.Generator().manual_seed(seed)
        n = images.shape[1]
        ranks = [pick_rank(s, ipc, n, d.init_pick, d.init_spread) for s in batch.slots for _ in batch.classes]
        pick = teacher_choice(teacher, images, batch.labels, d.init_views, cfg, gen, device, ranks)
        return images[torch.arange(len(pick)), pick]
    c, s = manifest["channels"], manifest["image_size"]
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor(manifest["mean"]).view(1, c, 1, 1)
    std = torch.tensor(manifest["std"]).view(1, c, 1, 1)
    return (mean + std * torch.randn(len(batch.labels), c, s, s, generator=gen)).clamp(0, 1)
