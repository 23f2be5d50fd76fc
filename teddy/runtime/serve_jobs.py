"""The job server's side (``teddy job-server``): import what stage jobs import once, then fork a child
per job that a caller (:func:`teddy.runtime.jobserver.delegate`) hands over; see that module."""

from __future__ import annotations

import os
import signal
import socket
import sys

from teddy.runtime.job_child import run_child
from teddy.runtime.jobserver import (
    ENV,
    START_ENV,
    THREAD_COUNTS,
    interpreter_key,
    key_mismatch,
    read_line,
    send_line,
)

# imported once by the server: what every stage job imports, also inside functions (MLflow's SQL store,
# sklearn's datasets for digits); the package's own modules are imported afresh in each child, from
# its caller's sys.path
PRELOAD = (
    "torch",
    "torchvision",
    "torch._dynamo",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "sklearn.datasets",
)


def preload() -> list[str]:
    """Import the libraries stage jobs use, and the package's stages for what they import at module
    level; return what could not be imported (a library left out is imported by each job)."""
    import importlib
    import pkgutil

    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    import teddy.stages

    for mod in ("teddy.cli", "teddy.runner", "teddy.tracking"):
        importlib.import_module(mod)
    for info in pkgutil.iter_modules(teddy.stages.__path__):
        importlib.import_module(f"teddy.stages.{info.name}")
    return missing


