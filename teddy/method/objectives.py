"""Distillation objectives: ``objective(φ, view, labels, gen) -> (loss, terms)``.

``terms`` is a 1-D tensor of the logged loss terms (names in ``objective.names``); it stays on
the device so the synthesis loop never waits for the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from teddy.method import meta, registry
from teddy.method.losses import BNStatsRecorder, bn_matching_loss, gradient_cosine_loss, layer_weights
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
    """CE + α_bn · BN-statistics matching against the model's running statistics; with
    ``distill.class_bn`` > 0 also + α_bn · class_bn · the same distance between each class's
    synthetic features and that class's own real feature statistics at the model (class-conditional
    targets, computed once per model from ``distill.class_stat_images`` real images per class)."""

    def __init__(self, cfg, data=None, device="cpu"):
        d = cfg.distill
        self.alpha, self.first, self.class_bn = d.alpha_bn, d.first_bn_weight, d.class_bn
        self.recorders: dict[int, BNStatsRecorder] = {}
        self.names = ("ce", "bn", "class_bn") if self.class_bn else ("ce", "bn")
        self.targets: dict[int, dict] = {}
        if self.class_bn:
            if data is None:
                raise ValueError("distill.class_bn needs real images: the dataset was not opened")
            self.data, self.per_class, self.device = data, d.class_stat_images, device

    def __call__(self, model, view, labels, gen):
        rec = self.recorders.setdefault(id(model), BNStatsRecorder(model))
        targets = self.class_targets(model, rec) if self.class_bn else None  # before: it records too
        classes = torch.unique(labels) if self.class_bn else None
        groups = [torch.nonzero(labels == c).flatten() for c in classes] if self.class_bn else None
        with rec.record(groups):
            logits = model(view)
        ce = F.cross_entropy(logits.float(), labels)
        bn = rec.loss(self.first)
        if not self.class_bn:
            return ce + self.alpha * bn, torch.stack([ce, bn])
        weights = layer_weights(len(rec.layers), self.first)
        per_class = [
            bn_matching_loss(
                [m[k] for m in rec.group_means],
                [v[k] for v in rec.group_vars],
                [targets["mean"][int(c)][layer] for layer in range(len(rec.layers))],
                [targets["var"][int(c)][layer] for layer in range(len(rec.layers))],
                weights,
            )
            for k, c in enumerate(classes)
        ]
        cls = torch.stack(per_class).mean()
        return ce + self.alpha * (bn + self.class_bn * cls), torch.stack([ce, bn, cls])

    @torch.no_grad()
    def class_targets(self, model, rec: BNStatsRecorder) -> dict:
        """Per class: every BN layer's input mean and biased variance over that class's first
        ``class_stat_images`` real training images (a fixed draw, so every batch and shard agrees)."""
        key = id(model)
        if key not in self.targets:
            gen = torch.Generator().manual_seed(0)
            out: dict = {"mean": {}, "var": {}}
            for c, idx in self.data.by_class("train").items():
                pick = idx[torch.randperm(len(idx), generator=gen)[: self.per_class]]
                x = to_unit(self.data.images("train", pick)).to(self.device)
                with rec.record():
                    model(x)
                out["mean"][int(c)] = [m.detach() for m in rec.means]
                out["var"][int(c)] = [v.detach() for v in rec.vars]
            self.targets[key] = out
        return self.targets[key]


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
    """The objective ``method`` optimises under ``cfg`` (teddy.method.registry decides which)."""

    return registry.get(method).make_objective(cfg, data, device)
