"""Progress lines for long stages: a tqdm bar on a terminal, a log line every run.progress_seconds elsewhere."""

from __future__ import annotations

import logging
import sys
import time


class Progress:
    """Progress of a long loop with its rate and the time left: a tqdm bar on a terminal, else a log
    line every ``every`` seconds (SLURM logs show where a job is). ``Progress.every`` is set from
    config key run.progress_seconds by the CLI.

    ``done``: the units a resumed job finished before this run (or :meth:`resume`, once the loop
    knows); the rate and the time left count only this run's work, so a resumed job does not
    claim the checkpoint's epochs as done in seconds."""

    every = 30.0

    def __init__(self, what: str, total: int, every: float | None = None, done: int = 0):
        self.what, self.total = what, total
        self.every = Progress.every if every is None else every
        self.last = time.monotonic()
        self.bar = None
        self.resume(done)

    def resume(self, done: int) -> None:
        """The loop resumed at ``done``: the rate is measured from here and now."""
        self.first, self.start = done, time.monotonic()
        if self.bar is not None:
            self.bar.close()
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=done, desc=self.what, leave=False, dynamic_ncols=True)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done >= self.total:
                self.bar.close()
            return
        now = time.monotonic()
        if now - self.last >= self.every or done == self.total:
            rate = (done - self.first) / max(now - self.start, 1e-9)
            left = (self.total - done) / rate if rate else float("inf") if done < self.total else 0.0
            pace = f"{rate:.1f}/s" if rate >= 1 or not rate else f"{1 / rate:.1f} s each"
            logger = logging.getLogger(f"teddy.{self.what.split()[0]}")
            logger.info("%s: %d/%d (%s, %.0f s left)", self.what, done, self.total, pace, left)
            self.last = now
