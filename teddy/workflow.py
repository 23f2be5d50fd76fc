"""What the workflow schedules: job names, the config each job's result depends on, and job
resources. Called by the Snakefile (workflow/rules/common.smk), the CLI (stale-checkpoint
fingerprints) and pretrain_pool (its job list); teddy.config only loads and checks configs."""

from __future__ import annotations

import re
from collections.abc import Mapping

from teddy.config import GRID_KEYS, _variant_keys


def pool_job_names(p) -> list[str]:
    """The pool's jobs for the pretrain_pool config section ``p`` (mapping or dataclass), base first."""
    get = p.get if isinstance(p, dict) else lambda key: getattr(p, key)
    has_prior = bool(get("prior_epochs") or get("prior_targets"))
    priors = [f"prior_s{s}" for s in get("prior_seeds")] if has_prior else []
    priors += [
        f"prior_{arch_slug(a)}_s{s}" for a in get("member_archs") for s in get("prior_seeds") if has_prior
    ]
    return ["base", *priors, *(f"post_{i:03d}" for i in range(get("post_members")))]


def arch_slug(arch: str) -> str:
    """An architecture name as a folder-name part (torchvision:resnet50 → torchvision-resnet50)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", arch).strip("-")


POOL_PRIOR_KEYS = {"prior_epochs", "prior_targets"}
POOL_POST_KEYS = {"prune_ratio", "finetune_epochs", "finetune_lr", "recalib_images"}
POOL_LIST_KEYS = {"prior_seeds", "post_members", "member_archs"}  # which jobs exist, not what one job computes


def pool_job_config(p: dict, kind: str) -> dict:
    """The pretrain_pool keys one job's result depends on (a change reruns only the jobs it affects)."""
    drop = (
        POOL_LIST_KEYS
        | {
            "base": POOL_PRIOR_KEYS | POOL_POST_KEYS,
            "prior": POOL_POST_KEYS | {"checkpoint"},
            "post": POOL_PRIOR_KEYS,
        }[kind]
    )
    return {k: v for k, v in p.items() if k not in drop}


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
    import json

    from teddy import estimate

    key = json.dumps(data, sort_keys=True, default=str)
    if key not in _RUNTIMES:  # one estimate per config and process (Snakemake asks once per rule)
        _RUNTIMES[key] = estimate.runtimes_min(data)
    return _RUNTIMES[key]


def method_params(data: Mapping, method: str) -> dict:
    """The distill config one method's (or variant's) jobs depend on: the variant's keys applied,
    grid keys left out, so adding or changing one variant reruns only that variant's jobs."""
    variant = data["distill"]["variants"].get(method)
    distill = dict(data["distill"]) | (_variant_keys(variant) if variant else {})
    return job_params({"distill": distill}, "distill") | {"algorithm": variant["method"] if variant else method}


def job_params(data: Mapping, *sections: str) -> dict:
    """The config a job's result depends on: its sections minus grid keys.

    Snakemake reruns a job when these change (params trigger), so adding a seed, an IPC or an
    architecture schedules only the new jobs.
    """
    return {s: {k: v for k, v in data[s].items() if k not in GRID_KEYS.get(s, ())} for s in sections}


def result_params(data: Mapping, stage: str, selection: Mapping, member: str | None = None) -> dict:
    """The config one job's result depends on: the params its Snakemake rule passes (a change reruns
    the job), plus the dataset and compute dtype. A resumable checkpoint made under other values
    is stale (teddy.utils.fingerprint)."""
    run = {"run": {k: data["run"][k] for k in ("dataset", "dtype")}}
    if stage == "distill":
        return run | method_params(data, selection["method"])
    if stage == "pretrain_pool" and member:
        return run | {"pretrain_pool": pool_job_config(data["pretrain_pool"], member.split(":")[0])}
    return run | job_params(data, stage)
