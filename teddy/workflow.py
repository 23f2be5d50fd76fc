"""The stage table: every job the pipeline runs, described once.

``plan(config)`` lists each job (rule, DVC stage name, ``teddy`` command, input and output folders
under ``FOLDERS``, the dotted config keys its result depends on); ``code_files(stage)`` gives the
package files a stage's command runs (from the import graph), so a code change reruns exactly the
jobs downstream of it; ``job_params``/``result_params`` the config a job's checkpoint fingerprint
covers; ``stage_resources`` its SLURM resources. Readers: the Snakefile (workflow/rules/common.smk
builds every rule's paths, params and code inputs from it), ``dvc_yaml`` (``python -m teddy workflow
dvc`` writes dvc.yaml from the same plan), the CLI (stale-checkpoint fingerprints) and pretrain_pool
(its job list). teddy.config only loads and checks configs."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from teddy import config as config_mod
from teddy.config import GRID_KEYS, RESOLVED, algorithm, full_data_row
from teddy.method import registry


def pool_job_names(p) -> list[str]:
    """The pool's jobs for the pretrain_pool config section ``p`` (mapping or dataclass), base first."""
    get = p.get if isinstance(p, dict) else lambda key: getattr(p, key)
    has_prior = bool(get("prior_epochs") or get("prior_targets"))
    priors = [f"prior_s{s}" for s in get("prior_seeds")] if has_prior else []
    priors += [
        f"prior_{arch_slug(a)}_s{s}" for a in get("member_archs") for s in get("prior_seeds") if has_prior
    ]
    return ["base", *priors, *(f"post_{i:03d}" for i in range(get("post_members")))]


def parse_member(p, text: str) -> tuple[str, int, str]:
    """A pool job of the pretrain_pool section ``p`` (mapping or dataclass): 'base' | 'prior:S' |
    'prior:ARCH:S' | 'post:I' (or the folder names prior_sS, prior_<A>_sS, post_III) → (kind,
    index, architecture)."""
    get = p.get if isinstance(p, dict) else lambda key: getattr(p, key)
    by_slug = {arch_slug(a): a for a in get("member_archs")}
    for slug, arch in by_slug.items():
        text = text.replace(f"prior_{slug}_s", f"prior:{arch}:")
    text = text.replace("prior_s", "prior:").replace("post_", "post:")
    kind, _, rest = text.partition(":")
    arch, _, index = rest.rpartition(":")
    valid = kind == "base" and not index
    if kind in ("prior", "post") and index.isdigit():
        i = int(index)
        valid = i in get("prior_seeds") if kind == "prior" else i < get("post_members") and not arch
        valid = valid and (not arch or arch in get("member_archs"))
    if not valid:
        raise ValueError(
            f"--member {text!r}: use base, prior:S with S in pretrain_pool.prior_seeds "
            f"{list(get('prior_seeds'))} "
            f"(prior:ARCH:S for ARCH in pretrain_pool.member_archs {list(get('member_archs'))}), "
            f"or post:I with I < pretrain_pool.post_members ({get('post_members')})"
        )
    return kind, int(index or 0), arch or get("arch")


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
    from teddy import estimate

    key = json.dumps(data, sort_keys=True, default=str)
    if key not in _RUNTIMES:  # one estimate per config and process (Snakemake asks once per rule)
        _RUNTIMES[key] = estimate.runtimes_min(data)
    return _RUNTIMES[key]


def job_params(data: Mapping, stage: str, method: str | None = None, member: str | None = None) -> dict:
    """The config one job's result depends on, {dotted key: value} (param_keys): Snakemake's params
    trigger (a change reruns the job; adding a seed, IPC, architecture or another variant schedules
    only the new jobs) and, via result_params, the fingerprint of its resumable checkpoints."""
    return params_of(data, param_keys(data, stage, method, member))


def result_params(data: Mapping, stage: str, selection: Mapping, member: str | None = None) -> dict:
    """The config one job's result depends on: the params its Snakemake rule passes and DVC lists.
    A resumable checkpoint made under other values is stale (teddy.io.checkpoints.fingerprint)."""
    return job_params(data, stage, selection.get("method"), member)


