"""A job's SLURM resources: the config's per-stage cpus/memory, runtime from teddy.estimate."""

from __future__ import annotations

import json
from collections.abc import Mapping


def stage_resources(data: Mapping, stage: str) -> dict:
    """Snakemake rule resources of a stage from ``resources.<stage>``: runtime (minutes) ×
    ``resources.runtime_scale[dataset]``, or with runtime 0 twice the largest job's time that
    ``teddy estimate`` derives from the config, + 10 min; the slurm executor turns them into
    --time/--mem/--cpus-per-task."""
    res = data["resources"][stage]
    scale = data["resources"]["runtime_scale"].get(data["run"]["dataset"], 1)
    runtime = res["runtime"] * scale if res["runtime"] else _estimated_runtimes(data)[stage]
    return {
        "runtime": max(1, round(runtime)),
        "mem_mb": res["mem_mb"],
        "cpus_per_task": res["cpus"],
    }


_RUNTIMES: dict[str, dict] = {}


def _estimated_runtimes(data: Mapping) -> dict:
    from teddy import estimate  # loads torch: only for a runtime of 0 (paper configs), not every DAG

    key = json.dumps(data, sort_keys=True, default=str)
    if key not in _RUNTIMES:  # one estimate per config and process (Snakemake asks once per rule)
        _RUNTIMES[key] = estimate.runtimes_min(data)
    return _RUNTIMES[key]
