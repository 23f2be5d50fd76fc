"""Loss terms as pure functions, plus the hook that collects BatchNorm inputs' statistics."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from teddy.models import bn_layers


class _ChannelStats(torch.autograd.Function):
    """Per-channel mean and biased variance over all dims but 1, in one fused kernel each way:
    forward uses batch norm's statistics kernel; backward is one ``addcmul`` pass,
    dL/dh = gμ/n + 2 gσ² (h − μ)/n (autograd hands zeros, not None, for an unused output). About
    2× faster than autograd through mean() and var() on CPU (the BN statistics are ~25 % of a Teddy
    step there; benchmarks/distill.py)."""

    @staticmethod
    def forward(ctx, h):
        _, mean, invstd = torch.native_batch_norm(h, None, None, None, None, True, 0.0, 0.0)
        ctx.save_for_backward(h, mean)
        return mean, invstd.pow(-2)

    @staticmethod
    def backward(ctx, grad_mean, grad_var):
        h, mean = ctx.saved_tensors
        n = h.numel() // h.shape[1]
        shape = (1, -1) + (1,) * (h.dim() - 2)
        scale = (2.0 / n) * grad_var
        return torch.addcmul((grad_mean / n - scale * mean).view(shape), h, scale.view(shape))


def feature_stats(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of features h (N, C, H, W) → two (C,) tensors."""
    if h.dim() >= 2 and h.numel() // h.shape[1] > 1:  # batch norm's kernel needs > 1 value per channel
        return _ChannelStats.apply(h.contiguous())
    dims = [d for d in range(h.dim()) if d != 1]
    return h.mean(dim=dims), h.var(dim=dims, unbiased=False)


def bn_matching_loss(
    means: Sequence[torch.Tensor],
    variances: Sequence[torch.Tensor],
    running_means: Sequence[torch.Tensor],
    running_vars: Sequence[torch.Tensor],
    weights: Sequence[float],
) -> torch.Tensor:
    """Σ_l w_l (‖μ_l − μ_l^φ‖₂ + ‖σ²_l − σ²_l^φ‖₂); every entry of each sequence is (C_l,)."""
    terms = [
        w * (torch.linalg.vector_norm(m - rm) + torch.linalg.vector_norm(v - rv))
        for m, v, rm, rv, w in zip(means, variances, running_means, running_vars, weights, strict=True)
    ]
    return torch.stack(terms).sum()


def layer_weights(n_layers: int, first: float) -> list[float]:
    """SRe2L's weighting: ``first`` for the first BN layer, 1 for the rest."""
    return [first] + [1.0] * (n_layers - 1)


class BNStatsRecorder:
    """Forward hooks on every BN layer of a model, recording its input batch statistics."""

    def __init__(self, model: nn.Module):
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError("BN matching needs a model with BatchNorm layers")
        self.means: list[torch.Tensor] = []
        self.vars: list[torch.Tensor] = []
        self.groups: list[torch.Tensor] = []
        self.group_means: list[list[torch.Tensor]] = []  # per layer, per group
        self.group_vars: list[list[torch.Tensor]] = []

    def _hook(self, module, inputs, output):
        h = inputs[0].float()
        mean, var = feature_stats(h)
        self.means.append(mean)
        self.vars.append(var)
        if self.groups:
            stats = [feature_stats(h[g]) for g in self.groups]
            self.group_means.append([m for m, _ in stats])
            self.group_vars.append([v for _, v in stats])

    @contextlib.contextmanager
    def record(self, groups: list[torch.Tensor] | None = None):
        """Record every BN layer's input statistics over the batch and, with ``groups`` (index
        tensors into the batch, e.g. one per class), over each group too."""
        self.means, self.vars = [], []
        self.groups, self.group_means, self.group_vars = list(groups or []), [], []
        handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def loss(self, first_weight: float) -> torch.Tensor:
        return bn_matching_loss(
            self.means,
            self.vars,
            [layer.running_mean for layer in self.layers],
            [layer.running_var for layer in self.layers],
            layer_weights(len(self.layers), first_weight),
        )


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), batch-mean; logits (N, K)."""
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * t * t


def kept_fraction(mix: torch.Tensor, mode: str) -> torch.Tensor:
    """The share of each mixed view that is its own image: λ for mixup; for cutmix 1 − the area of
    the pasted box (side √(1 − λ), centred at (cx, cy)) left inside the image after clipping, as
    CutMix adjusts λ."""
    lam = mix[:, 1]
    if mode != "cutmix":
        return lam
    half = torch.sqrt(1 - lam) / 2

    def inside(c):
        return (torch.clamp(c + half, max=1) - torch.clamp(c - half, min=0)).clamp(min=0)

    return 1 - inside(mix[:, 2]) * inside(mix[:, 3])


def mixed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, mix: torch.Tensor, mode: str
) -> torch.Tensor:
    """Hard-label CE of views of images ``idx`` mixed per ``mix`` (sample_mix rows: partner, λ, …):
    λ · CE(own label) + (1 − λ) · CE(partner's label), batch-mean; plain CE when nothing is mixed."""
    own = F.cross_entropy(logits, labels[idx], reduction="none")
    if mode == "none":
        return own.mean()
    lam = kept_fraction(mix, mode).to(logits)
    partner = F.cross_entropy(logits, labels[mix[:, 0].long()], reduction="none")
    return (lam * own + (1 - lam) * partner).mean()


def gradient_cosine_loss(g_real: Sequence[torch.Tensor], g_syn: Sequence[torch.Tensor]) -> torch.Tensor:
    """1 − cos(g_real, g_syn) of two parameter gradients given as matching lists of tensors.

    The gradients are flattened and concatenated over all parameters before the cosine.
    """
    a = torch.cat([g.reshape(-1) for g in g_real])
    b = torch.cat([g.reshape(-1) for g in g_syn])
    return 1 - F.cosine_similarity(a, b, dim=0, eps=1e-12)
