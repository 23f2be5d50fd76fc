"""Shared helpers for the benchmarks: arguments, timing, peak memory, config, JSON."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def config(*overrides: str):
    from teddy import config as config_mod

    return config_mod.load([ROOT / "config" / "config.yaml"], ["tracking.enabled=false", *overrides])


def parse_args(description: str) -> argparse.Namespace:
    """``--device`` (cpu, cuda, auto), ``--quick`` (smoke sizes), ``--out`` (results folder)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures little")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible (torch {torch.__version__})")
    args.device = torch.device(args.device)
    return args


def sync(device) -> None:
    """Wait for queued CUDA work, so a timer measures it (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, repeats: int, warmup: int = 2, device="cpu") -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_child(make, args, queue):
    import threading

    import psutil

    torch.set_num_threads(1)
    target = make(*args)
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    peak, done = [baseline], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    target()
    done.set()
    sampler.join()
    queue.put((peak[0] - baseline) / 2**20)


def peak_rss_mb(make, *args) -> float:
    """In a fresh process, ``target = make(*args)`` (setup, not measured), then the peak RSS growth
    (MiB) while ``target()`` runs, sampled every 2 ms (CPU memory; a CUDA run would read
    max_memory_allocated)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(make, args, queue))
    proc.start()
    value = queue.get(timeout=900)
    proc.join()
    return value


def peak_memory_mb(device, make, *args) -> float:
    """Peak memory (MiB) while ``make(*args)()`` runs: on CUDA the allocator's peak in this process
    (``max_memory_allocated`` growth), on CPU the peak RSS growth of a fresh process."""
    if torch.device(device).type != "cuda":
        return peak_rss_mb(make, *args)
    target = make(*args)
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    target()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20


def host() -> dict:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write(name: str, payload: dict, folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
