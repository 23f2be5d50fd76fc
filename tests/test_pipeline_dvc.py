"""The mini study of tests/test_pipeline_e2e.py built by `dvc repro` (dvc.yaml generated for the study
from the same stage table as Snakemake's rules): it builds everything, a second run does nothing,
the results equal Snakemake's build byte for byte (read from the record that build leaves), a code
change reruns exactly the stages downstream of it, a parameter sweep only what the parameter
touches, and a finished pipeline goes to the default remote and comes back in a fresh clone.
A module of its own: make test's two workers build the two projects at once (--dist loadscope)."""

import re
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, copy_project, project_path
from .test_pipeline_e2e import (
    BIN,
    GIT,
    GRID,
    KINDS,
    LIBRARY_EDITS,
    SUMMARY_COLUMNS,
    build_record,
    built_files,
    edit,
    run,
    snakemake_build,
    with_study,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dvc_project(dvc_build):
    return dvc_build[0]


@pytest.fixture(scope="module")
def dvc_build(tmp_path_factory):
    """Built by `dvc repro` from dvc.yaml generated for the same config, the committed DVC config
    (its default remote) and plot templates in place."""
    project = tmp_path_factory.mktemp("dvc") / "project"  # its parent holds the default DVC remote
    project.mkdir()
    with_study(copy_project(project, **GRID))
    run(["git", "init", "-q"], project)
    run([str(BIN / "dvc"), "init", "-q"], project)
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")  # git holds no artifact: DVC carries them
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    run([sys.executable, "-m", "teddy", "workflow", "dvc", "--study", "mini"], project)
    run([str(BIN / "dvc"), "repro"], project)
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-qm", "pipeline"], project)
    return project, build_record(project)  # the record before any test here edits the project


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


def dvc_ran(project: Path) -> set[str]:
    """The stages (Snakemake's rule names) whose jobs `dvc repro` ran."""
    out = run([str(BIN / "dvc"), "repro"], project)
    names = re.findall(r"Running stage '([^']+)'", out)
    return {next(k for k in KINDS if n == k or n.startswith(k + "_")) for n in names}


def test_a_code_change_reruns_exactly_the_stages_downstream_of_it(dvc_project):
    # the edits of tests/test_pipeline_e2e.py's test of the same name: report.py, by dvc repro
    edit(dvc_project, "stages/report.py")
    assert dvc_ran(dvc_project) == {"report"}
    # evaluate.py changes the evaluate stages' code alone (dvc status); that their rerun carries on to
    # the report, whose inputs it rewrites, the sweep below runs (evaluate and report, nothing else)
    kept = (dvc_project / "teddy" / "stages" / "evaluate.py").read_text()
    edit(dvc_project, "stages/evaluate.py")
    status = dvc_changed(dvc_project)
    (dvc_project / "teddy" / "stages" / "evaluate.py").write_text(kept)
    assert status == {"evaluate"}


def dvc_changed(project: Path) -> set[str]:
    """The stages (Snakemake's rule names) whose dependencies `dvc status` says have changed."""
    out = run([str(BIN / "dvc"), "status"], project)
    names = re.findall(r"^(\S+):\s*$", out, re.M)
    return {next(k for k in KINDS if n == k or n.startswith(k + "_")) for n in names}


# module → the stages whose code `dvc status` finds changed (fewer than Snakemake reruns: DVC skips a
# stage whose inputs are unchanged bytes, relabel after the loss edit; test_pipeline_e2e.LIBRARY_EDITS)
DVC_CHANGED = {
    "method/losses.py": {"distill_shard", "distill", "evaluate"},
    "data/decode.py": {"prepare_data", "pretrain_pool", "distill_shard", "distill", "evaluate"},
}


def test_a_library_module_change_schedules_only_the_stages_that_run_it(dvc_project):
    assert set(DVC_CHANGED) == set(LIBRARY_EDITS)
    for module, changed in DVC_CHANGED.items():
        kept = (ROOT / "teddy" / module).read_text()
        edit(dvc_project, module)
        status = dvc_changed(dvc_project)
        (dvc_project / "teddy" / module).write_text(kept)
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
    # the students' lr: every evaluate job and the report, no relabel (its views do not read it)
    sweep = ["exp", "run", "-S", "config/config.yaml:evaluate.lr=0.001", "-n", "lr"]
    exp = run([str(BIN / "dvc"), *sweep], project)
    ran = set(re.findall(r"Running stage '([^']+)'", exp))
    assert "report_mini" in ran and all(name.startswith(("evaluate_", "report")) for name in ran), ran
    assert len(ran) == 1 + len(list(project.glob("results/digits/mini/evaluate/*/ipc*/*/seed0"))), ran
    assert "lr" in run([str(BIN / "dvc"), "exp", "show", "--csv"], project)


def test_snakemake_and_dvc_give_the_same_results(dvc_build, tmp_path_factory):
    """Last in this module: the other worker builds the Snakemake project meanwhile (if it has not
    yet started it, this test builds it)."""
    import pandas as pd

    by_dvc = dvc_build[1]  # recorded right after the build
    by_snakemake = snakemake_build(tmp_path_factory)[1]
    pd.testing.assert_frame_equal(pd.DataFrame(by_snakemake["summary"]), pd.DataFrame(by_dvc["summary"]))
    summary = pd.DataFrame(by_dvc["summary"])
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert {"teddy", "teddy_sel", "random", "full data"} == set(summary.method)  # variant and full-data row
    assert summary.hard_top1.notna().all()
    for name in ("synthetic.pt", "soft_labels.pt"):
        assert len(by_dvc[name]) == 4 and by_snakemake[name] == by_dvc[name], name  # + the full-data row
    # the full-data row trains evaluate.full_data_epochs (1), the sets the tiny config's 2, in both tools
    for record in (by_snakemake, by_dvc):
        epochs = {int(ipc): e for ipc, e in record["epochs"].items()}
        full = max(epochs)
        assert epochs == {1: 2, full: 1} and full > 1