# -- the stage table: where every job writes, what it reads, the config it depends on --------------
# Snakemake's rules take their paths from here (workflow/rules/*.smk) and schedule plan()'s final
# outputs; dvc.yaml is generated from plan() (`teddy workflow dvc`), so the two cannot drift.

# A study's own jobs write under results/<dataset>/<study>/; the prepared data and the pool are
# shared by every study whose recipe for them is the same, in a folder named by the recipe's
# fingerprint (recipe_keys): never built twice, never shared between different recipes.
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
SCHEMA = "workflow/schemas/config.schema.yaml"  # its defaults are config too
DVC_HEADER = (
    "# Generated by `python -m teddy workflow dvc` from the stage table in teddy/workflow.py and the\n"
    "# config files below; do not edit. `make repro` regenerates it, then runs `dvc repro`.\n"
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


# -- code dependencies: the teddy modules a stage's command runs, from the import graph --------------

PACKAGE = Path(__file__).resolve().parent
CLI_STAGE_PATH = ("main", "execute", "check_selection")  # the functions of cli.py `teddy <stage>` runs


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for candidate in (PACKAGE.parent / rel.with_suffix(".py"), PACKAGE.parent / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# A registry names classes by string ("teddy.method.objectives:BNMatching", registry.OBJECTIVES) and imports
# them when a stage asks (Method.make_objective). Only the stages here ask, so only their code files
# include what such strings name: editing the loss reruns distill and what follows, never data
# preparation or the pool. tests/test_workflow.py checks that no other stage's code calls the resolver.
RESOLVES_BY_NAME = {"distill": "make_objective"}


def _imports(file: Path, only_functions: tuple[str, ...] | None = None, by_name: bool = False) -> set[str]:
    """teddy modules ``file`` imports (anywhere; ``only_functions``: at module level and in those
    functions), and with ``by_name`` the ones it names by string (registry.OBJECTIVES'
    "teddy.method.objectives:Class")."""
    tree = ast.parse(file.read_text())
    nodes = list(ast.walk(tree))
    if only_functions is not None:
        nodes = [n for stmt in tree.body if not isinstance(stmt, ast.FunctionDef) for n in ast.walk(stmt)]
        nodes += [
            n
            for stmt in tree.body
            if isinstance(stmt, ast.FunctionDef) and stmt.name in only_functions
            for n in ast.walk(stmt)
        ]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif by_name and isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(r"(teddy(?:\.\w+)+)(?::\w+)?", node.value)
            found |= {match[1]} if match else set()
    return {name for name in found if name.split(".")[0] == "teddy" and _module_file(name)}


def code_files(stage: str, absolute: bool = False) -> list[str]:
    """The package files ``teddy <stage>`` runs: cli's stage path, the stage module and everything
    they import, transitively; relative to the project root (DVC), or ``absolute`` (Snakemake, whose
    working directory need not hold the package). A change to any of them reruns the stage's jobs
    (Snakemake: input files; DVC: deps); a change elsewhere (report.py for distill) does not."""
    return [str(PACKAGE.parent / f) if absolute else f for f in _closure(stage)]


@functools.cache
def _closure(stage: str) -> tuple[str, ...]:
    todo = ["teddy.__main__", f"teddy.stages.{stage}"]
    seen: set[Path] = {_module_file("teddy")}
    cli = _module_file("teddy.cli")
    todo += sorted(_imports(cli, CLI_STAGE_PATH))
    seen.add(cli)
    while todo:
        name = todo.pop()
        file = _module_file(name)
        if file in seen:
            continue
        seen.add(file)
        todo += sorted(_imports(file, by_name=stage in RESOLVES_BY_NAME))
        todo += [name.rsplit(".", 1)[0]] if name.count(".") > 1 else []  # its package's __init__ runs first

    return tuple(sorted(str(f.relative_to(PACKAGE.parent)) for f in seen))


# -- the config keys each job depends on ------------------------------------------------------------


def param_keys(data: Mapping, stage: str, method: str | None = None, member: str | None = None) -> list[str]:
    """Dotted config keys one job's result depends on (grid keys left out): Snakemake's params
    trigger, DVC's params and the resumable checkpoints' fingerprint all read these. A variant's
    distill jobs depend on its own entry, so adding or editing one variant reruns only its jobs."""
    keys = ["run.dataset", "run.dtype"]
    if stage == "pretrain_pool":
        section = (
            pool_job_config(data["pretrain_pool"], member.split(":")[0]) if member else data["pretrain_pool"]
        )
        return keys + [f"pretrain_pool.{k}" for k in section]
    grid = GRID_KEYS.get(stage, set())
    section = [k for k in data[stage] if k not in grid]
    if stage == "distill" and method is not None:
        section = registry.get(algorithm(data, method)).distill_keys(section)
    keys += [f"{stage}.{k}" for k in section]
    if stage == "distill" and method in data["distill"]["variants"]:
        keys.append(f"distill.variants.{method}")

    if stage == "relabel":
        keys.append("evaluate.epochs")  # one stored view per student epoch
        if data["evaluate"]["full_data"]:
            keys.append("evaluate.full_data_epochs")  # the full-data row's (config.student_epochs)
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


def pool_recipe(data: Mapping, origin: str) -> dict:
    """The config a pool member of ``origin`` (base / prior / post) depends on, {dotted key: value}:
    recorded with every member its job writes, and compared by every reader of the pool with its own
    config (teddy.pool.members.check_recipe): a pool of another recipe is never drawn from."""
    return params_of(data, param_keys(data, "pretrain_pool", member=origin))


# -- every job of a config, as both tools run it ---------------------------------------------------


@dataclass(frozen=True)
class Job:
    stage: str  # the Snakemake rule
    name: str  # the DVC stage name
    command: tuple[str, ...]  # `teddy` arguments after the config options
    deps: tuple[str, ...]  # files and folders the job reads (besides its code)
    outs: tuple[str, ...]  # what it writes: a folder it owns whole, or files
    params: tuple[str, ...]  # dotted config keys (param_keys)
    code: str  # the stage whose code_files() it runs


def _pool_jobs(data: Mapping, w: dict) -> list[Job]:
    p = data["pretrain_pool"]
    data_dir, base = path("prepare_data", **w), path("pool_job", job="base", **w)
    jobs = []
    for name in pool_job_names(p):
        kind, index, arch = parse_member(p, name)
        member = {"base": "base", "post": f"post:{index:03d}"}.get(kind) or (
            f"prior:{index}" if arch == p["arch"] else f"prior:{arch}:{index}"
        )
        needs_base = kind == "post" or (kind == "prior" and bool(p["prior_targets"]))
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
                    *(("--base", base) if needs_base else ()),
                    "--member",
                    member,
                    "--out",
                    out,
                ),
                deps=(data_dir, *((base,) if needs_base else ())),
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
            command=("pretrain-pool", "--assemble", *folders, "--out", pool),
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
    data_dir, pool = path("prepare_data", **w), path("pretrain_pool", **w)
    manifest = f"{pool}/manifest.json"
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
    jobs += _pool_jobs(data, w)
    grid = evaluation_grid(data)
    sets = list(dict.fromkeys((g["method"], g["ipc"], g["seed"]) for g in grid))
    for method, ipc, seed in sets:
        s = {"method": method, "ipc": ipc, "seed": seed}
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
                    "--soft-labels",
                    soft,
                    "--pool",
                    pool,
                    "--arch",
                    g["arch"],
                    "--seed",
                    str(g["seed"]),
                    "--out",
                    out,
                ),
                (data_dir, f"{syn}/synthetic.pt", soft, manifest),
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


