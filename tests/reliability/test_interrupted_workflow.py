"""kill -9 of Snakemake itself: after `snakemake --unlock` (the README's one step for the stale
lock) the same profile command finishes the run, redoing half-written outputs (rerun-incomplete
in profiles/local, which make run uses), and every artifact verifies (issue 12, fault 5)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from teddy import cli

from ..conftest import copy_project, project_path

BIN = Path(sys.executable).parent


def snakemake(project, *args, **kw):
    cmd = [str(BIN / "snakemake"), "--profile", "profiles/local", "--cores", "2", *args]
    return subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_9_of_snakemake_then_the_same_command_finishes(tmp_path):
    project = copy_project(tmp_path, pretrain_pool={"epochs": 30, "prior_epochs": [10, 20]})
    target = project_path(project, "pretrain_pool", "manifest.json")  # data + pool jobs: enough to interrupt
    first = snakemake(project, target, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (states := list((project / "results").rglob("train_state.pt"))):  # a pool job mid-training
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # Snakemake and its jobs, as a lost node would
    first.wait()
    assert not (project / target).exists()
    # what a job killed while writing leaves: a declared output half there (Snakemake marked it
    # incomplete when the job started); only rerun-incomplete lets the next run redo it
    (states[0].parent / "members.json").write_text('[{"file": "base.pt", "val_')

    locked = snakemake(project, target)
    out, _ = locked.communicate(timeout=300)
    assert locked.returncode != 0 and "unlock" in out  # the stale lock, named with its fix

    subprocess.run(
        [str(BIN / "snakemake"), "--unlock", "--cores", "1"], cwd=project, check=True, capture_output=True
    )
    again = snakemake(project, target)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert (project / target).is_file()
    assert cli.main(["verify", str(project / "results")]) == 0
