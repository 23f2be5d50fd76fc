"""The device a job runs on: resolving run.device (SLURM's GPU grant included), autocast, seeding, the
device's name and peak memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import resource

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
