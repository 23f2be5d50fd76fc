"""The exact bi-level objective and its first-order (Taylor) surrogate.

    min_x̃ L_real(θ_K(x̃)),  θ_{k+1} = θ_k − η ∇θ L_S(θ_k; x̃),  θ_0 = φ's weights

``unrolled_loss`` back-propagates through the K inner steps (cost O(K)); Teddy replaces it by
L_real(θ_0) − ηK ⟨∇θ L_real(θ_0), ∇θ L_S(θ_0; x̃)⟩, whose x̃-gradient ``taylor_surrogate`` gives.
BatchNorm layers use their running statistics (eval mode) so every forward is a pure function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}


def unrolled_loss(
    model: nn.Module,
    x_syn: torch.Tensor,
    y_syn: torch.Tensor,
    x_real: torch.Tensor,
    y_real: torch.Tensor,
    steps: int,
    inner_lr: float,
) -> torch.Tensor:
    """CE on the real batch after ``steps`` SGD steps on (x_syn, y_syn) from the model's weights;
    differentiable w.r.t. x_syn through every inner step."""
    buffers = dict(model.named_buffers())
    params = _params(model)
    for _ in range(steps):
        inner = F.cross_entropy(functional_call(model, (params, buffers), (x_syn,)), y_syn)
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        params = {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    return F.cross_entropy(functional_call(model, (params, buffers), (x_real,)), y_real)


def real_gradient(model: nn.Module, x_real: torch.Tensor, y_real: torch.Tensor) -> list[torch.Tensor]:
    """∇θ L_real(θ_0), detached."""
    params = _params(model)
    loss = F.cross_entropy(functional_call(model, (params, dict(model.named_buffers())), (x_real,)), y_real)
    return [g.detach() for g in torch.autograd.grad(loss, list(params.values()))]


def taylor_surrogate(
    model: nn.Module,
    x_syn: torch.Tensor,
    y_syn: torch.Tensor,
    g_real: list[torch.Tensor],
    steps: int,
    inner_lr: float,
) -> torch.Tensor:
    """−ηK ⟨∇θ L_real(θ_0), ∇θ L_S(θ_0; x̃)⟩: the x̃-dependent part of the first-order expansion."""
    params = _params(model)
    inner = F.cross_entropy(functional_call(model, (params, dict(model.named_buffers())), (x_syn,)), y_syn)
    g_syn = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    dot = sum((a * b).sum() for a, b in zip(g_real, g_syn, strict=True))
    return -inner_lr * steps * dot
