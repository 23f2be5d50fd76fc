"""Preemption (SIGTERM/SIGUSR1 from SLURM or a user): stop at the next safe point, checkpoint, exit 75."""

from __future__ import annotations

import contextlib


class Preempted(RuntimeError):
    """Raised by a long loop after it saved its checkpoint because SIGTERM/SIGUSR1 arrived."""


class CallAbandoned(BaseException):
    """Raised inside a blocking call (a network store) when SIGTERM/SIGUSR1 arrives during it: a
    BaseException, so that a library's ``except Exception`` retry loop cannot swallow it."""


class _Preemption:
    """SIGTERM / SIGUSR1 (SLURM's preemption and ``--signal`` warnings) set a flag; long loops poll
    ``requested`` at step boundaries, write their checkpoint and raise :class:`Preempted`.
    The CLI turns that into exit code 75 (EX_TEMPFAIL) so Snakemake retries / SLURM requeues,
    and the rerun resumes from the checkpoint."""

    EXIT_CODE = 75

    def __init__(self):
        self.signal: int | None = None
        self._abandoning: str | None = None

    @contextlib.contextmanager
    def abandonable(self, what: str):
        """Around a call that may block for long and whose result the stage can do without (an
        MLflow store call): SIGTERM/SIGUSR1 arriving during it raise :class:`CallAbandoned` inside
        the call at once, instead of after the call's own timeout. The flag stays set, so the stage's
        next poll saves its checkpoint and stops as usual."""
        if self.requested:
            raise CallAbandoned(f"{what}: not started, a stop was requested")
        self._abandoning = what
        try:
            yield
        finally:
            self._abandoning = None

    @contextlib.contextmanager
    def handling(self):
        """Catch the signals while one stage runs, then restore the previous handlers, so a process
        that calls the CLI in-process (tests, notebooks) keeps its own SIGTERM behaviour."""
        import signal

        self.signal = None
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        if self._abandoning is not None:
            what, self._abandoning = self._abandoning, None
            raise CallAbandoned(f"{what}: abandoned on signal {signum}")

    @property
    def requested(self) -> bool:
        return self.signal is not None


preemption = _Preemption()
