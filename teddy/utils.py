"""Small shared helpers: device, seeding, atomic files, checksums, provenance."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class DeviceUnavailable(RuntimeError):
    """The job asked for a GPU (run.device: cuda, or a SLURM GPU job) and CUDA is not usable."""


def slurm_granted_gpus() -> str | None:
    """The GPUs SLURM granted this job (e.g. '0' or '2'), or None outside a GPU job."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    for key in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):  # GPU indices, e.g. '0' or '0,1'
        if os.environ.get(key, "").strip():
            return os.environ[key]
    count = os.environ.get("SLURM_GPUS_ON_NODE", "").strip()  # a count
    return count if count.isdigit() and int(count) > 0 else None


def resolve_device(name: str) -> torch.device:
    """run.device → a torch device. ``auto`` takes CUDA when usable and logs its choice; a job that
    asked for a GPU (``cuda``, or a SLURM job granted one under ``auto``) fails at once without
    CUDA instead of crawling on the CPU for days."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))  # one GPU per process under torchrun
    if name == "auto":
        granted = slurm_granted_gpus()
        if granted and not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"this SLURM job was granted GPU(s) {granted} but CUDA is not usable here (torch "
                f"{torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): "
                "fix the node's driver or torch build, or set run.device: cpu to run on the CPU on purpose"
            )
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        log.info(
            "run.device auto: running on %s",
            torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        )
        return device
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        # a bare `cuda` is this process's GPU (LOCAL_RANK under torchrun, else 0): torch.cuda.set_device
        # and DDP's device_ids need the index (seen on an H100: torchrun at world size 1 failed without)
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"config key run.device is {name!r} but no CUDA device is visible; use auto or cpu"
        )
    return device


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on CUDA when asked for; a no-op context elsewhere."""
    if torch.device(device).type == "cuda" and dtype == "bfloat16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


# -- torch.distributed (torchrun): data-parallel base-model and student training ------------------


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """Only rank 0 writes files, logs to MLflow and prints results."""
    return rank() == 0


def launched_distributed() -> bool:
    """Started by torchrun (or another env:// launcher): rank, world size and rendezvous are set."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device) -> None:
    """Join the process group when launched by torchrun, even with one process (nccl on CUDA, gloo
    on CPU), so a one-GPU node runs the same DDP/NCCL path as a multi-GPU one."""
    import torch.distributed as dist

    if launched_distributed() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """DDP wrapper when running under torchrun (gradients averaged over ranks), else the model."""
    if not distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def local_part(idx: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global mini-batch (every rank draws the same batch from the same
    seed, so the global batch, learning rate and schedule are those of a single process)."""
    world = world_size()
    return idx[rank() :: world] if len(idx) >= world else idx


def share_weight(local: int, total: int) -> float:
    """Factor for a rank's batch-mean loss so that DDP's average over ranks is the mean over the
    whole global batch: local · world / total (1 outside torchrun; 1 when every rank holds the
    whole batch because it is smaller than the world size)."""
    world = world_size()
    if world == 1 or total < world:
        return 1.0
    return local * world / total


def write_json(obj: Any, path: str | Path) -> None:
    if not is_main():  # torch.distributed: rank 0 writes
        return
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
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


def device_name(device: torch.device) -> str:
    """What ran a job, for readers of its results: the GPU's model, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU {model} ({os.cpu_count()} cores)"


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


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
            left = (self.total - done) / rate if rate else float("inf")
            pace = f"{rate:.1f}/s" if rate >= 1 or not rate else f"{1 / rate:.1f} s each"
            logger = logging.getLogger(f"teddy.{self.what.split()[0]}")
            logger.info("%s: %d/%d (%s, %.0f s left)", self.what, done, self.total, pace, left)
            self.last = now


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


# -- resumable checkpoints: resumed only by the same job (config, inputs, code) ----------------------


def code_digest() -> str:
    """sha256 over the ``teddy`` package's sources: a checkpoint from other code is not resumed."""
    h, package = hashlib.sha256(), Path(__file__).resolve().parent
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
