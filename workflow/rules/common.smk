import os
import re
import sys

from teddy.config import stable_copy
from teddy.protocol import algorithm, data_file, hard_labels, replicate_config
from teddy.workflow.plan import (
    KEY_PATTERN,
    command_in,
    commands_by_folder,
    evaluation_grid,
    final_outputs,
    path,
)
from teddy.workflow.deps import code_files
from teddy.workflow.params import job_params, recipe_keys, replica_keys
from teddy.pool.naming import arch_slug, needs_base, pool_job_names
from teddy.workflow.resources import stage_resources as config_stage_resources
from teddy.method import registry

# STUDIES (Snakefile): {study: (resolved config, its file)}. A study's own jobs carry {study} in their
# paths; the data and pool folders carry the fingerprint of their recipe ({data_key}, {pool_key}), and
# run with the config of the first study of that recipe (the others agree on every key they read).
# With pretrain_pool.replicate every run seed has its own pool (REPLICAS: study → seed → keys), whose
# jobs see that seed's config (POOL_CONFIG) and carry --replicate in their plan command.
KEYS = {name: recipe_keys(data) for name, (data, _) in STUDIES.items()}
REPLICAS = {name: replica_keys(data) for name, (data, _) in STUDIES.items()}
BY_KEY = {}
POOL_CONFIG = {}
for _name, _keys in KEYS.items():
    BY_KEY.setdefault(_keys["data_key"], _name)
    for _seed, _replica in REPLICAS[_name].items():
        BY_KEY.setdefault(_replica["pool_key"], _name)
        POOL_CONFIG.setdefault(
            _replica["pool_key"], replicate_config(STUDIES[_name][0], _seed)
        )
# Each job reads its config from a path its wildcards name (shell: study-{wildcards.study}.yaml,
# recipe-{wildcards.data_key}.yaml, ...), never from params: the rerun triggers are the keys a job
# depends on (stage_params), not the whole study.
CONFIG_DIR = ".snakemake/teddy"
for _name, (_, _file) in STUDIES.items():
    stable_copy(_file, CONFIG_DIR, f"study-{_name}")
for _key, _name in BY_KEY.items():
    stable_copy(STUDIES[_name][1], CONFIG_DIR, f"recipe-{_key}")
TEDDY = f"{sys.executable} -m teddy"
CONFIGS = [data for data, _ in STUDIES.values()]
MEMBER_ARCHS = {
    arch_slug(a): a for data in CONFIGS for a in data["pretrain_pool"]["member_archs"]
}
# Every job's teddy command comes from the plan (as dvc.yaml's do), by the folder it writes; a
# rule's shell adds only what Snakemake decides: the config file its wildcards name, threads, log.
COMMANDS = commands_by_folder(CONFIGS)


def command_of(name):
    """params: the plan's command of the job writing the rule's output ``name``."""
    return lambda wildcards, output: command_in(COMMANDS, os.path.dirname(output[name]))


DATA_FILES = {
    data["run"]["dataset"]: data_file(data["run"]["dataset"]) for data in CONFIGS
}


def alternatives(names):
    return "|".join(map(re.escape, sorted(set(names)))) or "(?!)"


wildcard_constraints:
    study=alternatives(STUDIES),
    data_key=KEY_PATTERN,
    pool_key=KEY_PATTERN,
    member_arch=alternatives(MEMBER_ARCHS),
    dataset=alternatives(DATA_FILES),
    method=alternatives(m for data in CONFIGS for m in data["distill"]["methods"]),
    ipc=r"\d+",
    seed=r"\d+",
    arch=alternatives(a for data in CONFIGS for a in data["evaluate"]["archs"]),
    shard=r"\d+",
    index=r"\d{3}",
    nshards=r"\d+",


def study_of(wildcards):
    name = getattr(wildcards, "study", None)
    if name is None:
        name = BY_KEY[getattr(wildcards, "pool_key", None) or wildcards.data_key]
    return name


def cfg(wildcards):
    """The resolved config a job runs with (a pool job's: its replicate's)."""
    pool_key = getattr(wildcards, "pool_key", None)
    if pool_key is not None:
        return POOL_CONFIG[pool_key]
    return STUDIES[study_of(wildcards)][0]


def keys_of(w):
    """The data and pool keys of a job: its study's, with the pool of its run seed for a study job."""
    name = study_of(w)
    if hasattr(w, "study") and hasattr(w, "seed"):
        return REPLICAS[name][int(w.seed)]
    return KEYS[name]


def at(kind, file, **fixed):
    """An input of a job: ``file`` in the ``kind`` folder of the job's study (its data and pool keys)."""
    return lambda w: path(kind, file, **{**keys_of(w), **dict(w.items()), **fixed})


def all_outputs():
    """What the invocation builds: every study's synthetic-set grids and report."""
    return list(dict.fromkeys(o for data in CONFIGS for o in final_outputs(data)))


def stage_params(stage, method=None, member=None):
    """Config a job's result depends on (teddy.workflow.params.param_keys); a change reruns the job."""
    return lambda w: job_params(
        cfg(w), stage, getattr(w, "method", None) if method else None, member
    )


def stage_resources(stage):
    """The largest of the studies' resources for the stage (runtime estimates differ by study)."""
    res = [config_stage_resources(data, stage) for data in CONFIGS]
    return {k: max(r[k] for r in res) for k in res[0]}


def stage_threads(stage):
    return config["resources"][stage]["cpus"]


def prior_base_input(wildcards):
    """Prior trajectories wait for the base model only when they target a fraction of its accuracy."""
    if needs_base(cfg(wildcards)["pretrain_pool"], "prior"):
        return [path("pool_job", "members.json", **dict(wildcards.items()), job="base")]
    return []


def get_pool_jobs(wildcards):
    names = pool_job_names(cfg(wildcards)["pretrain_pool"])
    return [
        path("pool_job", "members.json", **dict(wildcards.items()), job=j)
        for j in names
    ]


def get_distill_shards(wildcards):
    """random picks real images in one job; optimised methods run distill.shards shard jobs."""
    data = cfg(wildcards)
    if not registry.get(algorithm(data, wildcards.method)).optimises:
        return []
    n = data["distill"]["shards"]
    return [
        path(
            "distill_shard", "batches.pt", **dict(wildcards.items()), shard=i, nshards=n
        )
        for i in range(n)
    ]


def evaluate_label_inputs(wildcards):
    """Soft labels and the teacher's pool; nothing under evaluate.labels: hard (no relabel job)."""
    if hard_labels(cfg(wildcards)):
        return []
    return [
        path("relabel", "soft_labels.pt", **dict(wildcards.items())),
        at("pretrain_pool", "manifest.json")(wildcards),
    ]


def get_evaluations(wildcards):
    """Every evaluation of the study (the full-data row included): teddy.workflow's plan."""
    return [
        path("evaluate", "metrics.json", **KEYS[wildcards.study], **g)
        for g in evaluation_grid(cfg(wildcards))
    ]
