"""Training helpers shared by pretrain_pool and evaluate: optimizer, schedule, accuracy."""

from __future__ import annotations

import math

import torch
from torch import nn

from teddy.io.checkpoints import load_checkpoint, save_checkpoint
from teddy.runtime.distributed import is_main
from teddy.runtime.preemption import Preempted, preemption


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float):
    if name in ("sgd", "sgd_plain"):  # sgd_plain: DC/DSA/DM's evaluation optimiser (utils.evaluate_synset)
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=name == "sgd"
        )
    if name == "adamw":
        # the fused kernel: one pass over each parameter instead of ~10; a ResNet-18 student's whole
        # step on CPU 1.66x (batch 10) / 1.26x (batch 50) faster at 8 px, equal where convolutions
        # dominate (benchmarks/optimizer.py → results/optimizer.json); one step's update agrees to 7e-6
        params = list(model.parameters())
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    raise ValueError(f"unknown optimizer {name!r}; use sgd, sgd_plain or adamw")


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int = 0):
    """Linear warm-up to the base lr, then cosine decay to 0 over ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def student_schedule(optimizer, name: str, epochs: int, steps_per_epoch: int):
    """The student's lr schedule, stepped once per batch: ``cosine`` (warmup_cosine without warm-up)
    or ``step`` (the lr × 0.1 from epoch ⌊epochs/2⌋ on: DC/DSA/DM's evaluate_synset, which decays
    after epoch ⌊E/2⌋+1 of its E+1)."""
    total = epochs * steps_per_epoch
    if name == "cosine":
        return warmup_cosine(optimizer, total)
    if name == "step":
        decay_at = (epochs // 2) * steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step < decay_at else 0.1)
    raise ValueError(f"unknown schedule {name!r}; use cosine or step")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) of ``model`` on uint8 or [0, 1] images."""
    batches = ((x[s : s + batch_size], y[s : s + batch_size]) for s in range(0, len(x), batch_size))
    return accuracy_of(model, batches, device)


@torch.no_grad()
def accuracy_of(model: nn.Module, batches, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) over an iterable of (images, labels) batches (e.g. a data source's)."""
    was_training = model.training
    model.eval()
    hits1 = hits5 = seen = 0
    for xb, yb in batches:
        xb, yb = to_unit(xb).to(device), yb.to(device)
        logits = model(xb)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits1 += (top[:, 0] == yb).sum().item()
        hits5 += (top == yb[:, None]).any(dim=1).sum().item()
        seen += len(yb)
    model.train(was_training)
    return {"top1": 100.0 * hits1 / seen, "top5": 100.0 * hits5 / seen}


class TrainState:
    """Resumable training state at ``path`` (None: not resumable): model, optimizer, scheduler,
    generator and the loop's own position ``loop``; shared by base-model and student training."""

    def __init__(self, path, model: nn.Module, opt, sched, gen: torch.Generator):
        self.path, self.model, self.opt, self.sched, self.gen = path, model, opt, sched, gen

    def load(self, device) -> dict | None:
        """Restore everything and return the saved loop position, or None when there is nothing to
        resume (no state, or one written for another job: teddy.io.checkpoints.load_checkpoint)."""

        saved = None if self.path is None else load_checkpoint(self.path, device)
        if saved is None:
            return None
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["opt"])
        self.sched.load_state_dict(saved["sched"])
        self.gen.set_state(saved["gen"].cpu())
        return saved["loop"]

    def save(self, loop: dict) -> None:

        if self.path is not None:
            parts = {
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(),
            }
            save_checkpoint(parts | {"gen": self.gen.get_state(), "loop": loop}, self.path)

    def preempt(self, loop: dict, where: str) -> None:
        """When preemption is requested: save and raise Preempted (non-resumable loops ignore it)."""

        if self.path is not None and preemption.requested:
            self.save(loop)
            raise Preempted(f"preempted {where}; state saved to {self.path}")

    def done(self) -> None:

        if self.path is not None and is_main():
            self.path.unlink(missing_ok=True)
