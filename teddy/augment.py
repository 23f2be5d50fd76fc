"""Batched, parameterised augmentation on tensors (no per-sample PIL pipeline).

A crop is four numbers per image, ``(sx, sy, tx, ty)`` — the affine map from output to input
coordinates in [-1, 1]: a random-resized-crop of relative width |sx| and height sy centred at
(tx, ty), horizontally flipped when sx < 0. Storing these numbers is what lets relabel precompute
soft labels that evaluate replays exactly.
"""

from __future__ import annotations

import math

import numpy as np
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


def sample_mix(n: int, mode: str, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Mixing parameters per image → float32 (n, 4): partner index, λ, box centre (cx, cy) in [0, 1].

    λ ~ Beta(α, α) is the weight of the image itself (mixup) or the area it keeps (cutmix);
    mode "none" gives λ = 1 (no partner)."""
    if mode == "none":
        return torch.stack([torch.arange(n).float(), torch.ones(n), torch.zeros(n), torch.zeros(n)], dim=1)
    partner = torch.randperm(n, generator=generator).float()
    rng = np.random.default_rng(
        int(torch.randint(2**62, (1,), generator=generator))
    )  # torch's Beta takes no generator
    lam = torch.from_numpy(rng.beta(alpha, alpha, n)).float()
    centres = torch.rand(n, 2, generator=generator)
    return torch.stack([partner, lam, centres[:, 0], centres[:, 1]], dim=1)


def apply_mix(x: torch.Tensor, partner: torch.Tensor, mix: torch.Tensor, mode: str) -> torch.Tensor:
    """Mix views x (N, C, H, W) with partner views (N, C, H, W) by mix (N, 4) from sample_mix."""
    if mode == "none":
        return x
    lam = mix[:, 1].to(x).view(-1, 1, 1, 1)
    if mode == "mixup":
        return lam * x + (1 - lam) * partner
    h, w = x.shape[-2:]
    side = torch.sqrt(1 - mix[:, 1]).to(x)  # the pasted box covers a (1 − λ) fraction of the image
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    in_y = (ys[None, :] - mix[:, 3:4].to(x)).abs() < side[:, None] / 2
    in_x = (xs[None, :] - mix[:, 2:3].to(x)).abs() < side[:, None] / 2
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return torch.where(box, partner, x)


def render(images: torch.Tensor, views: dict, epoch: int, idx: torch.Tensor) -> torch.Tensor:
    """The augmented views of images[idx] at ``epoch`` (images, views and idx on one device)."""
    crops, mix = views["crops"][epoch], views["mix"][epoch, idx]
    x = apply_crops(images[idx], crops[idx])
    if views["mix_mode"] == "none":
        return x
    partner = mix[:, 0].long()
    return apply_mix(x, apply_crops(images[partner], crops[partner]), mix, views["mix_mode"])
