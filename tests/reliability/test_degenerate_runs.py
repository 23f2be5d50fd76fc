"""A diverged or degenerate run is named as such in its metrics, the log and the report, never
passed off as a result (issue 36, 4)."""

import json
import logging

import pandas as pd
import pytest

from teddy import cli

from ..conftest import REPORT_ONE_RANDOM, evaluate_args, tiny_soft_labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("degenerate")
    cfg, data, pool, syn, soft = tiny_soft_labels(tmp, "--set", "evaluate.epochs=30")  # views for 30 epochs
    return cfg, data, pool, syn, soft


def evaluate(tiny, out, *overrides):
    cfg, data, _, syn, soft = tiny
    sets = [a for o in overrides for a in ("--set", o)]
    assert cli.main(["evaluate", *cfg, *sets, *evaluate_args(data, syn, soft), "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


NAN_LOSS = ("evaluate.lr=1e6", "evaluate.batch_size=4", "evaluate.epochs=3")  # NaN from epoch 1
HUGE_LOSS = ("evaluate.lr=1e6", "evaluate.epochs=3")  # finite, but 1e25 times its first epoch's


@pytest.mark.parametrize(
    ("overrides", "said"), [(NAN_LOSS, "non-finite training loss"), (HUGE_LOSS, "loss grew")]
)
def test_a_diverged_student_is_named(tiny, tmp_path, caplog, overrides, said):
    with caplog.at_level(logging.WARNING):
        metrics = evaluate(tiny, tmp_path / "ev", *overrides)
    assert any("diverged" in h and said in h for h in metrics["health"]), metrics["health"]
    assert "diverged" in caplog.text and said in caplog.text


def test_a_student_at_chance_is_named_and_a_healthy_one_is_not(tiny, tmp_path):
    at_chance = evaluate(tiny, tmp_path / "chance", "evaluate.epochs=2", "evaluate.lr=1e-9")
    assert any("chance" in h for h in at_chance["health"]), at_chance
    fine = evaluate(tiny, tmp_path / "fine", "evaluate.width=16", "evaluate.lr=0.01")  # 30 epochs
    assert fine["top1"] > 30 and fine["health"] == [], fine


def test_the_report_names_flagged_runs(tiny, tmp_path):
    cfg = tiny[0]
    ev = tmp_path / "evaluate" / "random" / "ipc2" / "convnet" / "seed0"
    # the student epochs the views were made for (a report refuses runs of another protocol than its own)
    diverging = ("evaluate.lr=1e6", "evaluate.batch_size=4", "evaluate.epochs=30")
    evaluate(tiny, ev, *diverging)
    out = tmp_path / "report"
    assert (
        cli.main(
            [
                "report",
                *cfg,
                *[a for o in diverging for a in ("--set", o)],
                *REPORT_ONE_RANDOM,
                "--evaluations",
                str(ev),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = pd.read_csv(out / "summary.csv")
    assert summary.health.str.contains("diverged").all()
    md = (out / "summary.md").read_text()
    assert "Flagged runs" in md and "non-finite training loss" in md
    assert json.loads((out / "metrics.json").read_text())["flagged_runs"] == 1


def test_a_single_class_dataset_is_refused(tmp_path, capsys):
    from ..conftest import BASE, TINY

    root = tmp_path / "one"
    assert (
        cli.main(
            [
                "make-miniature",
                "--layout",
                "imagefolder",
                "--out",
                str(root),
                "--classes",
                "1",
                "--train",
                "4",
                "--val",
                "2",
                "--size",
                "8",
            ]
        )
        == 0
    )
    capsys.readouterr()
    argv = ["prepare-data", "--config", str(BASE), "--config", str(TINY), "--set", "run.dataset=imagefolder"]
    argv += ["--set", f"prepare_data.root={root}", "--out", str(tmp_path / "data")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 class" in err and str(root) in err, err
    assert not (tmp_path / "data" / "manifest.json").exists()
