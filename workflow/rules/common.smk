import os
import re
import sys

from teddy.config import algorithm, data_file, full_data_ipc
from teddy.workflow import (
    arch_slug,
    job_params,
    method_params,
    pool_job_config,
    pool_job_names,
)
from teddy.workflow import stage_resources as config_stage_resources
from teddy import methods

DATASET = config["run"]["dataset"]
DATA_FILE = data_file(DATASET)
TEDDY = f"{sys.executable} -m teddy"
CONFIG_ARG = f"--config {RESOLVED_CONFIG}"


MEMBER_ARCHS = {arch_slug(a): a for a in config["pretrain_pool"]["member_archs"]}


wildcard_constraints:
    member_arch="|".join(map(re.escape, MEMBER_ARCHS)) or "(?!)",
    dataset=DATASET,
    method="|".join(map(re.escape, config["distill"]["methods"])),
    ipc=r"\d+",
    seed=r"\d+",
    arch="|".join(map(re.escape, config["evaluate"]["archs"])),
    shard=r"\d+",
    index=r"\d{3}",
    nshards=r"\d+",


def stage_params(*sections):
    """Config a rule's result depends on (grid keys excluded); a change reruns the rule."""
    return job_params(config, *sections)


def stage_resources(stage):
    return config_stage_resources(config, stage)


def stage_threads(stage):
    return config["resources"][stage]["cpus"]


def pool_params(kind):
    return {"pretrain_pool": pool_job_config(config["pretrain_pool"], kind)}


def prior_base_input(wildcards):
    """Prior trajectories wait for the base model only when they target a fraction of its accuracy."""
    if config["pretrain_pool"]["prior_targets"]:
        return [f"results/{wildcards.dataset}/pool/base/members.json"]
    return []


def get_distill_shards(wildcards):
    """random picks real images in one job; optimised methods run distill.shards shard jobs."""
    if not methods.get(algorithm(config, wildcards.method)).optimises:
        return []
    n = config["distill"]["shards"]
    return expand(
        "results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/shards/{shard}-of-{n}/batches.pt",
        **wildcards,
        shard=range(n),
        n=n,
    )


def merge_args(shards):
    return "--merge " + " ".join(os.path.dirname(f) for f in shards) if shards else ""


FULL_IPC = full_data_ipc(config)  # None unless evaluate.full_data


def get_evaluations(wildcards):
    pattern = (
        "results/{dataset}/evaluate/{method}/ipc{ipc}/{arch}/seed{seed}/metrics.json"
    )
    grid = dict(
        dataset=wildcards.dataset,
        arch=config["evaluate"]["archs"],
        seed=config["run"]["seeds"],
    )
    found = expand(
        pattern,
        method=config["distill"]["methods"],
        ipc=config["distill"]["ipcs"],
        **grid,
    )
    if FULL_IPC is not None and FULL_IPC not in config["distill"]["ipcs"]:
        found += expand(
            pattern, method=methods.BASELINE, ipc=FULL_IPC, **grid
        )  # the upper-bound row
    return found


def get_final_outputs():
    grids = expand(
        "results/{dataset}/distill/{method}/ipc{ipc}/seed{seed}/grid.png",
        dataset=DATASET,
        method=config["distill"]["methods"],
        ipc=config["distill"]["ipcs"],
        seed=config["run"]["seeds"],
    )
    tables = expand(
        "results/{dataset}/report/{name}",
        dataset=DATASET,
        name=["summary.csv", "summary.md", "accuracy.png"],
    )
    return grids + tables
