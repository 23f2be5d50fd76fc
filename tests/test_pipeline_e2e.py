"""The whole workflow, end to end, by Snakemake: a miniature study (the tiny digits config with a
variant and the full-data row) built by `snakemake --config study=mini`: it builds everything, a
second run does nothing, a code change reruns exactly the stages downstream of it, a study edit
only the jobs of the keys it changes, two studies run side by side. The same study by `dvc repro`:
tests/test_pipeline_dvc.py (a module of its own, so that make test's two workers build both at
once; it compares its results with the record this build leaves, see ``snakemake_build``)."""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import copy_project

BIN = Path(sys.executable).parent
# one worker builds the two projects once for every test here (make test: --dist loadscope)
pytestmark = pytest.mark.slow
GRID = {
    "distill": {
        "ipcs": [1],
        "methods": ["teddy", "random", "teddy_sel"],
        "variants": {"teddy_sel": {"method": "teddy", "init": "teacher", "iterations": 0}},
    },
    "evaluate": {
        "archs": ["convnet"],
        "full_data": True,
        "full_data_epochs": 1,
        "hard_label_archs": ["convnet"],
    },
}


def offline_prefix() -> list[str]:
    """``unshare -n``: run in a new network namespace with no network at all (needs root, as CI
    has), so the pipeline is shown to need no download, no telemetry and no server elsewhere."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True) if os.geteuid() == 0 else None
    return ["unshare", "-n"] if probe is not None and probe.returncode == 0 else []


def run(cmd, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


GIT = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.org"]
STUDY = "question: Does the workflow rebuild a study byte for byte?\nheadline: {method: teddy_sel, ipc: 1}\n"
SNAKEMAKE = [str(BIN / "snakemake"), "--config", "study=mini", "--cores"]  # + the cores, then options


def with_study(project: Path) -> Path:
    """The miniature study: config/studies/mini.yaml extends the copy's (tiny) config/config.yaml."""
    (project / "config" / "studies").mkdir()
    (project / "config" / "studies" / "mini.yaml").write_text(STUDY)
    return project


