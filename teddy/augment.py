"""Batched, parameterised augmentation on tensors (no per-sample PIL pipeline).

A crop is four numbers per image, ``(sx, sy, tx, ty)`` — the affine map from output to input
coordinates in [-1, 1]: a random-resized-crop of relative width |sx| and height sy centred at
(tx, ty), horizontally flipped when sx < 0. Storing these numbers is what lets relabel precompute
soft labels that evaluate replays exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_crops(
    n: int,
    scale_min: float,
    flip: bool,
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Draw ``n`` random-resized-crop parameters → float32 (n, 4)."""
    area = torch.empty(n).uniform_(scale_min, 1.0, generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
    h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    if flip:
        w = torch.where(torch.rand(n, generator=generator) < 0.5, -w, w)
    return torch.stack([w, h, tx, ty], dim=1)


def apply_crops(x: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """Resample images x (N, C, H, W) through crops (N, 4) → (N, C, H, W), bilinear."""
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    crops = crops.to(device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = crops[:, 0], crops[:, 1]
    theta[:, 0, 2], theta[:, 1, 2] = crops[:, 2], crops[:, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def sample_shift(max_shift: int, generator: torch.Generator) -> tuple[int, int]:
    """One random (dy, dx) in [-max_shift, max_shift] for a whole batch (SRe2L jitter)."""
    if max_shift <= 0:
        return 0, 0
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return dy, dx


def roll(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    return torch.roll(x, shifts=shift, dims=(2, 3)) if shift != (0, 0) else x
