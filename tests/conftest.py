import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "config" / "tiny.yaml"
BASE = ROOT / "config" / "config.yaml"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: one worker per core, one thread per worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the stages tests start
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def job_server(tmp_path_factory):
    """One `teddy job-server` per test process: the stage jobs the tests start (Snakemake's, DVC's,
    `python -m teddy` subprocesses) fork from it instead of importing torch and MLflow each time.
    Jobs started before it listens run as fresh processes. TEDDY_TEST_JOB_SERVER=0: none (every job a
    fresh interpreter, the path SLURM jobs take)."""
    if os.environ.get("TEDDY_TEST_JOB_SERVER", "1") == "0":
        yield None
        return
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("job_server")
    path = folder / "socket"
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "teddy", "job-server", "--socket", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    os.environ["TEDDY_JOB_SERVER"] = str(path)
    yield path
    os.environ.pop("TEDDY_JOB_SERVER", None)
    server.terminate()
    server.wait(timeout=60)


@pytest.fixture
def tiny_cfg():
    from teddy import config

    return config.load([BASE, TINY])


def copy_project(dst: Path, **sections) -> Path:
    """A copy of the project (code, workflow, profiles) under ``dst`` whose config/config.yaml is
    the tiny config with ``sections`` merged in (e.g. ``distill={"ipcs": [1]}``)."""
    import shutil

    import yaml

    from teddy import config

    for item in ("Snakefile", "workflow", "dvc.yaml", ".dvcignore", "teddy", "profiles", "slurm"):
        src = ROOT / item
        if src.is_symlink():
            (dst / item).symlink_to(os.readlink(src))
        elif src.is_dir():
            shutil.copytree(src, dst / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst / item)
    (dst / "config").mkdir()
    tiny = config.deep_merge(config.read_yaml(BASE), config.read_yaml(TINY))
    tiny = config.deep_merge(tiny, {"evaluate": {"archs": ["convnet"]}, **sections})
    (dst / "config" / "config.yaml").write_text(yaml.safe_dump(tiny))
    return dst


def project_path(project: Path, kind: str, file: str = "", study: str | None = None, **fields) -> str:
    """Where a copied project's jobs of ``kind`` write (teddy.workflow.plan.FOLDERS), for its
    config/config.yaml (study ``default``) or the study file ``config/studies/<study>.yaml``."""
    from teddy import config
    from teddy.workflow import params, plan

    files = (
        [project / "config" / "studies" / f"{study}.yaml"] if study else [project / "config" / "config.yaml"]
    )
    data = config.to_dict(config.load(files, check_data=False))
    return plan.path(kind, file, **params.recipe_keys(data), **fields)


def relabel_args(p: Path, s: Path) -> list[str]:
    """``teddy relabel`` inputs for pool ``p`` and synthetic set ``s`` (seed 0)."""
    return ["--synthetic", str(s), "--pool", str(p), "--seed", "0"]


# `teddy report`'s grid for the one evaluation tiny_soft_labels' set gives: random, IPC 2, a ConvNet
REPORT_ONE_RANDOM = [
    *("--set", "distill.methods=[random]"),
    *("--set", "distill.ipcs=[2]"),
    *("--set", "evaluate.archs=[convnet]"),
]


def evaluate_args(d: Path, s: Path, r: Path, arch: str = "convnet") -> list[str]:
    """``teddy evaluate`` inputs: data ``d``, synthetic set ``s``, soft labels ``r`` (seed 0)."""
    return ["--data", str(d), "--synthetic", str(s), "--soft-labels", str(r), "--arch", arch, "--seed", "0"]


def tiny_synthetic_set(tmp: Path, *extra: str, ipc: int = 2) -> tuple[list[str], Path, Path, Path]:
    """prepare-data → pretrain-pool → distill (random, ``ipc``) under ``tmp`` on the tiny config plus
    ``extra`` CLI args; stages whose output folder is complete are reused. Returns the config args
    and the data, pool and synthetic-set folders."""
    from teddy import cli

    cfg = ["--config", str(BASE), "--config", str(TINY), *extra]
    d, p, s = tmp / "data", tmp / "pool", tmp / "syn"
    steps = [
        (d, ["prepare-data"]),
        (p, ["pretrain-pool", "--data", str(d)]),
        (s, ["distill", "--data", str(d), "--method", "random", "--ipc", str(ipc), "--seed", "0"]),
    ]
    for out, (stage, *args) in steps:
        if not (out / "metrics.json").exists():
            assert cli.main([stage, *cfg, *args, "--out", str(out)]) == 0
    return cfg, d, p, s


def tiny_soft_labels(tmp: Path, *extra: str) -> tuple[list[str], Path, Path, Path, Path]:
    """tiny_synthetic_set, then relabel (seed 0) into ``tmp``/soft: the config args and the data,
    pool, synthetic-set and soft-label folders."""
    from teddy import cli

    cfg, d, p, s = tiny_synthetic_set(tmp, *extra)
    soft = tmp / "soft"
    if not (soft / "metrics.json").exists():
        assert cli.main(["relabel", *cfg, *relabel_args(p, s), "--out", str(soft)]) == 0
    return cfg, d, p, s, soft


# make test (xdist --dist loadscope --no-loadscope-reorder) hands out modules in collection order
# (xdist's default reorder would sort them by their number of tests instead): the whole-pipeline
# modules first, then every module of ten seconds or more, longest first (their durations in make
# test, 2026-12-08), so both workers start the long builds at once and the short tests fill the end,
# instead of one worker running a long module while the other has nothing left
LONGEST_FIRST = (
    "test_pipeline_dvc",
    "test_pipeline_e2e",
    "test_paper_scale_e2e",
    "test_gpu_check",
    "test_preemption",
    "test_distributed",
    "test_studies",
    "test_interrupted_workflow",
    "test_tracking_outage",
    "test_distill",
    "test_workflow",
    "test_stale_checkpoints",
    "test_extending",
    "test_tracking",
    "test_cli_smoke",
    "test_pool",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        module = item.path.stem
        if module in LONGEST_FIRST:
            return LONGEST_FIRST.index(module)
        return len(LONGEST_FIRST) + (item.get_closest_marker("slow") is None)

    items.sort(key=rank)  # stable: the collection order within each rank
