"""Is a run's number a result? Checks that name a diverged or degenerate run (its metrics carry
``health``: a list of plain-language problems, empty when none), so that reports and logs show it
as a failure instead of a data point. Pure functions; stages call them on what they measured."""

from __future__ import annotations

import math
from collections.abc import Sequence

DIVERGED_GROWTH = 10.0  # a training loss this many times its first epoch's value has diverged
CHANCE_SE = 3.0  # accuracy within this many binomial standard errors of chance is chance


def loss_problems(losses: Sequence[float], what: str = "training loss") -> list[str]:
    """Why per-epoch (or per-step) ``losses`` say the run diverged: a non-finite value, or growth
    by more than DIVERGED_GROWTH× over the first one."""
    for step, value in enumerate(losses, 1):
        if not math.isfinite(value):
            return [f"diverged: non-finite {what} ({value}) from epoch {step}"]
    if len(losses) >= 2 and losses[0] > 0 and losses[-1] > DIVERGED_GROWTH * losses[0]:
        return [f"diverged: {what} grew {losses[-1] / losses[0]:.3g}x over its first epoch"]
    return []


def chance_top1(num_classes: int) -> float:
    return 100.0 / num_classes


def chance_se(num_classes: int, images: int) -> float:
    """One binomial standard error (%) of guessing among ``num_classes`` on ``images``."""
    p = 1.0 / num_classes
    return 100.0 * math.sqrt(p * (1 - p) / max(1, images))


def at_chance(top1: float, num_classes: int, images: int) -> bool:
    """``top1`` (%) on ``images`` is not distinguishable from guessing among ``num_classes``: within
    CHANCE_SE binomial standard errors of 100/num_classes (or not a number at all)."""
    if not math.isfinite(top1):
        return True
    return top1 <= chance_top1(num_classes) + CHANCE_SE * chance_se(num_classes, images)


def below_chance(top1: float, num_classes: int, images: int) -> bool:
    """``top1`` is clearly worse than guessing: more than CHANCE_SE standard errors below chance."""
    return top1 < chance_top1(num_classes) - CHANCE_SE * chance_se(num_classes, images)


def accuracy_problems(top1: float, num_classes: int, images: int, what: str = "val top-1") -> list[str]:
    if at_chance(top1, num_classes, images):
        return [
            f"at chance: {what} {top1:.2f} % on {images} images, chance is {chance_top1(num_classes):.2f} %"
        ]
    return []
