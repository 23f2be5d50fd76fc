"""Stage prepare_data: read a dataset, split, resize, cache as uint8 tensors + manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from teddy import artifacts, datasets
from teddy import config as config_mod
from teddy.artifacts import CACHE
from teddy.artifacts import DATA_MANIFEST as MANIFEST
from teddy.utils import write_json


def resize_uint8(x: np.ndarray, size: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size), bilinear with antialiasing."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if size is None or size == t.shape[-1]:
        return t
    out = F.interpolate(t.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    xf = x.float() / 255.0
    return xf.mean(dim=(0, 2, 3)).tolist(), xf.std(dim=(0, 2, 3)).tolist()


def run(cfg, inputs: dict, outputs: dict, *, device, tracker) -> dict:
    """outputs: ``out`` dir (cache.pt: uint8 tensors, manifest.json)."""
    out = Path(outputs["out"])
    spec = datasets.get(cfg.run.dataset)
    prep = config_mod.to_dict(cfg.prepare_data)
    split = spec.read(prep)
    size = cfg.prepare_data.image_size or spec.native_size
    tensors = {
        "train_x": resize_uint8(split.train_x, size),
        "train_y": torch.from_numpy(split.train_y),
        "val_x": resize_uint8(split.val_x, size),
        "val_y": torch.from_numpy(split.val_y),
    }
    digest = artifacts.save(tensors, out / CACHE)
    mean, std = channel_stats(tensors["train_x"])
    manifest = {
        "dataset": spec.name,
        "classes": list(spec.classes),
        "num_classes": spec.num_classes,
        "channels": spec.channels,
        "image_size": size,
        "train_count": int(len(split.train_y)),
        "val_count": int(len(split.val_y)),
        "train_per_class": np.bincount(split.train_y, minlength=spec.num_classes).tolist(),
        "val_per_class": np.bincount(split.val_y, minlength=spec.num_classes).tolist(),
        "mean": mean,
        "std": std,
        "cache_file": CACHE,
        "cache_sha256": digest,
    }
    write_json(manifest, out / MANIFEST)
    return {"train_count": manifest["train_count"], "val_count": manifest["val_count"]}
