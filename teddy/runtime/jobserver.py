"""A warm interpreter for the stage jobs of one machine: ``teddy job-server``.

A stage job is a fresh ``python -m teddy <stage>`` process, and on a small job most of its CPU is
start-up: ``import torch`` (1.6–1.9 s on the 2-core VM), MLflow and its SQL store (2–3 s),
``torch._dynamo`` at the first optimiser step (1.2–1.8 s). The job server imports these once; with
``TEDDY_JOB_SERVER`` naming its socket, ``python -m teddy`` hands its command line, working folder,
environment and standard streams to the server, which forks a child that runs the command as the
process would have (the package's own modules imported afresh from the caller's ``sys.path``, so an
edited loss or another checkout runs its own code) and sends back its exit status. The caller stays
the job's process for its workflow tool: it forwards signals to the child's process group and exits
as the child did (its code, or the same signal).

Where the server cannot stand in for a fresh interpreter it says so and the caller runs the command
itself: another Python (executable, flags, ``-W``/``-X`` options), other limits (cgroup, CPU
affinity, niceness, rlimits: a child runs under the server's), or an environment variable read at
import time that differs (``PYTHON*``, locale, ``LD_*``, OpenMP/MKL settings other than thread
counts, ``TORCH*``/``CUDA*``, ...). Thread counts (``OMP_NUM_THREADS``, which Snakemake sets per
job) are applied in the child with ``torch.set_num_threads``; numpy's BLAS pool keeps the server's
(the stages do no BLAS work in numpy). The caller also runs the command itself when no server
answers, and always under a scheduler (``SLURM_JOB_ID`` set: the job stays in its allocation).
What stays the server's: the hash seed of ``str`` (``PYTHONHASHSEED`` unset: one per server, not per
job) and the peak-memory baseline (a child starts with the server's pages, as a fresh job has them
once it has imported the same libraries).

This module imports only the standard library at import time: ``python -m teddy`` loads it first.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys

ENV = "TEDDY_JOB_SERVER"
# read once when the interpreter or a library starts: a job whose value differs cannot be forked from
# the server's interpreter (it runs as a fresh process instead)
IMPORT_TIME_PREFIXES = (
    "PYTHON",
    "LC_",
    "LANG",
    "LD_",
    "OMP_",
    "GOMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "TORCH",
    "PYTORCH_",
    "CUDA_",
    "NVIDIA_",
    "MALLOC_",
    "MPL",
    "MLFLOW_DISABLE_TELEMETRY",
)
# set per job by workflow tools (Snakemake: every job's threads); torch's is applied in the child
THREAD_COUNTS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
KEY_FIELDS = (
    "executable",
    "prefix",
    "flags",
    "warnoptions",
    "xoptions",
    "unbuffered",
    "cgroup",
    "affinity",
    "nice",
    "rlimits",
)
RLIMITS = (
    "RLIMIT_AS",
    "RLIMIT_DATA",
    "RLIMIT_RSS",
    "RLIMIT_CPU",
    "RLIMIT_NOFILE",
    "RLIMIT_STACK",
    "RLIMIT_FSIZE",
)
# the environment before any library was imported (``python -m teddy`` imports this module first):
# torchvision's import sets TORCHINDUCTOR_CACHE_DIR, which a caller that imports nothing has not
START_ENV = dict(os.environ)
SERVED = False  # set in the server's children: their command runs in them, never handed on
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def interpreter_key(env: dict | None = None) -> dict:
    """What a forked child inherits from the interpreter that a fresh process would set up itself."""
    env = os.environ if env is None else env
    return {
        "executable": os.path.realpath(sys.executable),
        "prefix": sys.prefix,
        "flags": list(sys.flags),
        "warnoptions": list(sys.warnoptions),
        "xoptions": {k: str(v) for k, v in sys._xoptions.items()},
        "unbuffered": bool(getattr(sys.__stdout__, "write_through", False)),  # -u (not in sys.flags)
        # the limits a job runs under: a child runs under the server's, so they must be the same
        "cgroup": _read("/proc/self/cgroup"),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "rlimits": {name: list(resource.getrlimit(getattr(resource, name))) for name in RLIMITS},
        "env": {
            k: v
            for k, v in sorted(env.items())
            if k.startswith(IMPORT_TIME_PREFIXES) and k not in THREAD_COUNTS
        },
    }


def key_mismatch(theirs: dict, ours: dict, ignore=()) -> str | None:
    """The first difference between a caller's interpreter key and the server's, in words; ``ignore``:
    variables the server's imports set (a caller that imported torch has them, one that did not has
    not; the child sets them as the imports would)."""
    for field in KEY_FIELDS:
        if theirs.get(field) != ours[field]:
            return f"{field} differs ({theirs.get(field)!r}, the server's {ours[field]!r})"
    env, server_env = theirs.get("env", {}), ours["env"]
    for name in sorted((set(env) | set(server_env)) - set(ignore)):
        if env.get(name) != server_env.get(name):
            return f"{name}={env.get(name)!r} where the server started with {server_env.get(name)!r}"
    return None


def send_line(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def read_line(sock: socket.socket, first: bytes = b"") -> dict | None:
    """One newline-ended JSON message; None where the other side closed first."""
    data = first
    while not data.endswith(b"\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def delegate() -> int | None:
    """Run this process's command (``python -m teddy ...``) in the job server that ``TEDDY_JOB_SERVER``
    names and return its exit code; None where no server took it (the caller runs it itself)."""
    path = os.environ.get(ENV)
    if SERVED or not path or sys.argv[1:2] == ["job-server"] or not _std_fds_open():
        return None  # a server is its own process, never a fork of another
    if os.environ.get("SLURM_JOB_ID"):
        return None  # a scheduler's job runs in its own allocation, never in a server's
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "path": sys.path,
            "key": interpreter_key(),
        }
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        reply = read_line(sock)
    except OSError:
        sock.close()
        return None
    if reply is None or "pid" not in reply:  # refused (another interpreter) or gone: run here
        sock.close()
        return None
    with sock:
        return _follow(sock, reply["pid"], path)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _std_fds_open() -> bool:
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return False
    return True


def _follow(sock: socket.socket, pid: int, path: str) -> int:
    """Wait for the server's child ``pid`` (its own process group) and exit as it did."""

    def forward(signum, _frame):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        status = read_line(sock)
    except OSError:
        status = None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status is None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        print(
            f"teddy: the job server at {path} stopped while running this job (pid {pid}); the job was "
            f"killed: run the command again (unset {ENV} to run it without the server)",
            file=sys.stderr,
        )
        return 1
    if "signal" in status:  # die of the same signal, as the job did (a workflow tool reads it so)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])
        return 128 + status["signal"]
    return status["exit"]