def final_outputs(data: Mapping) -> list[str]:
    """What a whole run builds: every synthetic set's grid and the report (Snakemake's rule all)."""
    return [
        o
        for j in plan(data)
        if j.stage in ("distill", "report")
        for o in j.outs
        if o.endswith((".png", ".csv", ".md"))
    ]


# -- dvc.yaml, generated -----------------------------------------------------------------------------


def _key_source(key: str, files: list[str], raws: list[dict]) -> str | None:
    """The last config file that sets ``key`` (its value wins); None: the schema default."""
    for file, raw in reversed(list(zip(files, raws, strict=True))):
        try:
            lookup(raw, key)
        except (KeyError, TypeError):
            continue
        return file
    return None


def _relative(path: Path) -> str:
    """A config layer's path as dvc.yaml names it: relative to the project root when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(PACKAGE.parent)) if resolved.is_relative_to(PACKAGE.parent) else str(path)


def dvc_yaml(config_sets: list[list[str]], machine: list[str] = ()) -> str:
    """dvc.yaml for one or more configs, each a list of files (base first, then deltas; a study is
    its one file, whose extends chain the loader follows): one DVC stage per job of their plans (a
    job two studies share, such as the data or the pool of one recipe, once), the same commands,
    each with its code files, its inputs and the keys it depends on (each read from the file whose
    value wins) as deps and params. ``machine``: ``key=value`` overrides of machine keys (a GPU:
    ``run.device=cuda``) that every command gets, as Snakemake's ``--config`` gives them."""
    for item in machine:
        section, _, key = item.partition("=")[0].partition(".")
        if not config_mod.is_machine_key(section, key.split(".")[0]):
            raise config_mod.ConfigError(
                f"--set {item}: only machine keys may be set for a study's DVC stages (device, threads, dtype, "
                "shards, data locations, tracking, resources); what a study computes lives in its file"
            )
    stages: dict = {}
    for config_files in config_sets:
        _add_stages(stages, config_files, list(machine))
    described = " + ".join(" ".join(files) for files in config_sets)
    header = DVC_HEADER + f"# Config: {described}\n" + "".join(f"# Set: {m}\n" for m in machine)
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=100_000)


