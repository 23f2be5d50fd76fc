"""Files written so that a reader never sees half of one: atomic writes (disk-full named), torch and
JSON files, sha256, and the error every bad artifact raises.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from teddy.runtime.distributed import is_main

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path, need: int | None = None) -> ArtifactError:
    """The one-line error for a write to ``path`` that ran out of space (or quota)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    sizes = f"{free / 2**20:.0f} MB free" if free is not None else "free space unknown"
    sizes += f", about {need / 2**20:.1f} MB needed" if need else ""
    return ArtifactError(
        f"{path}: no space left on the device writing it ({sizes}); free space there, or point the "
        "results elsewhere, and rerun: nothing was replaced (an earlier version of the file is intact)"
    )


@contextlib.contextmanager
def atomic_path(path: str | Path, size: int | None = None):
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.
    Running out of space (``size``: what the block writes, when known) is one :func:`disk_full`
    error naming the path; the temporary file goes and an earlier ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise disk_full(path, size) if err.errno in DISK_FULL else err from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise disk_full(path, size) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_torch(obj: Any, path: str | Path) -> str:
    """Atomic, and byte-reproducible: torch.save names the archive after the file it writes, so
    saving to the random temporary name directly would change the checksum on every run.
    Returns the file's sha256. Under torch.distributed only rank 0 writes (all ranks get the hash)."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    if is_main():
        with atomic_path(path, size=buffer.getbuffer().nbytes) as tmp:
            tmp.write_bytes(buffer.getbuffer())
    return hashlib.sha256(buffer.getbuffer()).hexdigest()


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the stage that produces it first")
    return torch.load(path, map_location=map_location, weights_only=True)


def write_json(obj: Any, path: str | Path, indent: int | None = 2) -> None:
    """``indent`` None: compact, through json's C encoder (an index of millions of entries)."""
    if not is_main():  # torch.distributed: rank 0 writes
        return
    text = json.dumps(obj, indent=indent, sort_keys=False) + "\n"
    with atomic_path(path, size=len(text.encode())) as tmp:
        tmp.write_text(text)


def first_line(err: BaseException) -> str:
    """An exception's first message line (at most 200 characters), or its type name."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


class ArtifactError(RuntimeError):
    """A missing, damaged or inconsistent artifact: the message names the file, the problem and the fix."""


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: run the stage that produces it first")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(
            f"{path}: not valid JSON ({err}): the file is truncated or corrupt; rerun the stage that wrote it"
        ) from None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
