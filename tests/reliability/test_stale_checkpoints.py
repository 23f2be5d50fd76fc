"""A checkpoint is resumed only by the job that wrote it: same config, same inputs, same code.

Fault (issue 12, 1): stop a job after its first checkpoint, change a setting, rerun. Before, the
rerun resumed the old run and ended with the old setting's result under the new config.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from teddy import cli
from teddy.io import artifacts, checkpoints
from teddy.workflow import params

from ..conftest import ROOT, tiny_synthetic_set


def stop_after_first_checkpoint(cmd: list[str], checkpoint, sig=signal.SIGTERM) -> str:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert proc.poll() is None, f"finished before its first checkpoint:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, output
    return output


def teddy(*args) -> list[str]:
    return [sys.executable, "-m", "teddy", *args]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_synthetic_set(tmp_path_factory.mktemp("stale"))


def test_distill_after_a_config_change_starts_afresh(tiny, tmp_path, caplog):
    cfg, data, pool, _ = tiny
    common = [*cfg, "--set", "distill.iterations=300", "--set", "distill.checkpoint_every=10"]
    common += ["--data", str(data), "--pool", str(pool), "--method", "teddy", "--ipc", "2", "--seed", "0"]
    stopped = tmp_path / "stopped"
    stop_after_first_checkpoint(teddy("distill", *common, "--out", str(stopped)), stopped / "checkpoint.pt")

    new_lr = [*common, "--set", "distill.lr=0.01"]
    assert cli.main(["distill", *new_lr, "--out", str(stopped)]) == 0
    assert cli.main(["distill", *new_lr, "--out", str(tmp_path / "clean")]) == 0
    assert "not resuming from" in caplog.text and "starting afresh" in caplog.text
    metrics = json.loads((stopped / "metrics.json").read_text())
    assert metrics["resumed_batches"] + metrics["resumed_iterations"] == 0
    resumed, clean = (artifacts.load_synthetic(d)["images"] for d in (stopped, tmp_path / "clean"))
    assert torch.equal(resumed, clean)


def test_evaluate_after_a_config_change_starts_afresh(tiny, tmp_path):
    cfg, data, pool, syn = tiny
    cfg = [*cfg, "--set", "evaluate.epochs=600"]  # long enough to be stopped at its first checkpoint
    soft = tmp_path / "soft"
    relabel = ["--synthetic", str(syn), "--pool", str(pool), "--seed", "0", "--out", str(soft)]
    assert cli.main(["relabel", *cfg, *relabel]) == 0
    args = [*cfg, "--data", str(data), "--synthetic", str(syn), "--soft-labels", str(soft)]
    args += ["--arch", "convnet", "--seed", "0"]
    stopped = tmp_path / "stopped"
    often = ["--set", "run.checkpoint_minutes=0.001"]
    stop_after_first_checkpoint(
        teddy("evaluate", *args, *often, "--out", str(stopped)), stopped / "train_state.pt"
    )

    new_lr = [*args, "--set", "evaluate.lr=0.0001"]
    rerun = subprocess.run(teddy("evaluate", *new_lr, "--out", str(stopped)), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "not resuming from" in rerun.stderr and "resuming student training" not in rerun.stderr
    subprocess.run(
        teddy("evaluate", *new_lr, "--out", str(tmp_path / "clean")), check=True, capture_output=True
    )
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (stopped, tmp_path / "clean"))
    assert a["resumed_from_epoch"] == 0
    assert (a["top1"], a["curve"]) == (b["top1"], b["curve"])


def test_the_fingerprint_covers_params_inputs_and_code(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"wall_s": 1.0}')
    base = checkpoints.fingerprint({"evaluate": {"lr": 0.001}}, {"data": str(folder)})
    assert checkpoints.fingerprint({"evaluate": {"lr": 0.001}}, {"data": str(folder)}) == base
    assert checkpoints.fingerprint({"evaluate": {"lr": 0.002}}, {"data": str(folder)}) != base
    assert checkpoints.fingerprint({"evaluate": {"lr": 0.001}}, {"data": [str(folder)]}) != base
    (folder / "metrics.json").write_text('{"wall_s": 2.0}')  # the input stage ran again
    assert checkpoints.fingerprint({"evaluate": {"lr": 0.001}}, {"data": str(folder)}) != base
    monkeypatch.setattr(checkpoints, "code_digest", lambda: "other code")
    (folder / "metrics.json").write_text('{"wall_s": 1.0}')
    assert checkpoints.fingerprint({"evaluate": {"lr": 0.001}}, {"data": str(folder)}) != base


def test_a_checkpoint_of_another_job_is_removed_not_loaded(tmp_path):
    path = tmp_path / "state.pt"
    with checkpoints.resume.job("job-a"):
        checkpoints.save_checkpoint({"loop": 3}, path)
        assert checkpoints.load_checkpoint(path)["loop"] == 3
    with checkpoints.resume.job("job-b"):
        assert checkpoints.load_checkpoint(path) is None
    assert not path.exists()
    assert checkpoints.resume.fingerprint is None  # restored after each job


def test_grid_keys_do_not_make_a_checkpoint_stale():
    """Adding a seed, IPC or student (grid keys) must not restart running jobs; their own keys do."""
    from teddy import config

    data = config.to_dict(config.load([ROOT / "config" / "config.yaml"]))
    base = params.result_params(data, "evaluate", {"arch": "convnet"})
    more = json.loads(json.dumps(data))
    more["evaluate"]["archs"].append("mobilenetv2")
    more["run"]["seeds"].append(99)
    assert params.result_params(more, "evaluate", {"arch": "convnet"}) == base
    more["evaluate"]["lr"] *= 2
    assert params.result_params(more, "evaluate", {"arch": "convnet"}) != base
    prior = params.result_params(data, "pretrain_pool", {}, "prior:0")
    data["pretrain_pool"]["prune_ratio"] = [0.1, 0.9]  # a post-member key
    assert params.result_params(data, "pretrain_pool", {}, "prior:0") == prior
