"""Post generation's model surgery: structured pruning and exact BatchNorm recalibration."""

from __future__ import annotations

import torch

from teddy import models
from teddy.train import to_unit


def prune(model: torch.nn.Module, ratio: float, spec: models.InputSpec) -> torch.nn.Module:
    """Structured channel pruning (L1 magnitude importance, torch-pruning), classifier kept whole."""
    import torch_pruning as tp

    example = torch.rand(2, spec.channels, spec.image_size, spec.image_size)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    pruner.step()
    return model


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, images: torch.Tensor, batch: int, device) -> None:
    """Set every BN layer's running mean/variance to the exact statistics of its input on ``images``
    with the model in eval mode, layer by layer (earlier layers already recalibrated): the
    statistics BN matching compares synthetic features against, cached from real data."""
    model.eval()
    for layer in models.bn_layers(model):
        total = sq = count = 0

        def hook(module, inputs, output):
            nonlocal total, sq, count
            h = inputs[0].double()
            total = total + h.sum(dim=(0, 2, 3))
            sq = sq + (h * h).sum(dim=(0, 2, 3))
            count += h.numel() // h.shape[1]

        handle = layer.register_forward_hook(hook)
        for start in range(0, len(images), batch):
            model(to_unit(images[start : start + batch]).to(device))
        handle.remove()
        mean = total / count
        var = (sq / count - mean * mean) * count / max(1, count - 1)  # unbiased, as BatchNorm stores it
        layer.running_mean.copy_(mean.float())
        layer.running_var.copy_(var.float())
