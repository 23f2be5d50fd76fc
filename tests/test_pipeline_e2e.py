"""The whole workflow, end to end, on the tiny digits config in a copy of the project:
Snakemake and DVC each build everything, and a second run with nothing changed does nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, copy_project

BIN = Path(sys.executable).parent


def offline_prefix() -> list[str]:
    """``unshare -n``: run in a new network namespace with no network at all (needs root, as CI
    has), so the pipeline is shown to need no download, no telemetry and no server elsewhere."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True) if os.geteuid() == 0 else None
    return ["unshare", "-n"] if probe is not None and probe.returncode == 0 else []


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path)


def run(cmd, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_snakemake_builds_everything_then_nothing(tmp_path):
    """With no network at all (as root), and MLflow tracking on."""
    project = copy_project(tmp_path, tracking={"enabled": True, "uri": "sqlite:///mlflow.db"})
    offline = offline_prefix()
    assert offline or os.geteuid() != 0, "root could not make a network namespace: unshare -n failed"
    run([*offline, str(BIN / "snakemake"), "--cores", "2"], project)
    assert (project / "mlflow.db").is_file() and not list(project.rglob("tracking_pending.json"))
    report = project / "results" / "digits" / "report"
    assert (report / "summary.csv").is_file() and (report / "accuracy.png").is_file()
    assert len(list((project / "logs").rglob("*.log"))) > 5
    again = run([str(BIN / "snakemake"), "--cores", "2", "-n"], project)
    assert "Nothing to be done" in again
    # the self-contained HTML report with the captioned tables, plots and image grids
    run([str(BIN / "snakemake"), "--report", "report.html"], project)
    html = (project / "report.html").read_text()
    assert "bar a distillation method must clear" in html  # accuracy.png caption
    assert "One row per (method, IPC, student architecture, seed)" in html  # summary.csv caption
    assert "grid.png" in html and "Synthetic images" in html and "pool of weak models" in html


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

    # plots render without a CDN: vega is inlined by the offline template
    template = project / ".dvc" / "offline.html"
    script = ROOT / "workflow" / "scripts" / "dvc_offline_template.py"
    run([sys.executable, str(script), str(template)], project)
    run([str(BIN / "dvc"), "plots", "show", "--html-template", str(template), "-o", "plots"], project)
    page = (project / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed(" in page and "summary.csv" in page

    # an experiment sweep: dvc exp run -S reruns only what the parameter touches
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.org"]
    run(["git", "add", "-A"], project)
    run([*git, "commit", "-qm", "baseline"], project)
    exp = run(
        [str(BIN / "dvc"), "exp", "run", "-S", "config/config.yaml:evaluate.epochs=3", "-n", "epochs3"], project
    )
    assert "prepare_data" not in exp.split("Running stage")[-1]
    shown = run([str(BIN / "dvc"), "exp", "show", "--csv"], project)
    assert "epochs3" in shown
