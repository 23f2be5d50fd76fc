"""The whole workflow, end to end, on the tiny digits config in a copy of the project:
Snakemake and DVC each build everything, and a second run with nothing changed does nothing."""

import os
import shutil
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
    check_mlflow_store(project)
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


def check_mlflow_store(project):
    """Read the store back as the UI does: one pipeline run, every stage run nested under it and
    named for what it is, the dataset as input, the report's table, runs covering their jobs."""
    import json

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("teddy")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (pipeline,) = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert pipeline.info.status == "FINISHED" and pipeline.info.run_name.startswith("pipeline digits ")
    stages = [r for r in runs if r is not pipeline]
    assert stages and all(r.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id for r in stages)
    names = {r.info.run_name for r in stages}
    assert {"evaluate teddy ipc1 convnet s0", "evaluate random ipc2 convnet s0", "report"} <= names
    assert any(n.startswith("distill teddy ipc1 s0 shard 0/") for n in names) and "pretrain_pool base" in names
    for run in stages:
        reads_images = run.info.run_name.startswith(("prepare_data", "pretrain_pool ", "distill", "evaluate"))
        inputs = [i.dataset.name for i in run.inputs.dataset_inputs]
        assert inputs == (["digits"] if reads_images else []), run.info.run_name
        assert run.data.metrics.get("wall_s") is not None
        wall_ms = 1000 * run.data.metrics["wall_s"]
        assert run.info.end_time - run.info.start_time > wall_ms + 500  # the job, not only the stage
    distill = next(r for r in stages if r.info.run_name == "distill teddy ipc1 s0")
    assert "grid.png" in {a.path for a in client.list_artifacts(distill.info.run_id)}
    evaluate = next(r for r in stages if r.info.run_name == "evaluate teddy ipc1 convnet s0")
    assert "curve.png" in {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    report = next(r for r in stages if r.info.run_name == "report")
    files = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"summary_table.json", "summary.csv", "accuracy.png"} <= files
    table = json.loads(open(client.download_artifacts(report.info.run_id, "summary_table.json")).read())
    assert "top1" in table["columns"] and len(table["data"]) == len(
        [r for r in stages if r.info.run_name.startswith("evaluate ")]
    )


def test_dvc_repro_builds_everything_then_nothing(project):
    run(["git", "init", "-q"], project)
    run([str(BIN / "dvc"), "init", "-q"], project)
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")  # committed plot templates
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
    # one line per method, one panel per student (.dvc/plots/top1_by_method.json), not one point cloud
    assert '"field": "method"' in page and '"column": {"field": "arch"' in page

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
