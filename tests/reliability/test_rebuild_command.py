"""The rebuild command `teddy verify` and every artifact error print is the one that made these
results (issue 36, 6): run as printed, it must never rebuild the data and pool with another config
over the user's results."""

import json
import shlex
import shutil

import pytest

from teddy import cli

from ..conftest import tiny_synthetic_set


@pytest.fixture(scope="module")
def made_by_snakemake(tmp_path_factory, monkeypatch_module):
    """A tiny tree whose jobs record a Snakemake invocation with the user's own config file, as the
    Snakefile records it for every job it runs."""
    tmp = tmp_path_factory.mktemp("rebuild")
    workflow_command = shlex.join(["snakemake", "--cores", "2", "--configfile", "config/mine.yaml"])
    monkeypatch_module.setenv("TEDDY_COMMAND", workflow_command)
    cfg, data, pool, syn = tiny_synthetic_set(tmp / "results")
    monkeypatch_module.delenv("TEDDY_COMMAND")
    return workflow_command, tmp / "results", syn


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def damage(path):
    path.write_bytes(path.read_bytes()[:-50])


def test_verify_prints_the_recorded_workflow_command(made_by_snakemake, tmp_path, capsys):
    command, results, syn = made_by_snakemake
    tree = shutil.copytree(results, tmp_path / "results")
    bad = tree / syn.relative_to(results) / "synthetic.pt"
    damage(bad)
    assert cli.main(["verify", str(tree)]) == 1
    out = capsys.readouterr().out
    assert f"{command} --force {bad} && {command}" in out, out
    assert "snakemake --cores all --force" not in out, out  # the bare default-config command


def test_an_artifact_error_names_the_recorded_command(made_by_snakemake, tmp_path, capsys):
    command, results, syn = made_by_snakemake
    tree = shutil.copytree(results, tmp_path / "results")
    s = tree / syn.relative_to(results)
    damage(s / "synthetic.pt")
    argv = ["relabel", "--config", "config/config.yaml", "--config", "tests/config/tiny.yaml"]
    argv += ["--synthetic", str(s), "--pool", str(tree / "pool"), "--seed", "0", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"`{command} --force {s / 'synthetic.pt'}`" in err, err


def test_without_a_record_it_says_what_it_cannot_know(made_by_snakemake, tmp_path, capsys):
    _, results, syn = made_by_snakemake
    tree = shutil.copytree(results, tmp_path / "results")
    s = tree / syn.relative_to(results)
    damage(s / "synthetic.pt")
    (s / "metrics.json").unlink()
    assert cli.main(["verify", str(tree)]) == 1
    out = capsys.readouterr().out
    assert "snakemake --cores all --force" not in out, out
    assert "no record of the command" in out and str(s / "synthetic.pt") in out, out


def test_a_job_run_by_hand_gets_its_own_command_back(made_by_snakemake, tmp_path, capsys):
    """Made by `teddy distill ...` directly: that command (exactly, quoted) rebuilds the folder."""
    _, results, syn = made_by_snakemake
    tree = shutil.copytree(results, tmp_path / "results")
    s = tree / syn.relative_to(results)
    metrics = json.loads((s / "metrics.json").read_text())
    metrics["command"] = shlex.join(
        ["python", "-m", "teddy", "distill", "--set", "distill.lr=0.5", "--out", str(s)]
    )
    (s / "metrics.json").write_text(json.dumps(metrics))
    damage(s / "synthetic.pt")
    assert cli.main(["verify", str(tree)]) == 1
    out = capsys.readouterr().out
    assert metrics["command"] in out and "snakemake --cores all --force" not in out, out
