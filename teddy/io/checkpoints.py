"""Resumable checkpoints, resumed only by the same job: the fingerprint of its config, input folders
and code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from teddy.io.files import first_line, load_torch, save_torch, sha256
from teddy.runtime.distributed import is_main

log = logging.getLogger(__name__)


def code_digest() -> str:
    """sha256 over the ``teddy`` package's sources: a checkpoint from other code is not resumed."""
    h, package = hashlib.sha256(), Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def input_digest(folder: str | Path) -> str:
    """sha256 of an input folder's ``metrics.json``: every stage writes it last, with its wall time
    and provenance, so a rerun of the stage that made the folder changes it."""
    path = Path(folder) / "metrics.json"
    return sha256(path) if path.is_file() else "absent"


def fingerprint(params: dict, inputs: dict) -> str:
    """One digest of everything a job's result depends on: its config ``params``, its input folders
    (``name → folder or list of folders``) and the code."""
    digests = {
        name: [input_digest(f) for f in folders] if isinstance(folders, list) else input_digest(folders)
        for name, folders in sorted(inputs.items())
    }
    payload = json.dumps(
        {"params": params, "inputs": digests, "code": code_digest()}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class _Resume:
    """The fingerprint of the job now running (set by the CLI around a stage); resumable
    checkpoints carry it, and one written under another fingerprint is not resumed."""

    def __init__(self):
        self.fingerprint: str | None = None

    @contextlib.contextmanager
    def job(self, fingerprint: str | None):
        previous, self.fingerprint = self.fingerprint, fingerprint
        try:
            yield self
        finally:
            self.fingerprint = previous


resume = _Resume()


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Save a resumable ``state`` (a dict) stamped with the running job's fingerprint."""
    save_torch({**state, "fingerprint": resume.fingerprint}, path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict | None:
    """The resumable state at ``path``, or None when there is none or it belongs to another job:
    other config, other inputs or other code (then it is removed, and one log line says so)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = load_torch(path, map_location)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/EOFError/UnpicklingError/...
        log.warning(
            "not resuming from %s: it cannot be read (%s; damaged outside the job, whose writes are "
            "atomic); starting afresh",
            path,
            first_line(err),
        )
        if is_main():
            path.unlink(missing_ok=True)
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != resume.fingerprint:
        log.warning(
            "not resuming from %s: it was written for other settings, inputs or code than this job's "
            "(config, input folders, teddy sources); starting afresh",
            path,
        )
        if is_main():
            path.unlink(missing_ok=True)
        return None
    return saved
