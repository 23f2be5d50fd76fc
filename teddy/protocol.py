"""The evaluation protocol's rules, shared by the plan, the stages and the report: which method a
variant runs, the full-data reference row (its IPC, whether it is a row of its own) and the student
epochs of a set. Each takes a config in either shape (teddy.config.plain)."""

from __future__ import annotations

from typing import Any

from teddy.config import plain as config_plain
from teddy.data import datasets
from teddy.method import registry


def data_file(dataset: str) -> str:
    """The file prepare_data writes besides its manifest: cache.pt (arrays) or index.json (image files)."""
    return "index.json" if datasets.get(dataset).files else "cache.pt"


def full_data_ipc(data: Any) -> int | None:
    """IPC of the full-data reference row (random real images at the smallest class's size: the
    whole training set of a balanced dataset), or None when evaluate.full_data is off."""
    plain = config_plain(data)
    if not plain["evaluate"]["full_data"]:
        return None
    return datasets.get(plain["run"]["dataset"]).min_train_per_class(plain["prepare_data"])


def full_data_row(data: Any, full: int | None = None) -> int | None:
    """IPC of the full-data row as a row of its own: method BASELINE at full_data_ipc when
    evaluate.full_data is on and that IPC is not one of distill.ipcs (else that run is the
    baseline's own row, with the sets' epochs and students); None otherwise. The one rule the
    evaluation grid, the student epochs and the report's naming share. ``full``: full_data_ipc(data)
    when the caller has it (for image folders it counts every class's files)."""
    plain = config_plain(data)
    full = full_data_ipc(plain) if full is None else full
    return full if full is not None and full not in plain["distill"]["ipcs"] else None


def student_epochs(data: Any, method: str, ipc: int) -> int:
    """Student epochs of the set (``method``, ``ipc``), which are also the relabel views stored per
    image: evaluate.full_data_epochs for the full-data row when set (its epochs are the whole
    training set), else evaluate.epochs."""
    plain = config_plain(data)
    e = plain["evaluate"]
    if e["full_data_epochs"] is not None and method == registry.BASELINE and ipc == full_data_row(plain):
        return e["full_data_epochs"]
    return e["epochs"]


def algorithm(data: Any, name: str) -> str:
    """The method behind a method or variant name (``data``: config mapping or frozen config)."""
    variants = config_plain(data)["distill"]["variants"]
    return variants[name]["method"] if name in variants else name


def hard_labels(data: Any) -> bool:
    """evaluate.labels is hard: students learn each image's own label, no relabel job runs."""
    return config_plain(data)["evaluate"]["labels"] == "hard"


def uses_pool(data: Any) -> bool:
    """Whether any job reads the pool: relabel's teacher (soft labels) or a method that synthesizes
    from its models. Under hard labels with only real-image methods no pool is trained."""
    plain = config_plain(data)
    if not hard_labels(plain):
        return True
    return any(registry.get(algorithm(plain, m)).optimises for m in plain["distill"]["methods"])


def replicate_config(data: Any, seed: int) -> dict:
    """The config run seed ``seed``'s jobs see: with pretrain_pool.replicate on, the pool's seeds
    offset by it (pretrain_pool.seed + S, each prior seed + S: pool S); unchanged otherwise."""
    plain = config_plain(data)
    p = plain["pretrain_pool"]
    if not p["replicate"]:
        return plain
    pool = {**p, "seed": p["seed"] + seed, "prior_seeds": [s + seed for s in p["prior_seeds"]]}
    return {**plain, "pretrain_pool": pool}
