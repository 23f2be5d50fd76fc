"""The digits pipeline submitted through the slurm executor to a real (single-node) SLURM cluster:
every job completes, GPU stages get the (fake) GPU, results equal the local run's.

Needs a running cluster: ``sudo workflow/cluster/slurm-up.sh`` (``make test-slurm`` brings one up,
runs this file and tears it down; CI does that). Without a cluster the test is skipped, unless
TEDDY_REQUIRE_SLURM=1 (as in ``make test-slurm``), where it fails instead.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from teddy.io.files import load_torch

from .conftest import copy_project

pytestmark = pytest.mark.slurm
BIN = Path(sys.executable).parent
# small enough for CI: one IPC, teddy + random, a convnet student; resources fit any machine
SECTIONS = {
    "run": {"device": "cpu"},  # the test cluster's GPU is fake: run.device auto would refuse it
    "distill": {"ipcs": [1]},
    "resources": {
        s: {"runtime": 10, "mem_mb": 500, "cpus": 1}
        for s in ("prepare_data", "pretrain_pool", "distill", "relabel", "evaluate", "report")
    },
    "tracking": {"enabled": True, "uri": "sqlite:///mlflow.db"},
}


def cluster_ready() -> bool:
    if not shutil.which("sbatch"):
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return state.returncode == 0 and bool(re.search(r"^(idle|mixed|allocated)", state.stdout, re.M))


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if not cluster_ready():
        message = "no SLURM cluster answers sinfo: run sudo workflow/cluster/slurm-up.sh (or make test-slurm)"
        if os.environ.get("TEDDY_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def snakemake(project: Path, *args: str, timeout: int = 1200) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = ["timeout", "-k", "10", str(timeout), str(BIN / "snakemake"), *args]
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def test_digits_pipeline_on_slurm_equals_local_run(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "cluster").mkdir()
    local, cluster = (copy_project(tmp_path / d, **SECTIONS) for d in ("local", "cluster"))
    snakemake(local, "--profile", "profiles/local", "--cores", "2")
    started = time.monotonic()
    # this cluster has no accounting database: poll with squeue (MinJobAge=300 s in slurm-up.sh)
    out = snakemake(
        cluster,
        "--profile",
        "slurm",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--verbose",
    )
    (tmp_path / "slurm_run_s.txt").write_text(f"{time.monotonic() - started:.0f}\n")

    sbatch = [line for line in out.splitlines() if line.startswith("sbatch call:")]
    rules = {re.search(r"--comment '?rule_(\w+?)_wildcards", line).group(1) for line in sbatch}
    assert {"prepare_data", "pretrain_pool_base", "distill_shard", "relabel", "evaluate", "report"} <= rules
    gpu_lines = [line for line in sbatch if "rule_evaluate_" in line or "rule_distill_shard_" in line]
    assert gpu_lines and all("--gpus=1" in line and "-p debug" in line for line in gpu_lines)
    assert all("--mem 500" in line and "-t 10" in line for line in sbatch if "rule_report" not in line)

    # every job ran under SLURM; GPU stages saw the fake GPU SLURM assigned them
    evaluations = sorted((cluster / "results").rglob("evaluate/**/metrics.json"))
    assert len(evaluations) == 2
    for path in evaluations:
        record = json.loads(path.read_text())
        assert record["slurm"]["slurm_job_id"] and record["slurm"].get("cuda_visible_devices") == "0"
    assert "slurm" not in json.loads(next((local / "results").rglob("evaluate/**/metrics.json")).read_text())

    # same results as the local run: synthetic images bit for bit, accuracies exactly
    for path in (local / "results").rglob("synthetic.pt"):
        twin = cluster / path.relative_to(local)
        assert torch.equal(load_torch(path)["images"], load_torch(twin)["images"]), path
    for path in (local / "results").rglob("evaluate/**/metrics.json"):
        a, b = json.loads(path.read_text()), json.loads((cluster / path.relative_to(local)).read_text())
        assert (a["top1"], a["top5"]) == (b["top1"], b["top5"]), path
    assert (cluster / "results" / "digits" / "default" / "report" / "summary.csv").is_file()
    assert (cluster / "mlflow.db").is_file()  # all cluster jobs wrote one MLflow store
