"""Snakemake and DVC describe the same pipeline: same stage names, same outputs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from teddy.cli import STAGES

from .conftest import ROOT

BIN = Path(sys.executable).parent
STAGE_NAMES = {s.replace("-", "_") for s in STAGES}


def snakemake(*args, cwd=ROOT):
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True)


def test_one_name_per_stage_everywhere():
    rules = {p.stem for p in (ROOT / "workflow" / "rules").glob("*.smk")} - {"common"}
    dvc_stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    sections = set(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())) - {
        "run",
        "tracking",
        "resources",
    }
    assert rules == dvc_stages == sections == STAGE_NAMES


def dvc_outputs() -> set[str]:
    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    return {str(Path(out.fs_path).relative_to(ROOT)) for stage in repo.index.stages for out in stage.outs}


def test_snakemake_dry_run_builds_every_dvc_output(tmp_path):
    result = snakemake("--forceall", "--summary", "--cores", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    planned = {line.split("\t")[0] for line in result.stdout.splitlines() if line.startswith("results/")}
    # a DVC directory output (the pool) is built by Snakemake as the files under it
    missing = {o for o in dvc_outputs() - planned if not any(p.startswith(o + "/") for p in planned)}
    assert not missing, f"DVC outputs Snakemake does not build: {sorted(missing)}"


def test_snakemake_dry_run_schedules_every_stage():
    result = snakemake("-n", "--forceall", "--cores", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert STAGE_NAMES <= set(counts)
    assert int(counts["evaluate"]) == 2 * 2 * 2  # methods × ipcs × archs of config/config.yaml


@pytest.mark.parametrize(
    "delta,message",
    [
        ("distill:\n  iteratons: 3\n", "did you mean 'iterations'"),
        ("distill:\n  ipcs: [1, 1000]\n", "IPC [1000] exceeds"),
        ("run:\n  dataset: mnist\n", "run.dataset: 'mnist' is not one of"),
    ],
)
def test_snakemake_rejects_bad_config_before_any_job(tmp_path, delta, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(delta)
    result = snakemake("-n", "--configfile", str(bad), "--cores", "1")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_multi_architecture_pool_jobs_are_scheduled_and_named_by_architecture(tmp_path):
    delta = tmp_path / "multi.yaml"
    delta.write_text(
        "pretrain_pool:\n  member_archs: [shufflenetv2, 'torchvision:resnet18']\n  prior_seeds: [0, 1]\n"
    )
    result = snakemake("-n", "--forceall", "--cores", "1", "--configfile", "config/config.yaml", str(delta))
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert int(counts["pretrain_pool_prior_arch"]) == 4 and int(counts["pretrain_pool_prior"]) == 2
    # shufflenetv2's folder must not be taken for prior_s<seed> (prior_s + 'hufflenetv2_s0')
    assert "prior_shufflenetv2_s1/members.json" in result.stdout
    assert (
        "--member prior:torchvision:resnet18:1"
        in snakemake(
            "-n", "-p", "--forceall", "--cores", "1", "--configfile", "config/config.yaml", str(delta)
        ).stdout
    )
