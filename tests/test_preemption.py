"""Preemption: SIGTERM to a running stage → checkpoint + exit 75; the rerun resumes and ends with
the same result as an uninterrupted run (what SLURM requeue / Snakemake retries rely on)."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from teddy import cli
from teddy.io.files import load_torch

from .conftest import BASE, ROOT, TINY, tiny_synthetic_set

# long enough to be stopped at a random point (~0.1 s an epoch on one 2-core CPU thread), short enough
# that the reference and every resumed run stay a few seconds
BASE_EPOCHS, STUDENT_EPOCHS = 50, 1000
SLOW = [
    "--set",
    f"pretrain_pool.epochs={BASE_EPOCHS}",
    "--set",
    "pretrain_pool.prior_epochs=[1]",
    "--set",
    "pretrain_pool.width=16",
]


def teddy(*args) -> list[str]:
    return [sys.executable, "-m", "teddy", *args]


def signal_when(cmd: list[str], ready, sig=signal.SIGTERM, timeout=120) -> subprocess.CompletedProcess:
    """Start ``cmd``; once ``ready()`` holds and a random 0-0.5 s more has passed (a random point
    of training), send ``sig``; wait for it to exit. ``.exit_s``: seconds from signal to exit."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be signalled:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.02)
    delay = random.uniform(0, 0.5)
    time.sleep(delay)
    assert proc.poll() is None, "finished during the random delay: make the run longer"
    sent = time.monotonic()
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=timeout)
    done = subprocess.CompletedProcess(cmd, proc.returncode, f"[signalled {delay:.2f} s after ready]\n{output}")
    done.exit_s = time.monotonic() - sent
    return done


def expect_stopped(done, sig) -> None:
    """SIGTERM/SIGUSR1: checkpoint and exit 75 promptly (bounded: SLURM kills after KillWait=30 s);
    SIGKILL: dies at once, the last periodic checkpoint stays."""
    if sig == signal.SIGKILL:
        assert done.returncode == -signal.SIGKILL, done.stdout
    else:
        assert done.returncode == 75, done.stdout
        assert "rerun the same command to resume" in done.stdout
        assert done.exit_s < 20, f"took {done.exit_s:.1f} s to checkpoint and exit"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "data"
    subprocess.run(
        teddy("prepare-data", "--config", str(BASE), "--config", str(TINY), "--out", str(out)), check=True
    )
    return out


def base_cfg(data_dir) -> list[str]:
    return ["--config", str(BASE), "--config", str(TINY), *SLOW, "--data", str(data_dir), "--member", "base"]


@pytest.fixture(scope="module")
def base_reference(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("base_ref")
    subprocess.run(teddy("pretrain-pool", *base_cfg(data_dir), "--out", str(out)), check=True, cwd=ROOT)
    return load_torch(out / "base.pt")["state_dict"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_base_training_stopped_anywhere_resumes_exactly(data_dir, base_reference, tmp_path, sig):
    cfg = base_cfg(data_dir)
    interrupted = tmp_path / "interrupted"
    state = interrupted / "train_state.pt"
    done = signal_when(teddy("pretrain-pool", *cfg, "--out", str(interrupted)), state.exists, sig)
    expect_stopped(done, sig)
    assert (
        state.exists()
        and not (interrupted / "base.pt").exists()
        and not (interrupted / "metrics.json").exists()
    )
    stopped_at = load_torch(state)["loop"]["epoch"]
    assert 1 <= stopped_at < BASE_EPOCHS
    subprocess.run(teddy("pretrain-pool", *cfg, "--out", str(interrupted)), check=True, cwd=ROOT)
    assert not state.exists()
    resumed = load_torch(interrupted / "base.pt")["state_dict"]
    for key in base_reference:
        assert torch.equal(resumed[key], base_reference[key]), key


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A relabelled tiny set and the uninterrupted student's metrics."""
    tmp = tmp_path_factory.mktemp("student")
    cfg, data_dir, pool, syn = tiny_synthetic_set(tmp, "--set", f"evaluate.epochs={STUDENT_EPOCHS}")
    soft = tmp / "soft"
    relabel = ["--synthetic", str(syn), "--pool", str(pool), "--seed", "0", "--out", str(soft)]
    assert cli.main(["relabel", *cfg, *relabel]) == 0
    args = [*cfg, "--data", str(data_dir), "--synthetic", str(syn), "--soft-labels", str(soft)]
    args += ["--arch", "convnet", "--seed", "0"]
    subprocess.run(teddy("evaluate", *args, "--out", str(tmp / "reference")), check=True)
    return args, json.loads((tmp / "reference" / "metrics.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGKILL], ids=["SIGUSR1", "SIGKILL"])
def test_student_training_stopped_anywhere_resumes_exactly(student, tmp_path, sig):
    """evaluate: SLURM's --signal=USR1@T warning works like SIGTERM; kill -9 resumes from the last
    periodic save."""
    args, reference = student
    interrupted = tmp_path / "e1"
    often = ["--set", "run.checkpoint_minutes=0.001"]  # periodic saves: the state file shows it is training
    state = interrupted / "train_state.pt"
    done = signal_when(teddy("evaluate", *args, *often, "--out", str(interrupted)), state.exists, sig)
    expect_stopped(done, sig)
    assert 0 < load_torch(state)["loop"]["epoch"] < STUDENT_EPOCHS
    subprocess.run(teddy("evaluate", *args, "--out", str(interrupted)), check=True)
    resumed = json.loads((interrupted / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] > 0
    assert resumed["curve"] == reference["curve"] and resumed["top1"] == reference["top1"]


def test_in_process_cli_restores_the_callers_signal_handlers(tmp_path):
    """cli.main catches SIGTERM only while its stage runs; the calling process keeps its own handler."""
    before = signal.getsignal(signal.SIGTERM)
    assert (
        cli.main(["prepare-data", "--config", str(BASE), "--config", str(TINY), "--out", str(tmp_path / "d")])
        == 0
    )
    assert signal.getsignal(signal.SIGTERM) is before
