"""The distillation methods: one :class:`Method` spec each, consulted by the config checks, the CLI,
distill, estimate, report and the workflow, and the objectives they optimise. Adding a method = one
entry in METHODS; an objective = its class (any module) and one entry in OBJECTIVES. The schema's
enums (a variant's method, distill.matching) and the CLI's help are filled in from here; nothing else
compares method or objective names.

Torch-free on purpose: the Snakefile and config checks import it at start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Objective:
    """A synthesis objective: its class by import path ("module:Class", imported only when distill
    builds one: the class is ``(cfg, data, device)`` → ``objective(model, view, labels, gen) ->
    (loss, terms)``), whether it reads real class batches every step, and whether
    ``distill.matching`` may name it (an objective of one method only, like unrolled, may not)."""

    path: str
    real_batches: bool = False
    matching: bool = True


OBJECTIVES = {
    "bn": Objective("teddy.method.objectives:BNMatching"),
    "taylor": Objective("teddy.method.objectives:TaylorMatching", real_batches=True),
    "cosine": Objective("teddy.method.objectives:CosineMatching", real_batches=True),
    "unrolled": Objective("teddy.method.objectives:Unrolled", real_batches=True, matching=False),
}
REAL_BATCH_OBJECTIVES = {name for name, o in OBJECTIVES.items() if o.real_batches}  # read real class batches
MATCHING = [name for name, o in OBJECTIVES.items() if o.matching]  # the values of distill.matching


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    pool: str | None  # "base": the fully trained model alone; "members": distill.pool's; None: no model
    objective: str | None  # a key of OBJECTIVES, "matching" (= distill.matching), None: selects images

    @property
    def optimises(self) -> bool:
        """Synthesizes images by optimisation (False: picks real images, one job, no pool)."""
        return self.objective is not None

    def pool_kind(self, cfg: Any) -> str | None:
        """What load_pool draws: 'base', distill.pool ('prior' / 'post' / 'both'), or None."""
        return cfg.distill.pool if self.pool == "members" else self.pool

    def objective_name(self, cfg: Any) -> str | None:
        return cfg.distill.matching if self.objective == "matching" else self.objective

    def distill_keys(self, section: Any) -> list[str]:
        """The keys of the distill config ``section`` (mapping) this method's result depends on: a
        change to any other key leaves its jobs alone. Picking real images reads none of them
        (which images: IPC and seed, from the job; the grid's size is presentation, not result);
        an optimising method reads them all (its objective, initialisation and pool decide which,
        and over-declaring only reruns a job, where under-declaring would keep a stale one)."""
        return list(section) if self.optimises else []

    def reads_real(self, cfg: Any) -> bool:
        """Whether the distill job opens the real training images."""
        d = cfg.distill
        return (
            not self.optimises
            or self.objective_name(cfg) in REAL_BATCH_OBJECTIVES
            or d.init != "noise"
            or d.class_bn > 0
        )

    def make_objective(self, cfg: Any, data, device):
        module, _, cls = OBJECTIVES[self.objective_name(cfg)].path.partition(":")
        return getattr(importlib.import_module(module), cls)(cfg, data, device)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "teddy",
            "Taylor-approximated matching at pool models drawn per iteration (distill.matching)",
            pool="members",
            objective="matching",
        ),
        Method("sre2l", "BN matching at the one fully trained base model", pool="base", objective="bn"),
        Method(
            "unrolled",
            "the exact bi-level objective: K inner SGD steps from a pool model, CE on real images",
            pool="members",
            objective="unrolled",
        ),
        Method("random", "IPC random real training images per class (the baseline)", pool=None, objective=None),
    )
}
BASELINE = "random"  # the real-image method behind the full-data row


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]
