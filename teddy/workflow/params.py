"""The config keys each job's result depends on (Snakemake params, DVC params, resume fingerprints),
and the recipe keys that name shared data and pool folders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from teddy import config as config_mod
from teddy.config import grid_keys
from teddy.method import registry
from teddy.pool.naming import pool_job_config
from teddy.protocol import algorithm, replicate_config


def job_params(data: Mapping, stage: str, method: str | None = None, member: str | None = None) -> dict:
    """The config one job's result depends on, {dotted key: value} (param_keys): Snakemake's params
    trigger (a change reruns the job; adding a seed, IPC, architecture or another variant schedules
    only the new jobs) and, via result_params, the fingerprint of its resumable checkpoints."""
    return params_of(data, param_keys(data, stage, method, member))


def result_params(data: Mapping, stage: str, selection: Mapping, member: str | None = None) -> dict:
    """The config one job's result depends on: the params its Snakemake rule passes and DVC lists.
    A resumable checkpoint made under other values is stale (teddy.io.checkpoints.fingerprint)."""
    return job_params(data, stage, selection.get("method"), member)


# Snakemake's rules take their paths from here (workflow/rules/*.smk) and schedule plan()'s final
# outputs; dvc.yaml is generated from plan() (`teddy workflow dvc`), so the two cannot drift.


# A study's own jobs write under results/<dataset>/<study>/; the prepared data and the pool are
# shared by every study whose recipe for them is the same, in a folder named by the recipe's
# fingerprint (recipe_keys): never built twice, never shared between different recipes.
def param_keys(data: Mapping, stage: str, method: str | None = None, member: str | None = None) -> list[str]:
    """Dotted config keys one job's result depends on (grid keys left out): Snakemake's params
    trigger, DVC's params and the resumable checkpoints' fingerprint all read these. A variant's
    distill jobs depend on its own entry, so adding or editing one variant reruns only its jobs."""
    keys = ["run.dataset", "run.dtype"]
    grid = grid_keys().get(stage, frozenset())
    if stage == "pretrain_pool":  # replicate (a pool per seed) decides which pools exist: their seeds differ
        section = (
            pool_job_config(data["pretrain_pool"], member.split(":")[0]) if member else data["pretrain_pool"]
        )
        return keys + [f"pretrain_pool.{k}" for k in section if k not in grid]
    section = [k for k in data[stage] if k not in grid]
    if stage == "distill" and method is not None:
        section = registry.get(algorithm(data, method)).distill_keys(section)
    keys += [f"{stage}.{k}" for k in section]
    if stage == "distill" and method in data["distill"]["variants"]:
        keys.append(f"distill.variants.{method}")

    if stage == "relabel":
        keys.append("evaluate.epochs")  # one stored view per student epoch
        if data["evaluate"]["full_data"]:
            keys.append("evaluate.full_data_epochs")  # the full-data row's (teddy.protocol.student_epochs)
    return keys


def lookup(data: Mapping, key: str):
    for part in key.split("."):
        data = data[part]
    return data


def params_of(data: Mapping, keys: list[str]) -> dict:
    return {key: lookup(data, key) for key in keys}


def _fingerprint(values: Mapping) -> str:
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def recipe_keys(data: Mapping) -> dict:
    """{"dataset", "study", "data_key", "pool_key"}: where a config's jobs write (FOLDERS' fields).
    data_key fingerprints the config keys the prepared data depends on, pool_key those of the pool
    and its data; machine keys that do not change the arrays (where the files are, how many loader
    processes, cache or files) are left out, so a study run on another machine finds the same folder."""
    prep = {
        k: v
        for k, v in params_of(data, param_keys(data, "prepare_data")).items()
        if not (k.startswith("prepare_data.") and config_mod.is_machine_key("prepare_data", k.split(".", 1)[1]))
    }
    data_key = _fingerprint(prep)
    pool = params_of(data, param_keys(data, "pretrain_pool"))
    return {
        "dataset": data["run"]["dataset"],
        "study": data["study"]["name"],
        "data_key": data_key,
        "pool_key": _fingerprint({"data": data_key, **pool}),
    }


def replica_keys(data: Mapping) -> dict[int, dict]:
    """Run seed → the recipe_keys of the config its jobs see (teddy.protocol.replicate_config): the
    same pool for every seed, or with pretrain_pool.replicate each seed's own pool_key."""
    return {seed: recipe_keys(replicate_config(data, seed)) for seed in data["run"]["seeds"]}


def pool_recipe(data: Mapping, origin: str) -> dict:
    """The config a pool member of ``origin`` (base / prior / post) depends on, {dotted key: value}:
    recorded with every member its job writes, and compared by every reader of the pool with its own
    config (teddy.pool.members.check_recipe): a pool of another recipe is never drawn from."""
    return params_of(data, param_keys(data, "pretrain_pool", member=origin))
