"""A job in the server's forked child (teddy/runtime/serve_jobs.py): made into the process the caller
would have started, then run as ``python -m teddy`` runs."""

from __future__ import annotations

import os
import signal
import sys


def run_child(request: dict, fds: list[int], set_by_imports: dict) -> int:
    """In the forked child: become the caller's process (process group, standard streams, folder,
    environment, ``sys.argv``/``sys.path``), import the package afresh and run ``python -m teddy``'s
    module as the interpreter would, ending as it ends (non-daemon threads joined, atexit run)."""
    import importlib
    import runpy
    import tempfile

    os.setpgid(0, 0)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in set_by_imports.items():  # as the imports would have in a fresh process
        os.environ.setdefault(name, value)
    tempfile.tempdir = None  # read from TMPDIR on first use
    sys.argv, sys.path[:] = list(request["argv"]), request["path"]
    for name in [m for m in sys.modules if m == "teddy" or m.startswith("teddy.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    _fresh_interpreter_state(request["env"], request["key"]["unbuffered"])
    jobserver = importlib.import_module("teddy.runtime.jobserver")  # the caller's copy
    jobserver.SERVED = True  # its __main__ runs the command here rather than handing it over again
    try:
        runpy.run_module("teddy", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:  # python prints it, then dies of SIGINT
        sys.excepthook(*sys.exc_info())
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 128 + signal.SIGINT  # not reached: the signal ends the process
    except BaseException:  # noqa: BLE001 — an uncaught error ends the job as it ends python: traceback, 1
        sys.excepthook(*sys.exc_info())
        code = 1
    return _finish(code)


def _fresh_interpreter_state(env: dict, unbuffered: bool) -> None:
    """What a fresh interpreter would have that the server's forked copy does not: standard streams on
    the caller's descriptors, unconfigured logging, the job's torch thread count, unseeded numpy."""
    import io
    import logging

    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(open(0, "rb", closefd=False), encoding, errors)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        open(1, "wb", closefd=False),
        encoding,
        errors,
        line_buffering=unbuffered or os.isatty(1),
        write_through=unbuffered,
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", closefd=False), encoding, "backslashreplace", line_buffering=True
    )
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # a fresh process seeds it from the OS


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish(code: int = 0) -> int:
    """Interpreter shutdown's steps that run Python code: join non-daemon threads, run atexit, flush."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    return code
