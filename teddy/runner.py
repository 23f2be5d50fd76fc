"""One stage execution, whatever started it (``teddy <stage>``, Snakemake, DVC, a test): the device
(DDP under torchrun), MLflow tracking, resume fingerprints, provenance, ``metrics.json`` and
``config.resolved.yaml`` beside the outputs, and the exit code each way a stage stops maps to.
``teddy.cli`` turns argv into a call of :func:`run`; the modules under ``teddy.stages`` do the work."""

from __future__ import annotations

import importlib
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from teddy import config as config_mod
from teddy import protocol, tracking
from teddy.data import datasets
from teddy.data.datasets import DatasetError
from teddy.io import artifacts
from teddy.io.checkpoints import fingerprint, resume
from teddy.io.files import DISK_FULL, ArtifactError, disk_full, read_json, write_json
from teddy.method import registry
from teddy.pool import naming
from teddy.runtime.device import DeviceUnavailable, device_name, peak_memory_mb, resolve_device
from teddy.runtime.distributed import distributed, init_distributed, is_main, world_size
from teddy.runtime.preemption import Preempted, preemption
from teddy.runtime.progress import Progress
from teddy.runtime.provenance import provenance
from teddy.tracking import NullTracker
from teddy.workflow.params import result_params

log = logging.getLogger("teddy")

TAG_KEYS = ("method", "ipc", "arch", "seed")  # what runs are compared by in MLflow


# stages that put no tensor on a device: they run wherever they are started, whatever run.device says
# (a GPU run's report is rebuilt on a laptop; its data prepared on a login node)
HOST_STAGES = ("prepare-data", "report")


def execute(stage: str, cfg, inputs: dict, out: Path, selection: dict, options: dict | None = None) -> dict:
    """Run one stage with timing, memory, metrics file and MLflow mirroring."""
    Progress.every = cfg.run.progress_seconds
    module = importlib.import_module(f"teddy.stages.{stage.replace('-', '_')}")
    if stage in HOST_STAGES:
        device = torch.device("cpu")
    else:
        device = resolve_device(cfg.run.device)
        init_distributed(device)  # torchrun with several processes: DDP; rank 0 writes and logs
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    prov = provenance()
    # relabel and evaluate name their set by folder (distill/<method>/ipc<K>/seed<S>): tag and name by it
    from_set = artifacts.folder_selection(Path(inputs["synthetic"]) / "x") if "synthetic" in inputs else {}
    tags = {
        "stage": stage,
        "study": cfg.study.name,
        "dataset": cfg.run.dataset,
        **from_set,
        **selection,
        "git_sha": prov["git_sha"],
    }
    if {"ipc", "arch", "method"} <= set(tags):  # the MLflow UI's "Group by: setting": a method's seeds
        tags["setting"] = f"ipc{tags['ipc']} {tags['arch']} {tags['method']}"
    out.mkdir(parents=True, exist_ok=True)
    name = tracking.run_name(stage.replace("-", "_"), {**from_set, **selection, **(options or {})})
    run_ctx = (
        tracking.stage_run(cfg, stage.replace("-", "_"), tags, out, name)
        if is_main()
        else nullcontext(NullTracker())
    )
    params = result_params(
        config_mod.to_dict(cfg), stage.replace("-", "_"), selection, (options or {}).get("member")
    )
    with run_ctx as tracker, resume.job(fingerprint(params, inputs)):
        t0 = time.perf_counter()
        metrics = module.run(
            cfg, inputs, {"out": out}, **selection, **(options or {}), device=device, tracker=tracker
        )
        metrics["wall_s"] = time.perf_counter() - t0
        metrics |= peak_memory_mb(device)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        tracker.log_metrics(scalars)
        tracker.set_tags({k: metrics[k] for k in TAG_KEYS if k in metrics and k not in selection})
        if "data" in inputs or stage == "prepare-data":  # the dataset it read (or made) as the run's input
            tracker.log_dataset(Path(inputs.get("data", out)) / "manifest.json")
        record = {
            "stage": stage,
            "dataset": cfg.run.dataset,
            **selection,
            **metrics,
            "inputs": inputs,
            "device": str(device),
            "device_name": device_name(device),
            **prov,
        }
        if distributed():
            import torch.distributed as dist

            record |= {"world_size": world_size(), "backend": dist.get_backend()}
        if is_main():
            config_mod.dump(cfg, out / config_mod.RESOLVED)
        write_json(record, out / "metrics.json")
    if distributed():
        import torch.distributed as dist

        dist.destroy_process_group()
    if is_main():
        log.info("%s done in %.1f s → %s", stage, metrics["wall_s"], out)
    return record


