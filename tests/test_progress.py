"""Long stages say where they are: log lines with rate and time left, as often as configured."""

import json
import logging
import re

import pytest

from teddy import cli
from teddy.runtime import progress

from .conftest import evaluate_args, relabel_args, tiny_synthetic_set


def test_stages_log_progress_lines_at_the_configured_interval(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    often = ["--set", "run.progress_seconds=0.000001"]
    cfg, d, p, s = tiny_synthetic_set(tmp_path, *often)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("teddy.")]
    pool = [line for line in lines if line.startswith("pretrain_pool convnet seed 0: ")]
    assert len(pool) >= 3 and pool[-1].startswith("pretrain_pool convnet seed 0: ")  # every step, with its rate
    pace = r"([\d.]+/s|[\d.]+ s each)"
    assert re.fullmatch(rf"pretrain_pool convnet seed 0: \d+/\d+ \({pace}, \d+ s left\)", pool[-1])
    caplog.clear()
    r, e = tmp_path / "soft", tmp_path / "eval"
    assert cli.main(["relabel", *cfg, *relabel_args(p, s), "--out", str(r)]) == 0
    # relabel: a line per epoch of views, though they all go into one file (no relabel.shard_epochs)
    labelled = [re.match(r"relabel random ipc\d+: (\d+/\d+) ", r.getMessage()) for r in caplog.records]
    assert [m[1] for m in labelled if m] == ["1/2", "2/2"]
    caplog.clear()
    args = evaluate_args(d, s, r)
    assert cli.main(["evaluate", *cfg, *args, "--out", str(e)]) == 0
    epochs = [re.search(r" epochs: (\d+/\d+) ", r.getMessage()) for r in caplog.records]
    assert [m[1] for m in epochs if m] == ["1/2", "2/2"]
    # rarely: only the final line of each loop
    caplog.clear()
    rare = ["--set", "run.progress_seconds=3600"]
    assert cli.main(["evaluate", *cfg, *rare, *args, "--out", str(tmp_path / "eval2")]) == 0
    epochs = [re.search(r" epochs: (\d+/\d+) ", r.getMessage()) for r in caplog.records]
    assert [m[1] for m in epochs if m] == ["2/2"]


def test_rate_and_time_left_count_only_the_work_of_this_run(monkeypatch, caplog):
    """A resumed loop's first line must not read the checkpoint's epochs as done in seconds
    (it said '89/200 (2.6/s, 43 s left)' for a ResNet-18 student with 20 minutes to go)."""
    caplog.set_level(logging.INFO)
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    resumed = progress.Progress("evaluate r18 soft-label epochs", 200, every=0, done=84)
    clock[0] += 10
    resumed.update(94)
    later = progress.Progress("distill teddy batches", 100, every=0)  # the loop learns where it stands
    clock[0] += 5
    later.resume(50)
    clock[0] += 10
    later.update(60)
    slow = progress.Progress("pretrain_pool convnet seed 0", 10, every=0)
    clock[0] += 40
    slow.update(2)
    assert [r.getMessage() for r in caplog.records] == [
        "evaluate r18 soft-label epochs: 94/200 (1.0/s, 106 s left)",
        "distill teddy batches: 60/100 (1.0/s, 40 s left)",
        "pretrain_pool convnet seed 0: 2/10 (20.0 s each, 160 s left)",
    ]


def test_a_resumed_student_measures_its_rate_from_the_epoch_it_resumed_at(tmp_path, monkeypatch):
    """evaluate tells its progress where a rerun resumed (train_state.pt from an interrupted run)."""
    cfg, d, p, s = tiny_synthetic_set(tmp_path)
    r, e = tmp_path / "soft", tmp_path / "eval"
    assert cli.main(["relabel", *cfg, *relabel_args(p, s), "--out", str(r)]) == 0
    update = progress.Progress.update

    def stop_in_epoch_two(self, done):
        if done == 2 and self.what.startswith("evaluate"):
            raise KeyboardInterrupt  # after epoch 1's state was saved, before epoch 2's
        update(self, done)

    monkeypatch.setattr(progress.Progress, "update", stop_in_epoch_two)
    every_epoch = ["--set", "run.checkpoint_minutes=0.000001"]
    with pytest.raises(KeyboardInterrupt):
        cli.main(["evaluate", *cfg, *every_epoch, *evaluate_args(d, s, r), "--out", str(e)])
    assert (e / "train_state.pt").exists()
    monkeypatch.setattr(progress.Progress, "update", update)
    starts = []
    resume = progress.Progress.resume
    monkeypatch.setattr(
        progress.Progress, "resume", lambda self, done: starts.append(done) or resume(self, done)
    )
    assert cli.main(["evaluate", *cfg, *evaluate_args(d, s, r), "--out", str(e)]) == 0
    assert starts == [0, 1]  # constructed fresh, then told the loop resumed after epoch 1
    assert json.loads((e / "metrics.json").read_text())["resumed_from_epoch"] == 1