class Server:
    """One listening socket; a forked child per job; a single thread (forking is safe)."""

    def __init__(self, path: str, key: dict, set_by_imports: dict, idle_s: float | None = None):
        import selectors

        self.path, self.idle_s = path, idle_s
        self.key = key  # taken before the libraries were imported
        self.set_by_imports = set_by_imports  # environment variables the imports set (torch's inductor)
        self.jobs: dict[int, tuple[socket.socket, float, str]] = {}
        self.command_pid: int | None = None  # `teddy job-server -- CMD`: stop when CMD ends
        self.command_status: int | None = None
        self.stopping = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.wake_r, self.wake_w = socket.socketpair()
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def say(self, text: str) -> None:
        print(f"teddy job-server: {text}", file=sys.stderr, flush=True)

    def serve(self) -> int:
        """Serve until SIGTERM/SIGINT, the command's end, the parent's death or ``idle_s`` idle. With a
        command, SIGTERM/SIGHUP go to it and the server serves until it ends (its jobs may stop
        cleanly, e.g. checkpoint); Ctrl-C's SIGINT, which the terminal sends the command too, is left
        to it."""
        import time

        signal.set_wakeup_fd(self.wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop if self.command_pid is None else self._to_command)
        parent, idle_since = os.getppid(), time.monotonic()
        try:
            while not self.stopping:
                for key, _ in self.selector.select(timeout=1.0):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self.wake_r:
                        self._drain()
                    else:
                        self._caller_gone(key.fileobj)
                self._reap()
                if self.jobs:
                    idle_since = time.monotonic()
                if os.getppid() != parent or (
                    self.idle_s and time.monotonic() - idle_since > self.idle_s and not self.jobs
                ):
                    self.stopping = True
        finally:
            self.close()
        return self.command_status or 0

    def _stop(self, *_):
        self.stopping = True

    def _to_command(self, signum, _frame):
        if signum != signal.SIGINT and self.command_pid is not None:
            os.kill(self.command_pid, signum)

    def _drain(self):
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self):
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(10)
            uid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[4:8]
            if int.from_bytes(uid, sys.byteorder) != os.getuid():
                raise PermissionError("caller runs as another user")
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
            request = read_line(conn, data)
            if request is None:  # a probe: connected and closed
                conn.close()
                return
            reason = key_mismatch(request.get("key", {}), self.key, self.set_by_imports)
            if reason is None and len(fds) != 3:
                reason = f"{len(fds)} standard streams passed, not 3"
            if reason:
                self.say(f"not taking a job ({reason}); it runs in a fresh interpreter")
                send_line(conn, {"refused": reason})
                conn.close()
                return
            self._start(conn, request, fds)
        except (OSError, ValueError) as err:
            self.say(f"a caller's request failed: {err}")
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _start(self, conn: socket.socket, request: dict, fds: list[int]) -> None:
        import selectors
        import time

        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the server
            code = 1
            try:
                self._forget(conn)
                code = run_child(request, fds, self.set_by_imports)
            except BaseException:  # noqa: BLE001 — the server's own failure to set the job up
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        try:  # the child does it too (whichever runs first): a signal forwarded at once reaches the group
            os.setpgid(pid, pid)
        except (ProcessLookupError, PermissionError):
            pass
        label = " ".join(["teddy", *request["argv"][1:2]])
        self.jobs[pid] = (conn, time.monotonic(), label)
        try:
            send_line(conn, {"pid": pid})
        except OSError:  # the caller left before its job started: the job goes (reaped later)
            self.say(f"pid {pid}: its caller went away before it started; killing the job")
            _kill_group(pid)
            return
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, pid)
        self.say(f"pid {pid} started: {label}")

    def _forget(self, conn: socket.socket):
        """In a child: let go of the server's sockets (the caller's connection too) and signal set-up."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.selector.close()
        for s in (conn, self.listener, self.wake_r, self.wake_w, *(c for c, _, _ in self.jobs.values())):
            s.close()

    def _caller_gone(self, conn: socket.socket):
        """A readable job connection: its caller closed it (killed): the job goes too."""
        pid = self.selector.get_key(conn).data
        try:
            if conn.recv(1):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self.say(f"pid {pid}: its caller went away; killing the job")
        _kill_group(pid)

    def _reap(self):
        import time

        for pid in list(self.jobs) + ([self.command_pid] if self.command_pid else []):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            if pid == self.command_pid:
                code = os.waitstatus_to_exitcode(status)
                self.command_status = 128 - code if code < 0 else code  # a signal: the shell's 128 + N
                self.command_pid, self.stopping = None, True
                continue
            conn, t0, label = self.jobs.pop(pid)
            outcome = (
                {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
            )
            self.say(f"pid {pid} {label}: {outcome} after {time.monotonic() - t0:.1f} s")
            if conn.fileno() != -1 and conn in self.selector.get_map():
                self.selector.unregister(conn)
            try:
                conn.setblocking(True)
                send_line(conn, outcome)
            except OSError:
                pass
            conn.close()

    def close(self):
        """Stop listening and end the jobs still running (their callers learn it)."""
        for pid in self.jobs:
            _kill_group(pid)
        for pid, (conn, _, _) in self.jobs.items():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            conn.close()
        self.jobs.clear()
        signal.set_wakeup_fd(-1)
        self.selector.close()
        self.listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def main(socket_path: str | None, idle_s: float | None, command: list[str]) -> int:
    """``teddy job-server [--socket PATH] [--idle-timeout S] [-- COMMAND ...]``: with a command, serve
    while it runs (``TEDDY_JOB_SERVER`` set in its environment) and exit with its code; without one,
    serve until stopped (SIGTERM), ``idle_s`` without a job, or the parent's end."""
    import json
    import tempfile

    stash = "TEDDY_JOB_SERVER_THREAD_ENV"
    if any(name in START_ENV for name in THREAD_COUNTS):
        # libgomp reads these when torch loads: start without them, so that the server's default is a
        # fresh process's, and hand them back to the command
        env = {k: v for k, v in START_ENV.items() if k not in THREAD_COUNTS}
        env[stash] = json.dumps({k: START_ENV[k] for k in THREAD_COUNTS if k in START_ENV})
        os.execve(sys.executable, sys.orig_argv, env)
    returned = json.loads(os.environ.pop(stash, "{}"))  # the thread counts the command is given back
    if socket_path is None:
        socket_path = os.path.join(tempfile.mkdtemp(prefix="teddy-jobs-"), "socket")
    elif _listening(socket_path):
        print(f"teddy job-server: a server already listens at {socket_path}", file=sys.stderr)
        return 2
    elif os.path.exists(socket_path):
        os.unlink(socket_path)  # a stopped server's socket
    start_env = {k: v for k, v in START_ENV.items() if k != stash}
    key = interpreter_key(start_env)
    missing = preload()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a fork could not use CUDA again
        print("teddy job-server: CUDA was initialised while importing; not serving", file=sys.stderr)
        if not command:
            return 1
        import subprocess

        return subprocess.call(command, env={**start_env, **returned})  # its jobs as fresh processes
    set_by_imports = {k: v for k, v in os.environ.items() if k not in start_env}
    server = Server(socket_path, key, set_by_imports, idle_s)
    if missing:
        server.say(f"not preloaded (each job imports it): {', '.join(missing)}")
    server.say(f"listening at {socket_path} (export {ENV}={socket_path})")
    if command:
        import subprocess

        env = {**start_env, **returned, ENV: socket_path}
        try:
            server.command_pid = subprocess.Popen(command, env=env).pid
        except OSError as err:
            server.close()
            print(f"teddy job-server: cannot run {command[0]!r}: {err}", file=sys.stderr)
            return 127
    return server.serve()


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
