"""The whole workflow, end to end: a miniature study (the tiny digits config with a variant and the
full-data row) built once by Snakemake (`--config study=mini`) and once by `dvc repro` (dvc.yaml
generated for the study from the same stage table):
each builds everything, a second run does nothing, both give the same report and the same
synthetic sets, a code change reruns exactly the stages downstream of it in both, and a finished
DVC pipeline goes to a remote and comes back in a fresh clone."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, copy_project, project_path

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


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """Two copies of the project made at once (the code under test is the same in both)."""
    snakemake_dir = copy_project(
        tmp_path_factory.mktemp("snakemake"), tracking={"enabled": True, "uri": "sqlite:///mlflow.db"}, **GRID
    )
    dvc_dir = tmp_path_factory.mktemp("dvc") / "project"  # its parent holds the default DVC remote
    dvc_dir.mkdir()
    return with_study(snakemake_dir), with_study(copy_project(dvc_dir, **GRID))


@pytest.fixture(scope="module")
def snakemake_project(copies):
    """Built by Snakemake with no network at all (as root) and MLflow tracking on."""
    project = copies[0]
    offline = offline_prefix()
    assert offline or os.geteuid() != 0, "root could not make a network namespace: unshare -n failed"
    run([*offline, *SNAKEMAKE, "2"], project)
    return project


@pytest.fixture(scope="module")
def dvc_project(copies):
    """Built by `dvc repro` from dvc.yaml generated for the same config, the committed DVC config
    (its default remote) and plot templates in place."""
    project = copies[1]
    run(["git", "init", "-q"], project)
    run([str(BIN / "dvc"), "init", "-q"], project)
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")  # git holds no artifact: DVC carries them
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    run([sys.executable, "-m", "teddy", "workflow", "dvc", "--study", "mini"], project)
    run([str(BIN / "dvc"), "repro"], project)
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-qm", "pipeline"], project)
    return project


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


def test_dvc_repro_builds_everything_then_nothing(dvc_project):
    project = dvc_project
    assert (project / "results" / "digits" / "mini" / "report" / "accuracy.json").is_file()
    run([sys.executable, "-m", "teddy", "workflow", "dvc", "--check", "--study", "mini"], project)
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


def test_snakemake_and_dvc_give_the_same_results(snakemake_project, dvc_project):
    import pandas as pd

    columns = ["dataset", "method", "ipc", "arch", "seed", "top1", "top5", "hard_top1", "ior", "hlr"]
    summary = "results/digits/mini/report/summary.csv"
    by_snakemake = pd.read_csv(snakemake_project / summary)[columns]
    by_dvc = pd.read_csv(dvc_project / summary)[columns]
    pd.testing.assert_frame_equal(by_snakemake, by_dvc)
    assert {"teddy", "teddy_sel", "random", "full data"} == set(by_dvc.method)  # variant and full-data row
    assert by_dvc.hard_top1.notna().all()
    for name in ("synthetic.pt", "soft_labels.pt"):
        snakemake_sets, dvc_sets = built_files(snakemake_project, name), built_files(dvc_project, name)
        assert len(dvc_sets) == 4 and snakemake_sets == dvc_sets, name  # teddy, teddy_sel, random, full data
    # the full-data row trains evaluate.full_data_epochs (1), the sets the tiny config's 2, in both tools
    for project in (snakemake_project, dvc_project):
        epochs = {
            json.loads(m.read_text())["ipc"]: json.loads(m.read_text())["epochs"]
            for m in (project / "results" / "digits" / "mini" / "evaluate").rglob("metrics.json")
        }
        full = max(epochs)
        assert epochs == {1: 2, full: 1} and full > 1


def edit(project: Path, module: str) -> None:
    """A code change that changes no behaviour: what matters is which jobs each tool reruns."""
    assert (project / "teddy" / module).is_file(), f"teddy/{module} moved: update the test"
    with open(project / "teddy" / module, "a") as f:
        f.write("\n# edited by the rerun-scope test\n")


def snakemake_plan(project: Path) -> set[str]:
    out = run([*SNAKEMAKE, "1", "-n"], project)
    return set(re.findall(r"^(\w+)\s+\d+$", out, re.M)) - {"job", "all", "total"}


KINDS = ("distill_shard", "pretrain_pool", "prepare_data", "distill", "relabel", "evaluate", "report")


def dvc_ran(project: Path) -> set[str]:
    """The stages (Snakemake's rule names) whose jobs `dvc repro` ran."""
    out = run([str(BIN / "dvc"), "repro"], project)
    names = re.findall(r"Running stage '([^']+)'", out)
    return {next(k for k in KINDS if n == k or n.startswith(k + "_")) for n in names}


def test_a_code_change_reruns_exactly_the_stages_downstream_of_it(snakemake_project, dvc_project):
    # stages/report.py is the report's code only
    for project in (snakemake_project, dvc_project):
        edit(project, "stages/report.py")
    assert snakemake_plan(snakemake_project) == {"report"}
    assert dvc_ran(dvc_project) == {"report"}
    # stages/relabel.py: the relabel jobs, and everything downstream of them
    run([*SNAKEMAKE, "2"], snakemake_project)
    for project in (snakemake_project, dvc_project):
        edit(project, "stages/relabel.py")
    assert snakemake_plan(snakemake_project) == {"relabel", "evaluate", "report"}
    assert dvc_ran(dvc_project) == {"relabel", "evaluate", "report"}


def dvc_changed(project: Path) -> set[str]:
    """The stages (Snakemake's rule names) whose dependencies `dvc status` says have changed."""
    out = run([str(BIN / "dvc"), "status"], project)
    names = re.findall(r"^(\S+):\s*$", out, re.M)
    return {next(k for k in KINDS if n == k or n.startswith(k + "_")) for n in names}


def test_a_library_module_change_schedules_only_the_stages_that_run_it(snakemake_project, dvc_project):
    """Editing the loss schedules distill and what follows, never data preparation or the pool;
    editing the image decoder schedules everything (Snakemake's dry run, `dvc status`)."""
    run([*SNAKEMAKE, "2"], snakemake_project)  # up to date after the test above
    expected = {  # module → (Snakemake: the jobs that rerun, DVC: the stages whose code changed)
        "method/losses.py": (
            {"distill_shard", "distill", "relabel", "evaluate", "report"},
            {"distill_shard", "distill", "evaluate"},  # relabel's inputs are unchanged bytes: DVC skips it
        ),
        "data/decode.py": (
            set(KINDS),
            {"prepare_data", "pretrain_pool", "distill_shard", "distill", "evaluate"},
        ),
    }
    for module, (rerun, changed) in expected.items():
        kept = (ROOT / "teddy" / module).read_text()
        for project in (snakemake_project, dvc_project):
            edit(project, module)
        planned = {
            next(k for k in KINDS if n == k or n.startswith(k + "_")) for n in snakemake_plan(snakemake_project)
        }
        status = dvc_changed(dvc_project)
        for project in (snakemake_project, dvc_project):
            (project / "teddy" / module).write_text(kept)
        assert planned == rerun, module
        assert status == changed, module


def test_a_finished_pipeline_goes_to_the_default_remote_and_comes_back(dvc_project, tmp_path):
    """`dvc push` to the committed default remote (a folder beside the project: the shared file
    system on a cluster), then a fresh clone pulls every artifact back and is up to date."""
    project = dvc_project
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-qm", "after the rerun-scope test", "--allow-empty"], project)
    run([str(BIN / "dvc"), "push"], project)
    remote = project.parent / "teddy-dvc-remote"
    assert remote.is_dir() and any(remote.rglob("*"))
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not built_files(clone, "synthetic.pt")  # git holds only DVC's pointers (dvc.lock, .gitignore)
    run([str(BIN / "dvc"), "remote", "modify", "--local", "shared", "url", str(remote)], clone)
    run([str(BIN / "dvc"), "pull"], clone)
    assert "Data and pipelines are up to date" in run([str(BIN / "dvc"), "status"], clone)
    assert built_files(clone, "synthetic.pt") == built_files(project, "synthetic.pt")
    assert built_files(clone, "soft_labels.pt") == built_files(project, "soft_labels.pt")
    # the pulled artifacts are usable: their checksum records came along (issue 36, 2)
    verified = run([sys.executable, "-m", "teddy", "verify", "results"], clone)
    assert "artifacts under results are intact" in verified
    s, r = (
        clone / project_path(clone, kind, study="mini", method="teddy", ipc=1, seed=0)
        for kind in ("distill", "relabel")
    )
    data, pool = (clone / project_path(clone, kind, study="mini") for kind in ("prepare_data", "pretrain_pool"))
    evaluate = ["evaluate", "--config", "config/studies/mini.yaml", "--data", str(data), "--synthetic", str(s)]
    evaluate += ["--soft-labels", str(r), "--pool", str(pool), "--arch", "convnet", "--seed", "0"]
    run([sys.executable, "-m", "teddy", *evaluate, "--out", str(tmp_path / "again")], clone)
    # and in the project itself: its DVC-versioned results deleted, then pulled back
    for folder in ("data", "pool", "mini/distill", "mini/relabel", "mini/evaluate"):
        shutil.rmtree(project / "results" / "digits" / folder)
    run([str(BIN / "dvc"), "pull"], project)
    verified = run([sys.executable, "-m", "teddy", "verify", "results"], project)
    assert "artifacts under results are intact" in verified
    assert "Data and pipelines are up to date" in run([str(BIN / "dvc"), "status"], project)


def test_dvc_sweep_reruns_only_what_the_parameter_touches(dvc_project):
    project = dvc_project
    exp = run(
        [str(BIN / "dvc"), "exp", "run", "-S", "config/config.yaml:evaluate.epochs=3", "-n", "epochs3"], project
    )
    ran = set(re.findall(r"Running stage '([^']+)'", exp))
    assert ran and all(name.startswith(("relabel_", "evaluate_", "report")) for name in ran), ran
    assert "epochs3" in run([str(BIN / "dvc"), "exp", "show", "--csv"], project)


def test_a_study_edit_reruns_only_the_jobs_of_the_keys_it_changes(snakemake_project):
    """Each job's command reads its study's config by a stable path: a report-only key reruns the
    report, a synthesis knob the synthesised sets and what follows, never data, pool or random."""
    project = snakemake_project
    run([*SNAKEMAKE, "2"], project)  # up to date after the code edits of the tests above
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
    project = snakemake_project
    run([*SNAKEMAKE, "2"], project)  # up to date after the code edits of the tests above
    (project / "config" / "studies" / "other.yaml").write_text(
        "question: A second study beside mini.\n"
        "distill: {methods: [teddy, random], iterations: 2}\n"
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
