"""The whole workflow, end to end, on the tiny digits config in a copy of the project:
Snakemake and DVC each build everything, and a second run with nothing changed does nothing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from teddy import config

from .conftest import BASE, ROOT, TINY

BIN = Path(sys.executable).parent


@pytest.fixture
def project(tmp_path):
    for item in ("Snakefile", "workflow", "dvc.yaml", "teddy"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / item)
    (tmp_path / "config").mkdir()
    tiny = config.deep_merge(config.read_yaml(BASE), config.read_yaml(TINY))
    tiny["evaluate"]["archs"] = ["convnet"]
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(tiny))
    return tmp_path


def run(cmd, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_snakemake_builds_everything_then_nothing(project):
    run([str(BIN / "snakemake"), "--cores", "2"], project)
    report = project / "results" / "digits" / "report"
    assert (report / "summary.csv").is_file() and (report / "accuracy.png").is_file()
    assert len(list((project / "logs").rglob("*.log"))) > 5
    again = run([str(BIN / "snakemake"), "--cores", "2", "-n"], project)
    assert "Nothing to be done" in again


def test_dvc_repro_builds_everything_then_nothing(project):
    run(["git", "init", "-q"], project)
    run([str(BIN / "dvc"), "init", "-q"], project)
    run([str(BIN / "dvc"), "repro"], project)
    assert (project / "results" / "digits" / "report" / "accuracy.json").is_file()
    assert (project / "dvc.lock").is_file()
    again = run([str(BIN / "dvc"), "repro"], project)
    assert "Data and pipelines are up to date" in again
    metrics = run([str(BIN / "dvc"), "metrics", "show"], project)
    assert "convnet" in metrics
