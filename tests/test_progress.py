"""Long stages say where they are: log lines with rate and time left, as often as configured."""

import logging
import re

from teddy import cli

from .conftest import evaluate_args, relabel_args, tiny_synthetic_set


def test_stages_log_progress_lines_at_the_configured_interval(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    often = ["--set", "run.progress_seconds=0.000001"]
    cfg, d, p, s = tiny_synthetic_set(tmp_path, *often)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("teddy.")]
    pool = [line for line in lines if line.startswith("pretrain_pool convnet seed 0: ")]
    assert len(pool) >= 3 and pool[-1].startswith("pretrain_pool convnet seed 0: ")  # every step, with its rate
    assert re.fullmatch(r"pretrain_pool convnet seed 0: \d+/\d+ \([\d.]+/s, \d+ s left\)", pool[-1])
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
