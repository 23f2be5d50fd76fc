"""Preemption: SIGTERM to a running stage → checkpoint + exit 75; the rerun resumes and ends with
the same result as an uninterrupted run (what SLURM requeue / Snakemake retries rely on)."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from teddy import cli
from teddy.utils import load_torch

from .conftest import BASE, ROOT, TINY, tiny_synthetic_set

SLOW = [
    "--set",
    "pretrain_pool.epochs=150",
    "--set",
    "pretrain_pool.prior_epochs=[1]",
    "--set",
    "pretrain_pool.width=16",
]


def teddy(*args) -> list[str]:
    return [sys.executable, "-m", "teddy", *args]


def signal_when(cmd: list[str], ready, sig=signal.SIGTERM, timeout=120) -> subprocess.CompletedProcess:
    """Start ``cmd``; once ``ready()`` holds, send ``sig``; wait for it to exit."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be signalled:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.02)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "data"
    subprocess.run(
        teddy("prepare-data", "--config", str(BASE), "--config", str(TINY), "--out", str(out)), check=True
    )
    return out


def test_sigterm_during_base_training_checkpoints_and_resumes_exactly(data_dir, tmp_path):
    cfg = ["--config", str(BASE), "--config", str(TINY), *SLOW, "--data", str(data_dir), "--member", "base"]
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    state = interrupted / "train_state.pt"
    done = signal_when(teddy("pretrain-pool", *cfg, "--out", str(interrupted)), state.exists)
    assert done.returncode == 75, done.stdout
    assert "rerun the same command to resume" in done.stdout
    assert (
        state.exists()
        and not (interrupted / "base.pt").exists()
        and not (interrupted / "metrics.json").exists()
    )
    stopped_at = load_torch(state)["loop"]["epoch"]
    assert 1 <= stopped_at < 150
    subprocess.run(teddy("pretrain-pool", *cfg, "--out", str(interrupted)), check=True, cwd=ROOT)
    subprocess.run(teddy("pretrain-pool", *cfg, "--out", str(reference)), check=True, cwd=ROOT)
    assert not state.exists()
    resumed, straight = (load_torch(d / "base.pt")["state_dict"] for d in (interrupted, reference))
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_sigusr1_during_student_training_resumes_exactly(tmp_path):
    """evaluate: SLURM's --signal=USR1@T warning works like SIGTERM."""
    cfg, data_dir, pool, syn = tiny_synthetic_set(tmp_path, "--set", "evaluate.epochs=3000")
    soft = tmp_path / "soft"
    assert (
        cli.main(
            ["relabel", *cfg, "--synthetic", str(syn), "--pool", str(pool), "--seed", "0", "--out", str(soft)]
        )
        == 0
    )
    args = [
        *cfg,
        "--data",
        str(data_dir),
        "--synthetic",
        str(syn),
        "--soft-labels",
        str(soft),
        "--arch",
        "convnet",
        "--seed",
        "0",
    ]
    interrupted, reference = tmp_path / "e1", tmp_path / "e2"
    often = ["--set", "run.checkpoint_minutes=0.001"]  # periodic saves: the state file shows it is training
    state = interrupted / "train_state.pt"
    done = signal_when(
        teddy("evaluate", *args, *often, "--out", str(interrupted)), state.exists, signal.SIGUSR1
    )
    assert done.returncode == 75, done.stdout
    assert 0 < load_torch(state)["loop"]["epoch"] < 3000
    subprocess.run(teddy("evaluate", *args, "--out", str(interrupted)), check=True)
    subprocess.run(teddy("evaluate", *args, "--out", str(reference)), check=True)
    import json

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (interrupted, reference))
    assert a["curve"] == b["curve"] and a["top1"] == b["top1"]


def test_in_process_cli_restores_the_callers_signal_handlers(tmp_path):
    """cli.main catches SIGTERM only while its stage runs; the calling process keeps its own handler."""
    before = signal.getsignal(signal.SIGTERM)
    assert (
        cli.main(["prepare-data", "--config", str(BASE), "--config", str(TINY), "--out", str(tmp_path / "d")])
        == 0
    )
    assert signal.getsignal(signal.SIGTERM) is before