def shared_folder(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (each worker's basetemp is a child of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def snakemake_build(tmp_path_factory) -> tuple[Path, dict]:
    """The mini study built once per session by Snakemake with no network at all (as root) and
    MLflow tracking on, and the record of what the build made (summary rows, checksums of every
    synthetic set and soft-label file, student epochs), taken before any test edits the project.
    Whichever module asks first builds it; the other waits on the lock and reads the record."""
    shared = shared_folder(tmp_path_factory)
    project, record = shared / "e2e-snakemake" / "project", shared / "e2e-snakemake" / "record.json"
    with open(shared / "e2e-snakemake.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.is_file():
            shutil.rmtree(project.parent, ignore_errors=True)
            project.mkdir(parents=True)
            with_study(copy_project(project, tracking={"enabled": True, "uri": "sqlite:///mlflow.db"}, **GRID))
            offline = offline_prefix()
            assert offline or os.geteuid() != 0, "root could not make a network namespace: unshare -n failed"
            run([*offline, *SNAKEMAKE, "2"], project)
            record.write_text(json.dumps(build_record(project)))
    return project, json.loads(record.read_text())


def build_record(project: Path) -> dict:
    import pandas as pd

    summary = pd.read_csv(project / "results" / "digits" / "mini" / "report" / "summary.csv")
    return {
        "summary": summary[SUMMARY_COLUMNS].to_dict(orient="list"),
        **{name: built_files(project, name) for name in ("synthetic.pt", "soft_labels.pt")},
        "epochs": {  # student epochs by IPC
            str(json.loads(m.read_text())["ipc"]): json.loads(m.read_text())["epochs"]
            for m in (project / "results" / "digits" / "mini" / "evaluate").rglob("metrics.json")
        },
    }


SUMMARY_COLUMNS = ["dataset", "method", "ipc", "arch", "seed", "top1", "top5", "hard_top1", "ior", "hlr"]


@pytest.fixture(scope="module")
def snakemake_project(tmp_path_factory):
    return snakemake_build(tmp_path_factory)[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_files(project: Path, name: str) -> dict[str, str]:
    """Checksum of every ``name`` under results/, by path relative to results/."""
    results = project / "results"
    return {str(p.relative_to(results)): sha256(p) for p in sorted(results.rglob(name))}


def test_snakemake_builds_everything_then_nothing(snakemake_project):
    project = snakemake_project
    assert (project / "mlflow.db").is_file() and not list(project.rglob("tracking_pending.json"))
    check_mlflow_store(project)
    report = project / "results" / "digits" / "mini" / "report"
    assert (report / "summary.csv").is_file() and (report / "accuracy.png").is_file()
    assert json.loads((report / "provenance.json").read_text())["study"]["name"] == "mini"
    assert len(list((project / "logs").rglob("*.log"))) > 5
    again = run([*SNAKEMAKE, "2", "-n"], project)
    assert "Nothing to be done" in again
    # the self-contained HTML report with the captioned tables, plots and image grids
    run([*SNAKEMAKE, "1", "--report", "report.html"], project)
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
    assert pipeline.info.status == "FINISHED" and pipeline.info.run_name.startswith("pipeline mini digits ")
    stages = [r for r in runs if r is not pipeline]
    assert stages and all(r.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id for r in stages)
    assert {r.data.tags.get("study") for r in runs} == {"mini"}  # the UI filters one study: tags.study = 'mini'
    names = {r.info.run_name for r in stages}
    assert {"evaluate teddy ipc1 convnet s0", "evaluate random ipc1 convnet s0", "report"} <= names
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
    # the UI's "Group by: setting" puts the seeds of one method/IPC/student in one group, flat
    settings = {r.data.tags.get("setting") for r in stages if r.info.run_name.startswith("evaluate ")}
    (full,) = settings - {f"ipc1 convnet {m}" for m in ("teddy", "random", "teddy_sel")}
    assert re.fullmatch(r"ipc\d+ convnet random", full) and len(settings) == 4  # + the full-data row
    assert "curve.png" in {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    report = next(r for r in stages if r.info.run_name == "report")
    assert {"top1.teddy.ipc1.convnet", "ior.teddy_sel.ipc1.convnet"} <= set(report.data.metrics)
    files = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"summary_table.json", "summary.csv", "accuracy.png"} <= files
    table = json.loads(open(client.download_artifacts(report.info.run_id, "summary_table.json")).read())
    assert "top1" in table["columns"] and len(table["data"]) == len(
        [r for r in stages if r.info.run_name.startswith("evaluate ")]
    )


def edit(project: Path, module: str) -> None:
    """A code change that changes no behaviour: what matters is which jobs each tool reruns."""
    assert (project / "teddy" / module).is_file(), f"teddy/{module} moved: update the test"
    with open(project / "teddy" / module, "a") as f:
        f.write("\n# edited by the rerun-scope test\n")


def snakemake_plan(project: Path) -> set[str]:
    out = run([*SNAKEMAKE, "1", "-n"], project)
    return set(re.findall(r"^(\w+)\s+\d+$", out, re.M)) - {"job", "all", "total"}


KINDS = ("distill_shard", "pretrain_pool", "prepare_data", "distill", "relabel", "evaluate", "report")


@contextlib.contextmanager
def edited(project: Path, module: str):
    """``edit`` for the time of the block, then the file as it was, its mtime too: Snakemake, which
    compares mtimes, sees the project up to date again without rebuilding anything."""
    file = project / "teddy" / module
    kept, stat = file.read_bytes(), file.stat()
    edit(project, module)
    try:
        yield
    finally:
        file.write_bytes(kept)
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def planned_kinds(project: Path) -> set[str]:
    return {next(k for k in KINDS if n == k or n.startswith(k + "_")) for n in snakemake_plan(project)}


def test_a_code_change_reruns_exactly_the_stages_downstream_of_it(snakemake_project):
    # stages/report.py is the report's code only (the same edits by dvc: tests/test_pipeline_dvc.py)
    with edited(snakemake_project, "stages/report.py"):
        assert snakemake_plan(snakemake_project) == {"report"}
    # stages/evaluate.py: the evaluate jobs, and what is downstream of them (the report)
    with edited(snakemake_project, "stages/evaluate.py"):
        assert snakemake_plan(snakemake_project) == {"evaluate", "report"}
    assert snakemake_plan(snakemake_project) == set()  # as it was: nothing to rebuild


# module → the jobs that a Snakemake dry run reruns after an edit of it (DVC: tests/test_pipeline_dvc.py)
LIBRARY_EDITS = {
    "method/losses.py": {"distill_shard", "distill", "relabel", "evaluate", "report"},
    "data/decode.py": set(KINDS),
}


def test_a_library_module_change_schedules_only_the_stages_that_run_it(snakemake_project):
    """Editing the loss schedules distill and what follows, never data preparation or the pool;
    editing the image decoder schedules everything (Snakemake's dry run)."""
    for module, rerun in LIBRARY_EDITS.items():
        with edited(snakemake_project, module):
            assert planned_kinds(snakemake_project) == rerun, module


def test_a_study_edit_reruns_only_the_jobs_of_the_keys_it_changes(snakemake_project):
    """Each job's command reads its study's config by a stable path: a report-only key reruns the
    report, a synthesis knob the synthesised sets and what follows, never data, pool or random."""
    project = snakemake_project  # up to date: the code edits of the tests above are undone
    study = project / "config" / "studies" / "mini.yaml"
    kept = study.read_text()
    try:
        study.write_text(kept + "report: {also_against: [random]}\n")
        assert snakemake_plan(project) == {"report"}
        study.write_text(kept + "distill: {iterations: 3}\n")
        planned = run([*SNAKEMAKE, "1", "-n"], project)
        assert snakemake_plan(project) == {"distill_shard", "distill", "relabel", "evaluate", "report"}
        assert "method=random" not in planned  # no job of random: it reads no synthesis key
    finally:
        study.write_text(kept)


def snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (sha256(p), p.stat().st_mtime_ns) for f in folders for p in sorted(f.rglob("*")) if p.is_file()
    }


def test_two_studies_run_side_by_side_in_one_invocation(snakemake_project):
    """A second study on the same dataset, run in one invocation with the first: its own folder, the
    data and the pool (same recipe) shared and not rebuilt, the first study's files untouched."""
    project = snakemake_project  # up to date: the code edits of the tests above are undone
    (project / "config" / "studies" / "other.yaml").write_text(
        "question: A second study beside mini.\n"
        "distill: {methods: [random], ipcs: [1]}\n"  # relabel still reads the shared pool's base model
        "evaluate: {full_data: false, hard_label_archs: []}\n"
    )
    digits = project / "results" / "digits"
    before = snapshot(digits / "mini", digits / "data", digits / "pool")
    both = [str(BIN / "snakemake"), "--config", "study=mini,other", "--cores", "2"]
    out = run(both, project)
    assert "prepare_data" not in out and "pretrain_pool" not in out  # shared, not rebuilt
    assert snapshot(digits / "mini", digits / "data", digits / "pool") == before
    assert (digits / "other" / "report" / "summary.csv").is_file()
    assert len(list((digits / "data").iterdir())) == 1 and len(list((digits / "pool").iterdir())) == 1
    prov = json.loads((digits / "other" / "report" / "provenance.json").read_text())
    assert prov["study"]["name"] == "other" and "study=mini,other" in prov["command"]
    assert "Nothing to be done" in run([*both[:-2], "--cores", "1", "-n"], project)