def _add_stages(stages: dict, config_files: list[str], machine: list[str]) -> None:
    data = config_mod.to_dict(config_mod.load(config_files, machine))
    sets = [arg for item in machine for arg in ("--set", item)]
    chain = [(_relative(p), raw) for f in config_files for p, raw in config_mod.layers(f)]
    files, raws = [f for f, _ in chain], [raw for _, raw in chain]
    config_args = [arg for f in config_files for arg in ("--config", f)]
    for job in plan(data):
        if job.name in stages:  # shared with a study added before (same recipe, same folder)
            continue
        params: dict[str, list[str]] = {}
        for key in job.params:
            source = _key_source(key, files, raws)
            if source is not None:
                params.setdefault(source, []).append(key)
        # the threads Snakemake gives the job (resources.<stage>.cpus → --set run.threads): CPU float
        # reductions differ with the thread count, so both tools must run a job alike to agree
        threads = ["--set", f"run.threads={data['resources'][job.code]['cpus']}"]
        argv = ["python", "-m", "teddy", job.command[0], *config_args, *sets, *threads, *job.command[1:]]

        stage = {
            "cmd": " ".join(shlex.quote(a) for a in argv),
            "deps": [*code_files(job.code), SCHEMA, *job.deps],
        }
        if params:
            stage["params"] = [{file: keys} for file, keys in params.items()]
        if job.stage == "report":  # small files kept in git; accuracy.json as DVC metrics, the CSV as plots
            report_dir = os.path.dirname(job.outs[0])
            stage["outs"] = [
                {o: {"cache": False}} for o in job.outs if not o.endswith(("accuracy.json", "summary.csv"))
            ]
            stage["metrics"] = [{f"{report_dir}/accuracy.json": {"cache": False}}]
            stage["plots"] = [
                {
                    f"{report_dir}/summary.csv": {
                        "cache": False,
                        "template": "top1_by_method",  # .dvc/plots/: a line per method, a panel per student
                        "x": "ipc",
                        "y": "top1",
                    }
                }
            ]
        else:
            stage["outs"] = list(job.outs)
        stages[job.name] = stage
