import os
import re
import sys

from teddy.config import algorithm, data_file
from teddy.workflow import (
    arch_slug,
    code_files,
    evaluation_grid,
    final_outputs,
    job_params,
    path,
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


def stage_params(stage, method=None, member=None):
    """Config a job's result depends on (teddy.workflow.param_keys); a change reruns the job."""
    return job_params(config, stage, method, member)


def stage_resources(stage):
    return config_stage_resources(config, stage)


def stage_threads(stage):
    return config["resources"][stage]["cpus"]


def prior_base_input(wildcards):
    """Prior trajectories wait for the base model only when they target a fraction of its accuracy."""
    if config["pretrain_pool"]["prior_targets"]:
        return [path("pool_job", "members.json", dataset=wildcards.dataset, job="base")]
    return []


def get_distill_shards(wildcards):
    """random picks real images in one job; optimised methods run distill.shards shard jobs."""
    if not methods.get(algorithm(config, wildcards.method)).optimises:
        return []
    n = config["distill"]["shards"]
    return expand(
        path("distill_shard", "batches.pt"), **wildcards, shard=range(n), nshards=n
    )


def merge_args(shards):
    return "--merge " + " ".join(os.path.dirname(f) for f in shards) if shards else ""


def get_evaluations(wildcards):
    """Every evaluation of the config (the full-data row included): teddy.workflow's plan."""
    return [
        path("evaluate", "metrics.json", **g, dataset=wildcards.dataset)
        for g in evaluation_grid(config)
    ]
