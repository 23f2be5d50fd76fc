"""torch.distributed (DDP) helpers: rank, world size, the main process, splitting work and weighting shares."""

from __future__ import annotations

import os

import torch


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
