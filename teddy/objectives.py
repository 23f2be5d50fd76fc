"""Distillation objectives: ``objective(φ, view, labels, gen) -> (loss, terms)``.

``terms`` is a 1-D tensor of the logged loss terms (names in ``objective.names``); it stays on
the device so the synthesis loop never waits for the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from teddy import meta
from teddy.losses import BNStatsRecorder, gradient_cosine_loss
from teddy.train import to_unit


class RealBatches:
    """Per-class real training batches from the dataset cache, drawn with the batch's generator."""

    def __init__(self, source, per_class: int, device):
        if source is None:
            raise ValueError("this objective needs real images: the dataset was not opened")
        self.source, self.per_class, self.device = source, per_class, device
        self.by_class = source.by_class("train")

    def __call__(self, classes: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx, labels = [], []
        for c in classes.tolist():
            pool = self.by_class[c]
            idx.append(pool[torch.randint(len(pool), (self.per_class,), generator=gen)])
            labels.append(torch.full((self.per_class,), c))
        images = self.source.images("train", torch.cat(idx))
        return to_unit(images).to(self.device), torch.cat(labels).to(self.device)


class BNMatching:
    names = ("ce", "bn")

    def __init__(self, cfg):
        self.alpha, self.first = cfg.distill.alpha_bn, cfg.distill.first_bn_weight
        self.recorders: dict[int, BNStatsRecorder] = {}

    def __call__(self, model, view, labels, gen):
        rec = self.recorders.setdefault(id(model), BNStatsRecorder(model))
        with rec.record():
            logits = model(view)
        ce = F.cross_entropy(logits.float(), labels)
        bn = rec.loss(self.first)
        return ce + self.alpha * bn, torch.stack([ce, bn])


class CosineMatching:
    """Σ_c 1 − cos(∇θ CE(φ(real_c), c), ∇θ CE(φ(x̃_c), c)) over the classes of the batch
    (``distill.matching: cosine``): gradient matching as DC uses it, not the Taylor term."""

    names = ("grad_cos",)

    def __init__(self, cfg, data, device):
        self.real = RealBatches(data, cfg.distill.real_batch, device)

    def __call__(self, model, view, labels, gen):
        params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
        buffers = dict(model.named_buffers())
        x_real, y_real = self.real(labels, gen)
        per = self.real.per_class
        loss = view.new_zeros(())
        for i in range(len(labels)):
            real_loss = F.cross_entropy(
                functional_call(model, (params, buffers), (x_real[i * per : (i + 1) * per],)),
                y_real[i * per : (i + 1) * per],
            )
            g_real = torch.autograd.grad(real_loss, list(params.values()))
            syn_loss = F.cross_entropy(
                functional_call(model, (params, buffers), (view[i : i + 1],)), labels[i : i + 1]
            )
            g_syn = torch.autograd.grad(syn_loss, list(params.values()), create_graph=True)
            loss = loss + gradient_cosine_loss(g_real, g_syn)
        return loss, loss.detach()[None]


class TaylorMatching:
    """The paper's first-order objective (``distill.matching: taylor``): the x̃-dependent part of
    L_real(θ_0) − ηK ⟨∇θ L_real(θ_0), ∇θ L_S(θ_0; x̃)⟩ at the pool model θ_0 = φ, with the real
    batch drawn from the classes of the synthetic batch (η = distill.inner_lr, K = distill.unroll_steps)."""

    names = ("taylor",)

    def __init__(self, cfg, data, device):
        self.real = RealBatches(data, cfg.distill.real_batch, device)
        self.steps, self.inner_lr = cfg.distill.unroll_steps, cfg.distill.inner_lr

    def __call__(self, model, view, labels, gen):
        x_real, y_real = self.real(torch.unique(labels), gen)
        g_real = meta.real_gradient(model, x_real, y_real)
        loss = meta.taylor_surrogate(model, view, labels, g_real, self.steps, self.inner_lr)
        return loss, loss.detach()[None]


class Unrolled:
    """CE on a real batch after K inner SGD steps on the synthetic batch (exact bi-level)."""

    names = ("outer_ce",)

    def __init__(self, cfg, data, device):
        self.real = RealBatches(data, cfg.distill.real_batch, device)
        self.steps, self.inner_lr = cfg.distill.unroll_steps, cfg.distill.inner_lr

    def __call__(self, model, view, labels, gen):
        x_real, y_real = self.real(torch.unique(labels), gen)  # real_batch images per class of the batch
        loss = meta.unrolled_loss(model, view, labels, x_real, y_real, self.steps, self.inner_lr)
        return loss, loss.detach()[None]


def make_objective(method: str, cfg, data, device):
    if method == "unrolled":
        return Unrolled(cfg, data, device)
    if method == "teddy" and cfg.distill.matching in MATCHING:
        return MATCHING[cfg.distill.matching](cfg, data, device)
    return BNMatching(cfg)


MATCHING = {"taylor": TaylorMatching, "cosine": CosineMatching}  # teddy's objectives that read real batches
