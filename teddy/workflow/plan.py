"""The stage table: every job of a config (rule, DVC stage name, teddy command, inputs, outputs,
params) and the folders they live in.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from teddy.config import RESOLVED
from teddy.method import registry
from teddy.pool.naming import arch_slug, needs_base, parse_member, pool_job_names
from teddy.protocol import algorithm, full_data_row, hard_labels, replicate_config, uses_pool
from teddy.workflow.params import param_keys, recipe_keys, replica_keys

FOLDERS = {
    "prepare_data": "results/{dataset}/data/{data_key}",
    "pool_job": "results/{dataset}/pool/{pool_key}/{job}",  # base, prior_s<S>, prior_<arch>_s<S>, post_<III>
    "pretrain_pool": "results/{dataset}/pool/{pool_key}",
    "distill_shard": "results/{dataset}/{study}/distill/{method}/ipc{ipc}/seed{seed}/shards/{shard}-of-{nshards}",  # noqa: E501
    "distill": "results/{dataset}/{study}/distill/{method}/ipc{ipc}/seed{seed}",
    "relabel": "results/{dataset}/{study}/relabel/{method}/ipc{ipc}/seed{seed}",
    "evaluate": "results/{dataset}/{study}/evaluate/{method}/ipc{ipc}/{arch}/seed{seed}",
    "report": "results/{dataset}/{study}/report",
}
KEY_PATTERN = r"[0-9a-f]{10}"
REPORT_FILES = ("summary.csv", "summary.md", "accuracy.png", "accuracy.json", "metrics.json", "provenance.json")
CHECKSUM = (
    ".sha256"  # teddy.io.artifacts.CHECKSUM_SUFFIX (not imported here: it would load torch into Snakemake)
)


def declared(folder: str, files: tuple[str, ...], checksummed: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A job's outputs when it shares its folder (with shard subfolders): ``files``, each
    ``checksummed`` artifact with its checksum record, and the resolved config the job writes
    beside them. DVC pushes and pulls exactly these; a file left out (a checksum record) would be
    lost on a round trip and the readers would then refuse the artifact."""
    names = [*files, *(n for a in checksummed for n in (a, a + CHECKSUM)), RESOLVED]
    return tuple(f"{folder}/{n}" for n in names)


def path(kind: str, file: str = "", **fields) -> str:
    """``FOLDERS[kind]`` (+ ``/file``) with the given fields filled; the others stay {wildcards}."""
    folder = re.sub(r"\{(\w+)\}", lambda m: str(fields.get(m[1], m[0])), FOLDERS[kind])
    return f"{folder}/{file}" if file else folder


@dataclass(frozen=True)
class Job:
    stage: str  # the Snakemake rule
    name: str  # the DVC stage name
    command: tuple[str, ...]  # `teddy` arguments after the config options
    deps: tuple[str, ...]  # files and folders the job reads (besides its code)
    outs: tuple[str, ...]  # what it writes: a folder it owns whole, or files
    params: tuple[str, ...]  # dotted config keys (param_keys)
    code: str  # the stage whose code_files() it runs


def _pool_jobs(data: Mapping, w: dict, replicate: int | None = None) -> list[Job]:
    """The pool's jobs (``data``: the config its seeds come from; ``replicate``: the run seed whose
    own pool it is, pretrain_pool.replicate)."""
    p = data["pretrain_pool"]
    own = ("--replicate", str(replicate)) if replicate is not None else ()
    data_dir, base = path("prepare_data", **w), path("pool_job", job="base", **w)
    jobs = []
    for name in pool_job_names(p):
        kind, index, arch = parse_member(p, name)
        member = {"base": "base", "post": f"post:{index:03d}"}.get(kind) or (
            f"prior:{index}" if arch == p["arch"] else f"prior:{arch}:{index}"
        )
        base_first = needs_base(p, kind)
        out = path("pool_job", job=name, **w)
        jobs.append(
            Job(
                stage={"base": "pretrain_pool_base", "post": "pretrain_pool_post"}.get(
                    kind, "pretrain_pool_prior" if arch == p["arch"] else "pretrain_pool_prior_arch"
                ),
                name=f"pretrain_pool_{name}_{w['pool_key']}",
                command=(
                    "pretrain-pool",
                    "--data",
                    data_dir,
                    *(("--base", base) if base_first else ()),
                    "--member",
                    member,
                    *own,
                    "--out",
                    out,
                ),
                deps=(data_dir, *((base,) if base_first else ())),
                outs=(out,),
                params=tuple(param_keys(data, "pretrain_pool", member=member)),
                code="pretrain_pool",
            )
        )
    folders = [j.outs[0] for j in jobs]
    pool = path("pretrain_pool", **w)
    jobs.append(
        Job(
            stage="pretrain_pool",
            name=f"pretrain_pool_{w['pool_key']}",
            command=("pretrain-pool", "--assemble", *folders, *own, "--out", pool),
            deps=tuple(folders),
            outs=declared(pool, ("manifest.json", "metrics.json")),
            params=(),
            code="pretrain_pool",
        )
    )
    return jobs


def evaluation_grid(data: Mapping) -> list[dict]:
    """(method, ipc, arch, seed) of every evaluation, the full-data row included."""
    d, e = data["distill"], data["evaluate"]
    sets = [(m, i) for m in d["methods"] for i in d["ipcs"]]
    full = full_data_row(data)
    upper = (registry.BASELINE, full) if full is not None else None
    if upper:
        sets.append(upper)  # the upper-bound row, on evaluate.full_data_archs
    return [
        {"method": m, "ipc": i, "arch": a, "seed": s}
        for m, i in sets
        for a in ((e["full_data_archs"] or e["archs"]) if (m, i) == upper else e["archs"])
        for s in data["run"]["seeds"]
    ]


