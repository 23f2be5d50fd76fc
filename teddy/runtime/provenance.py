"""What made a result: git commit and state, the command, library versions and host."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from teddy.io.checkpoints import code_digest


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None


def git_sha() -> str:
    out = _git("rev-parse", "HEAD")
    return out.stdout.strip() if out is not None and out.returncode == 0 else "unknown"


# what "uncommitted changes" means: tracked files other than the pipeline's own outputs (a committed
# report, DVC's lock file), which a run rewrites while it runs
CODE_PATHSPEC = (":(top)", ":(top,exclude)results", ":(top,exclude)dvc.lock")


def git_state() -> dict:
    """The code's version: git commit and whether the tree differs from it (tracked files changed,
    results/ and dvc.lock aside), or, outside a git checkout, why not; the teddy sources' sha256
    identifies the code either way."""
    sha = git_sha()
    state: dict = {"git_sha": sha, "teddy_sources_sha256": code_digest()}
    if sha == "unknown":
        state["git_dirty"] = None
        state["git_note"] = f"{Path(__file__).resolve().parent} is not in a git checkout (or git is missing)"
    else:
        out = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHSPEC)
        state["git_dirty"] = bool(out.stdout.strip()) if out is not None and out.returncode == 0 else None
    return state


COMMAND_ENV = "TEDDY_COMMAND"  # the workflow command a job belongs to (set by the Snakefile)


def run_command() -> str:
    """The command that produced a result: the Snakemake invocation when a workflow ran the job,
    else the teddy command line (set by teddy.cli.main)."""
    fallback = shlex.join(["python", "-m", "teddy", *sys.argv[1:]])
    return os.environ.get(COMMAND_ENV) or os.environ.get("TEDDY_CLI_COMMAND") or fallback


def provenance() -> dict:
    import socket
    from importlib.metadata import version

    # the installed version, without importing torchvision (seconds per job on a small machine)
    prov = git_state() | {"torch": torch.__version__, "torchvision": version("torchvision")}
    prov["command"] = run_command()
    prov["host"] = socket.gethostname()
    if os.environ.get("SLURM_JOB_ID"):  # where a cluster job ran and what it was given
        keys = (
            "SLURM_JOB_ID",
            "SLURM_JOB_PARTITION",
            "SLURM_CPUS_PER_TASK",
            "SLURM_JOB_GPUS",
            "CUDA_VISIBLE_DEVICES",
        )
        prov["slurm"] = {k.lower(): os.environ[k] for k in keys if k in os.environ}
    return prov
