"""Shared helpers for the benchmarks: timing, peak memory in a fresh process, config, JSON."""

from __future__ import annotations

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


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
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


def host() -> dict:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
