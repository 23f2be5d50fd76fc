"""`teddy job-server`: a job handed to the server behaves as the fresh process it replaces (streams,
exit code, folder, environment, threads, signals, the caller's own copy of the package), and a job the
server cannot stand in for runs as a fresh process."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

# a stand-in for teddy/cli.py in a copy of the package: what the job does is what argv says
FAKE_CLI = """
import json, os, sys, time

def main():
    what = sys.argv[1]
    if what == "echo":
        import torch
        print(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
                          "marker": os.environ.get("MARKER"), "threads": torch.get_num_threads(),
                          "stdin": sys.stdin.readline().strip(), "served": "teddy.cli" in sys.modules}))
        print("to stderr", file=sys.stderr)
        return int(sys.argv[2])
    if what == "sleep":
        with open(sys.argv[2] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
        time.sleep(120)
    if what == "raise":
        raise RuntimeError("boom")
    if what == "exit-text":
        sys.exit("stopped: a reason")
"""


def listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def start_server(folder: Path) -> tuple[subprocess.Popen, Path, Path]:
    path, log = folder / "socket", folder / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "teddy", "job-server", "--socket", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 120
    while not listening(path):
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the job server did not listen within 120 s"
        time.sleep(0.2)
    return server, path, log


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, path, log = start_server(tmp_path_factory.mktemp("server"))
    yield path, log
    proc.terminate()
    proc.wait(timeout=60)
    assert not path.exists(), "a stopped server removes its socket"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A copy of the package's entry point and client whose cli is FAKE_CLI."""
    root = tmp_path_factory.mktemp("pkg")
    for rel in ("__init__.py", "__main__.py", "runtime/__init__.py", "runtime/jobserver.py"):
        (root / "teddy" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "teddy" / rel, root / "teddy" / rel)
    (root / "teddy" / "cli.py").write_text(FAKE_CLI)
    return root


def job(package: Path, socket_path, *argv: str, env: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "TEDDY_JOB_SERVER": str(socket_path), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "teddy", *argv],
        cwd=package,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_a_served_job_is_its_callers_process_in_all_it_shows(server, package):
    proc = job(package, server[0], "echo", "3", env={"MARKER": "m1", "OMP_NUM_THREADS": "5"})
    out, err = proc.communicate("a line on stdin\n", timeout=60)
    assert proc.returncode == 3, err
    shown = json.loads(out)
    assert shown["pid"] != proc.pid, "the job ran in the caller, not in the server"
    assert shown["served"], "the copy's cli was not imported"
    assert shown == {
        "pid": shown["pid"],
        "cwd": str(package),
        "argv": ["echo", "3"],
        "marker": "m1",
        "threads": 5,  # OMP_NUM_THREADS applied, as libgomp would at a fresh start
        "stdin": "a line on stdin",
        "served": True,
    }
    assert err == "to stderr\n"
    assert f"pid {shown['pid']} teddy echo: {{'exit': 3}}" in server[1].read_text()


@pytest.mark.parametrize(
    "argv, code, message",
    [(["raise"], 1, "RuntimeError: boom"), (["exit-text"], 1, "stopped: a reason")],
)
def test_an_uncaught_error_ends_a_served_job_as_it_ends_python(server, package, argv, code, message):
    proc = job(package, server[0], *argv)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert message in err
    assert "Traceback" in err or argv == ["exit-text"]


def wait_for(path: Path, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_signal_to_the_caller_reaches_the_job_and_the_caller_dies_of_it(server, package, tmp_path):
    proc = job(package, server[0], "sleep", str(tmp_path / "pid"))
    pid = wait_for(tmp_path / "pid")
    assert pid != proc.pid
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # as a workflow tool sees a job killed by SIGTERM
    assert gone(pid)
    assert "{'signal': 15}" in server[1].read_text()


def test_a_killed_caller_takes_its_job_with_it(server, package, tmp_path):
    proc = job(package, server[0], "sleep", str(tmp_path / "pid"))
    pid = wait_for(tmp_path / "pid")
    proc.kill()  # SIGKILL: nothing forwarded; the server sees the connection close
    proc.communicate(timeout=60)
    assert gone(pid), "the job outlived its caller"


@pytest.mark.parametrize(
    "env", [{"PYTHONHASHSEED": "7"}, {"SLURM_JOB_ID": "12"}, {"TEDDY_JOB_SERVER": "/nowhere"}]
)
def test_a_job_the_server_cannot_stand_in_for_runs_in_a_fresh_interpreter(server, package, env):
    proc = job(package, server[0], "echo", "0", env=env)
    out, err = proc.communicate("\n", timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["pid"] == proc.pid
    if "PYTHONHASHSEED" in env:
        assert (
            "not taking a job (PYTHONHASHSEED='7' where the server started with None)" in server[1].read_text()
        )


def test_a_job_whose_server_stops_is_killed_and_says_so(package, tmp_path):
    own, path, _ = start_server(tmp_path)
    proc = job(package, path, "sleep", str(tmp_path / "pid"))
    pid = wait_for(tmp_path / "pid")
    own.kill()
    own.wait(timeout=60)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"the job server at {path} stopped while running this job (pid {pid})" in err
    assert gone(pid)


def test_job_server_with_a_command_serves_its_jobs_and_exits_with_its_code(package, tmp_path):
    script = (
        f"cd {package} && {sys.executable} -m teddy echo 0 </dev/null && test -S $TEDDY_JOB_SERVER && exit 7"
    )
    env = {k: v for k, v in os.environ.items() if k != "TEDDY_JOB_SERVER"}
    env["OMP_NUM_THREADS"] = "1"  # given back to the command (the server starts without it)
    done = subprocess.run(
        [sys.executable, "-m", "teddy", "job-server", "--", "sh", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 7, done.stderr
    assert json.loads(done.stdout)["threads"] == 1
    assert "started: teddy echo" in done.stderr
    socket_path = done.stderr.split("listening at ")[1].split()[0]
    assert not Path(socket_path).exists()


def test_job_server_passes_a_sigterm_to_its_command_and_serves_until_it_ends(tmp_path):
    """`make run` interrupted by SIGTERM: the command (Snakemake) gets it and may stop its jobs cleanly;
    the server stays until the command ends and exits with its code."""
    script = f'trap "echo stopping > {tmp_path}/seen; exit 3" TERM; sleep 100 >/dev/null 2>&1 & wait'
    proc = subprocess.Popen(
        [sys.executable, "-m", "teddy", "job-server", "--", "sh", "-c", script],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while "listening at" not in (line := proc.stderr.readline()):
        assert line and time.monotonic() < deadline, "the job server never listened"
    time.sleep(0.5)  # the command's trap is set
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert (tmp_path / "seen").read_text() == "stopping\n"