def plan(data: Mapping) -> list[Job]:
    """Every job of the resolved config ``data`` in an order that respects dependencies."""
    w = recipe_keys(data)
    data_dir = path("prepare_data", **w)
    replicas = replica_keys(data)  # run seed → where its pool is (one pool unless pretrain_pool.replicate)
    jobs = [
        Job(
            "prepare_data",
            f"prepare_data_{w['data_key']}",
            ("prepare-data", "--out", data_dir),
            (),
            (data_dir,),
            tuple(param_keys(data, "prepare_data")),
            "prepare_data",
        )
    ]
    if uses_pool(data):
        built = set()
        for seed, keys in replicas.items():
            if keys["pool_key"] not in built:
                built.add(keys["pool_key"])
                # seed 0's offset is none: its pool is the one pool of this recipe without replicate
                own = seed if data["pretrain_pool"]["replicate"] and seed else None
                jobs += _pool_jobs(replicate_config(data, seed), keys, own)
    hard = hard_labels(data)  # no relabel: students learn the images' own labels
    grid = evaluation_grid(data)
    sets = list(dict.fromkeys((g["method"], g["ipc"], g["seed"]) for g in grid))
    for method, ipc, seed in sets:
        s = {"method": method, "ipc": ipc, "seed": seed}
        pool = path("pretrain_pool", **replicas[seed])
        manifest = f"{pool}/manifest.json"
        tag = f"{w['study']}_{method}_ipc{ipc}_seed{seed}"
        syn = path("distill", **w, **s)
        keys = tuple(param_keys(data, "distill", method=method))
        selection = ("--method", method, "--ipc", str(ipc), "--seed", str(seed))
        shards = []
        if registry.get(algorithm(data, method)).optimises:
            n = data["distill"]["shards"]
            for i in range(n):
                shard = path("distill_shard", **w, **s, shard=i, nshards=n)
                shards.append(shard)
                jobs.append(
                    Job(
                        "distill_shard",
                        f"distill_shard_{tag}_{i}-of-{n}",
                        (
                            "distill",
                            "--data",
                            data_dir,
                            "--pool",
                            pool,
                            *selection,
                            "--shard",
                            f"{i}/{n}",
                            "--out",
                            shard,
                        ),
                        (data_dir, manifest),
                        (shard,),
                        keys,
                        "distill",
                    )
                )
        merge = ("--merge", *shards) if shards else ()
        jobs.append(
            Job(
                "distill",
                f"distill_{tag}",
                ("distill", "--data", data_dir, *merge, *selection, "--out", syn),
                (data_dir, *shards),
                declared(syn, ("grid.png", "metrics.json"), checksummed=("synthetic.pt",)),
                keys,
                "distill",
            )
        )
        if hard:
            continue
        soft = path("relabel", **w, **s)
        jobs.append(
            Job(
                "relabel",
                f"relabel_{tag}",
                ("relabel", "--synthetic", syn, "--pool", pool, "--seed", str(seed), "--out", soft),
                (f"{syn}/synthetic.pt", manifest),
                (soft,),
                tuple(param_keys(data, "relabel")),
                "relabel",
            )
        )
    evaluations = []
    for g in grid:
        s = {k: g[k] for k in ("method", "ipc", "seed")}
        out = path("evaluate", **w, **g)
        evaluations.append(out)
        syn, soft = path("distill", **w, **s), path("relabel", **w, **s)
        pool = path("pretrain_pool", **replicas[g["seed"]])
        manifest = f"{pool}/manifest.json"
        labels = () if hard else ("--soft-labels", soft, "--pool", pool)
        jobs.append(
            Job(
                "evaluate",
                f"evaluate_{w['study']}_{g['method']}_ipc{g['ipc']}_{arch_slug(g['arch'])}_seed{g['seed']}",
                (
                    "evaluate",
                    "--data",
                    data_dir,
                    "--synthetic",
                    syn,
                    *labels,
                    "--arch",
                    g["arch"],
                    "--seed",
                    str(g["seed"]),
                    "--out",
                    out,
                ),
                (data_dir, f"{syn}/synthetic.pt", *(() if hard else (soft, manifest))),
                (out,),
                tuple(param_keys(data, "evaluate")),
                "evaluate",
            )
        )
    report = path("report", **w)
    jobs.append(
        Job(
            "report",
            f"report_{w['study']}",
            ("report", "--evaluations", *evaluations, "--out", report),
            tuple(evaluations),
            declared(report, REPORT_FILES),
            tuple(param_keys(data, "report")),
            "report",
        )
    )
    return jobs


def commands_by_folder(configs: list[Mapping]) -> dict[str, tuple[str, ...]]:
    """Every job's command of the resolved ``configs`` (studies run together), keyed by the folder it
    writes (``--out``): how Snakemake's rules take their shell commands from the plan."""
    commands: dict[str, tuple[str, ...]] = {}
    for data in configs:
        for job in plan(data):
            commands.setdefault(job.command[job.command.index("--out") + 1], job.command)
    return commands


def command_in(commands: Mapping[str, tuple[str, ...]], folder: str) -> str:
    """The shell-quoted command of the job writing ``folder`` (see commands_by_folder)."""
    if folder not in commands:
        raise ValueError(f"{folder}: no job of the plan writes this folder (teddy.workflow.plan)")
    return shlex.join(commands[folder])


def final_outputs(data: Mapping) -> list[str]:
    """What a whole run builds: every synthetic set's grid and the report (Snakemake's rule all)."""
    return [
        o
        for j in plan(data)
        if j.stage in ("distill", "report")
        for o in j.outs
        if o.endswith((".png", ".csv", ".md"))
    ]