def run(stage: str, cfg, inputs: dict, out: Path, selection: dict, options: dict | None = None) -> int:
    """Run ``stage`` (checked by :func:`check_selection` first) and map how it stops to an exit code
    and one line on stderr: 0 done; 75 preempted (the same command resumes); 1 bad input, no GPU, a
    full disk."""
    try:
        with preemption.handling():
            execute(stage, cfg, inputs, out, selection, options)
    except Preempted as err:
        print(f"teddy {stage}: {err}; rerun the same command to resume", file=sys.stderr)
        return preemption.EXIT_CODE
    except (ArtifactError, DeviceUnavailable, DatasetError) as err:  # bad input, no GPU: what and the fix
        print(f"teddy {stage}: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a write outside the atomic helpers (which name their file) ran out of space
        if err.errno not in DISK_FULL:
            raise
        where = Path(err.filename) if err.filename else out / "(a file)"
        print(f"teddy {stage}: {disk_full(where)}", file=sys.stderr)
        return 1
    return 0


def smallest_class(cfg, inputs: dict) -> int:
    """Training images of the smallest class: from the prepared set's manifest when the stage reads
    one (no walk of an image folder: ImageNet's takes a minute), else from the dataset's spec."""
    manifest = Path(inputs["data"]) / artifacts.DATA_MANIFEST if "data" in inputs else None
    if manifest is not None and manifest.is_file():
        per_class = read_json(manifest).get("train_per_class")
        if per_class:
            return min(per_class)
    return datasets.get(cfg.run.dataset).min_train_per_class(config_mod.to_dict(cfg.prepare_data))


def check_selection(cfg, selection: dict, inputs: dict, options: dict) -> str | None:

    merging = bool(options.get("merge_from"))
    if "member" in options:  # pretrain-pool
        if options.get("assemble_from"):
            return "--member and --assemble exclude each other" if options.get("member") else None
        if "data" not in inputs:
            return "pass --data (prepare-data's --out)"
        if options.get("member"):
            try:
                kind = naming.parse_member(cfg.pretrain_pool, options["member"])[0]
            except ValueError as err:
                return str(err)
            if naming.needs_base(cfg.pretrain_pool, kind) and "base" not in inputs:
                member = options["member"]
                return f"--member {member} starts from the base model: pass --base (the base job's --out)"
    algo = protocol.algorithm(cfg, selection["method"]) if "method" in selection else None
    needs_pool = algo in registry.METHODS and registry.get(algo).pool is not None
    if needs_pool and "pool" not in inputs and not merging:
        return f"--method {selection['method']} synthesizes from the pool: pass --pool (pretrain-pool's --out)"
    if "arch" in selection and (problem := config_mod.unknown_arch(selection["arch"])) is not None:
        return f"--arch: {problem}"
    if "arch" in selection:  # evaluate: the protocol decides whether soft labels are read
        if protocol.hard_labels(cfg) and "soft_labels" in inputs:
            return "evaluate.labels is hard (students learn each image's own label): leave out --soft-labels"
        if not protocol.hard_labels(cfg) and "soft_labels" not in inputs:
            return "evaluate.labels is soft: pass --soft-labels (relabel's --out), or set evaluate.labels=hard"
    known = [*registry.METHODS, *cfg.distill.variants]
    if "method" in selection and selection["method"] not in known:
        return f"--method {selection['method']!r}: use one of {', '.join(known)} (variants: distill.variants)"
    if "ipc" in selection:
        limit = smallest_class(cfg, inputs)
        if not 1 <= selection["ipc"] <= limit:
            return (
                f"--ipc {selection['ipc']}: must be between 1 and {limit} (training images of "
                f"the smallest class of {cfg.run.dataset})"
            )
    return None
