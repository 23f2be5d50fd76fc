"""Stage distill: build the synthetic set.

Methods (``--method``):
  teddy     per iteration draw φ from the pool of weak (prior) models; objective ``distill.matching``:
            ``bn``: CE(φ(A(x̃)), ỹ) + α_bn Σ_l w_l (‖μ_l − μ_l^φ‖₂ + ‖σ²_l − σ²_l^φ‖₂), no real images;
            ``taylor``: −ηK ⟨∇θ CE(φ(real)), ∇θ CE(φ(A(x̃)))⟩, the paper's first-order term;
            ``cosine``: Σ_c 1 − cos(∇θ CE(φ(real_c)), ∇θ CE(φ(A(x̃_c)))), DC-style gradient matching.
  sre2l     the ``bn`` objective at the one fully trained base model.
  unrolled  the exact bi-level objective: K SGD steps on x̃ from φ, CE on a real batch (teddy.method.meta).
  random    IPC real training images per class (the honest baseline).

Batches are fixed up front: batch b holds one image of each class of a class group at each of
``distill.slots_per_batch`` IPC slots and is seeded by (seed, b), so its result never depends on
which other batches share the job. A shard is a union of whole batches (b ≡ shard mod n);
``--merge`` assembles the shards. Each shard checkpoints every ``distill.checkpoint_every``
iterations and resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from teddy import augment
from teddy import config as config_mod
from teddy.data.source import open_source
from teddy.io import artifacts
from teddy.io.artifacts import BATCHES, GRID, SYNTHETIC  # the files this stage writes
from teddy.io.checkpoints import load_checkpoint, save_checkpoint
from teddy.io.files import ArtifactError, atomic_path, read_json
from teddy.method import registry
from teddy.method.init import init_batch, random_real
from teddy.method.objectives import make_objective
from teddy.pool.members import Teacher, load_pool, pool_sampler
from teddy.runtime.device import autocast
from teddy.runtime.preemption import Preempted, preemption
from teddy.runtime.progress import Progress
from teddy.train import warmup_cosine
from teddy.workflow import params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    index: int
    slots: tuple[int, ...]
    classes: tuple[int, ...]

    @property
    def labels(self) -> torch.Tensor:
        """One image per (slot, class), slot-major."""
        return torch.tensor(self.classes).repeat(len(self.slots))


def plan_batches(
    num_classes: int, ipc: int, classes_per_batch: int | None, slots_per_batch: int = 1
) -> list[Batch]:
    """All optimisation batches of a synthetic set, in canonical order (slot-major)."""
    group = classes_per_batch or num_classes
    groups = [tuple(range(s, min(s + group, num_classes))) for s in range(0, num_classes, group)]
    slots = [tuple(range(s, min(s + slots_per_batch, ipc))) for s in range(0, ipc, slots_per_batch)]
    return [
        Batch(k * len(groups) + g, slot, cls) for k, slot in enumerate(slots) for g, cls in enumerate(groups)
    ]


def batches_of(cfg, num_classes: int, ipc: int) -> list[Batch]:
    return plan_batches(num_classes, ipc, cfg.distill.classes_per_batch, cfg.distill.slots_per_batch)


def batch_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def new_state(x0: torch.Tensor, cfg, device) -> dict:
    x = x0.to(device)
    if torch.device(device).type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.distill.lr, betas=(0.5, 0.9))
    return {"x": x, "opt": opt, "sched": warmup_cosine(opt, cfg.distill.iterations), "it": 0, "curve": None}


def state_dict(st: dict, gen: torch.Generator) -> dict:
    return {
        "x": st["x"].detach().cpu(),
        "opt": st["opt"].state_dict(),
        "sched": st["sched"].state_dict(),
        "it": st["it"],
        "curve": None if st["curve"] is None else st["curve"].cpu(),
        "gen": gen.get_state(),
    }


def load_state(saved: dict, cfg, gen: torch.Generator, device) -> dict:
    st = new_state(saved["x"], cfg, device)
    st["opt"].load_state_dict(saved["opt"])
    st["sched"].load_state_dict(saved["sched"])
    st["it"] = saved["it"]
    st["curve"] = None if saved["curve"] is None else saved["curve"].to(device)
    gen.set_state(saved["gen"])
    return st


@dataclass(frozen=True)
class Schedule:
    """Everything random about a batch's iterations, drawn up front from the batch's generator and
    moved to the device once, so the loop never waits for the host."""

    members: list[int]
    shifts: list[tuple[int, int]]
    crops: torch.Tensor  # (iterations, n, 4)


def crop_floor(d, it: int) -> float:
    """Iteration ``it``'s random-resized-crop floor: distill.crop_scale_min, or with
    crop_scale_min_end the linear curriculum from the one (first step) to the other (last step)."""
    if d.crop_scale_min_end is None:
        return d.crop_scale_min
    return d.crop_scale_min + (d.crop_scale_min_end - d.crop_scale_min) * it / max(d.iterations - 1, 1)


def draw_schedule(cfg, n: int, draw, gen: torch.Generator, device) -> Schedule:
    d = cfg.distill
    members, shifts, crops = [], [], []
    for it in range(d.iterations):
        members.append(draw(it, gen))
        shifts.append(augment.sample_shift(d.jitter, gen))
        crops.append(augment.sample_crops(n, crop_floor(d, it), d.flip, gen))
    crops = torch.stack(crops) if crops else torch.zeros(0, n, 4)
    return Schedule(members, shifts, crops.to(device))


def synthesize_batch(
    st: dict, labels: torch.Tensor, pool: list, objective, schedule: Schedule, cfg, gen, device, save=None
) -> dict:
    """Run the remaining iterations of one batch; ``save(state)`` every checkpoint_every steps."""
    d = cfg.distill
    labels = labels.to(device)
    x, opt, sched = st["x"], st["opt"], st["sched"]
    while st["it"] < d.iterations:
        if preemption.requested and save is not None:
            save(st)
            raise Preempted(f"preempted at iteration {st['it']} of a batch; checkpoint saved")
        it = st["it"]
        view = augment.apply_crops(augment.roll(x, schedule.shifts[it]), schedule.crops[it])
        with autocast(device, cfg.run.dtype):
            loss, terms = objective(pool[schedule.members[it]], view, labels, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(0, 1)
            if st["curve"] is None:
                st["curve"] = torch.zeros(d.iterations, len(terms), device=device)
            st["curve"][it] = terms.detach().float()  # stays on the device: no host sync
        st["it"] += 1
        if save is not None and st["it"] % d.checkpoint_every == 0 and st["it"] < d.iterations:
            save(st)
    return st


def run_shard(
    cfg, inputs: dict, out: Path, method: str, ipc: int, seed: int, shard: tuple[int, int], device, tracker
) -> dict:
    """Synthesize the batches of shard ``(i, n)`` into ``out/batches.pt`` (resuming if stopped)."""
    data_dir = Path(inputs["data"])
    manifest = read_json(data_dir / artifacts.DATA_MANIFEST)
    d, spec = cfg.distill, registry.get(method)
    data = open_source(data_dir, cfg.prepare_data.workers) if spec.reads_real(cfg) else None
    archs = d.pool_archs if spec.pool == "members" else None
    pool, pool_manifest = load_pool(
        inputs["pool"], spec.pool_kind(cfg), device, d.pool_size, archs, built_for=cfg, data_dir=inputs["data"]
    )
    draw = pool_sampler(d.pool_sampling, pool_manifest)
    objective = make_objective(method, cfg, data, device)
    teacher = (
        Teacher(inputs["pool"], cfg.relabel.teacher, device, cfg, inputs["data"])
        if d.init == "teacher"
        else None
    )
    batches = batches_of(cfg, manifest["num_classes"], ipc)[shard[0] :: shard[1]]
    ckpt_path = out / "checkpoint.pt"
    saved = load_checkpoint(ckpt_path) or {"done": {}, "current": None}
    done, saved_current = saved["done"], saved["current"]
    resumed = {
        "resumed_batches": len(done),
        "resumed_iterations": saved_current["state"]["it"] if saved_current else 0,
    }
    t0, iters, image_iters = time.perf_counter(), 0, 0
    member_counts = [0] * len(pool)  # iterations each member served in the batches this job synthesizes

    def finished() -> int:  # this shard's batches in the checkpoint's done set
        return sum(b.index in done for b in batches)

    what = f"distill {method} ipc{ipc} seed{seed} shard {shard[0]}/{shard[1]} batches"
    progress = Progress(what, len(batches), done=finished())
    for batch in batches:
        progress.update(finished())
        if batch.index in done:
            continue
        s = batch_seed(seed, batch.index)
        gen = torch.Generator().manual_seed(s)
        schedule = draw_schedule(cfg, len(batch.labels), draw, gen, device)
        for m in schedule.members:
            member_counts[m] += 1
        if saved_current is not None and saved_current["index"] == batch.index:
            st = load_state(saved_current["state"], cfg, gen, device)
        else:
            x0 = init_batch(
                manifest, cfg, data, batch, s, ipc=ipc, set_seed=seed, teacher=teacher, device=device
            )
            st = new_state(x0, cfg, device)
        start = st["it"]

        def save(st, batch=batch, gen=gen):
            save_checkpoint(
                {"done": done, "current": {"index": batch.index, "state": state_dict(st, gen)}}, ckpt_path
            )

        st = synthesize_batch(st, batch.labels, pool, objective, schedule, cfg, gen, device, save)
        iters += st["it"] - start
        image_iters += (st["it"] - start) * len(batch.labels)
        curve = st["curve"] if st["curve"] is not None else torch.zeros(0, len(objective.names))
        done[batch.index] = {"images": st["x"].detach().cpu(), "labels": batch.labels, "curve": curve.cpu()}
        save_checkpoint({"done": done, "current": None}, ckpt_path)
    progress.update(len(batches))
    elapsed = time.perf_counter() - t0
    artifacts.save(done, out / BATCHES)
    ckpt_path.unlink(missing_ok=True)
    # a shard may hold no batches (more shards than the IPC has batches): its part is empty
    curves = [b["curve"] for b in done.values()]
    curve = torch.stack(curves).mean(0) if curves else torch.zeros(0, len(objective.names))
    for it in range(0, len(curve), max(1, len(curve) // 100)):
        tracker.log_metrics({f"loss_{n}": float(curve[it, k]) for k, n in enumerate(objective.names)}, step=it)
    metrics = {f"final_loss_{n}": float(curve[-1, k]) for k, n in enumerate(objective.names) if len(curve)}
    bad = [n for k, n in enumerate(objective.names) if len(curve) and not torch.isfinite(curve[:, k]).all()]
    metrics["health"] = [f"diverged: non-finite synthesis loss ({', '.join(bad)})"] if bad else []
    for problem in metrics["health"]:
        log.warning(
            "distill %s ipc%d seed%d: %s (lower distill.lr or the loss weights)", method, ipc, seed, problem
        )
    return (
        metrics
        | resumed
        | {
            "objective": type(objective).__name__,
            "pool_size": len(pool),
            "pool_members": [e["file"] for e in pool_manifest],  # what it drew from
            "member_draws": member_counts,
            "batches": len(done),
            "synthesis_key": synthesis_key(cfg, method, ipc, seed, inputs["pool"]),
            "iter_s": elapsed / max(1, iters),
            "images_per_s": image_iters / max(elapsed, 1e-9),
        }
    )


def synthesis_key(cfg, algorithm: str, ipc: int, seed: int, pool_dir) -> str:
    """What makes shards parts of one synthetic set: the algorithm, IPC and seed, the config keys its
    result depends on (the same ``param_keys`` that trigger Snakemake's reruns: dataset, dtype, the
    distill keys the algorithm reads) and the pool (its manifest's sha256). Shards with different
    keys are batches of different sets."""
    data = config_mod.to_dict(cfg)
    settings = params.params_of(data, params.param_keys(data, "distill", method=algorithm))
    manifest = Path(pool_dir) / "manifest.json"
    pool = artifacts.hash_file(manifest) if manifest.is_file() else None
    what = [algorithm, ipc, seed, settings, pool]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_parts(folders: list, label: str, ipc: int, seed: int) -> None:
    """The shards given to a merge are parts of this one set: its method, IPC and seed, one shard
    count, each shard once, and one synthesis key (same settings, same pool)."""
    parts = [(Path(f), read_json(Path(f) / "metrics.json")) for f in folders]
    for folder, m in parts:
        theirs = (m.get("method"), m.get("ipc"), m.get("seed"))
        if theirs != (label, ipc, seed):
            raise ArtifactError(
                f"{folder} is a shard of {theirs[0]} ipc{theirs[1]} seed{theirs[2]}, not of {label} ipc{ipc} "
                f"seed{seed}: merge only the shard folders of one set (--method, --ipc, --seed as theirs)"
            )
    shards = [m["shard"] for _, m in parts if "shard" in m]
    counts = {s.split("/")[1] for s in shards}
    if len(counts) > 1 or len(set(shards)) < len(shards):
        raise ArtifactError(
            f"shards {[str(f) for f, _ in parts]} are {shards}: a merge takes each shard of one split "
            "(i/n, one n) once"
        )
    keys = [(f, m["synthesis_key"]) for f, m in parts if "synthesis_key" in m]
    for folder, key in keys[1:]:
        if key != keys[0][1]:
            raise ArtifactError(
                f"{folder} was synthesized with other distill settings or another pool than {keys[0][0]}: "
                "its batches belong to another set; rerun the shards with one config and one pool"
            )


def merge(folders: list[Path], expected: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Assemble shard folders (any count) into the set, in canonical batch order."""
    done: dict = {}
    for folder in folders:
        done |= artifacts.load_batches(folder)
    if sorted(done) != list(range(expected)):
        raise ArtifactError(
            f"shards {folders} hold batches {sorted(done)}, expected 0..{expected - 1}: "
            "a shard is missing or belongs to another configuration"
        )
    ordered = [done[i] for i in range(expected)]
    return torch.cat([b["images"] for b in ordered]), torch.cat([b["labels"] for b in ordered])


def save_grid(images: torch.Tensor, labels: torch.Tensor, ipc: int, max_ipc: int, path) -> None:
    """Rows = classes, columns = the first ``max_ipc`` images of each class."""
    order = torch.argsort(labels, stable=True)
    n_classes = int(labels.max()) + 1
    per_class = images[order].view(n_classes, ipc, *images.shape[1:])[:, :max_ipc]
    import torchvision.utils  # 1.5 s of imports: only here, not in every distill shard's start-up

    with atomic_path(path) as tmp:
        torchvision.utils.save_image(
            per_class.reshape(-1, *images.shape[1:]),
            tmp,
            format="png",
            nrow=min(ipc, max_ipc),
            padding=1,
            pad_value=1.0,
        )


def run(
    cfg,
    inputs: dict,
    outputs: dict,
    *,
    method: str,
    ipc: int,
    seed: int,
    device,
    tracker,
    shard: tuple[int, int] | None = None,
    merge_from: list[str] | None = None,
) -> dict:
    """inputs: ``data`` dir, ``pool`` dir (not for random); outputs: ``out`` dir.

    ``shard=(i, n)`` writes only that shard's batches (a workflow shard job, n = 1 included);
    ``merge_from`` assembles shard folders; neither synthesizes everything and writes the set.
    """
    out = Path(outputs["out"])
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_json(Path(inputs["data"]) / artifacts.DATA_MANIFEST)
    label = method  # a distill.variants name labels the results; its method runs
    cfg, method = config_mod.resolve_variant(cfg, method)
    metrics: dict = {"method": label, "algorithm": method, "ipc": ipc, "seed": seed}
    if not registry.get(method).optimises:  # random: picks real images
        images, labels = random_real(open_source(inputs["data"], cfg.prepare_data.workers), ipc, seed)
    else:
        n_batches = len(batches_of(cfg, manifest["num_classes"], ipc))
        if merge_from is None:
            metrics |= run_shard(cfg, inputs, out, method, ipc, seed, shard or (0, 1), device, tracker)
            if shard is not None:
                return metrics | {"shard": f"{shard[0]}/{shard[1]}"}
            merge_from = [out]
        else:
            check_parts(merge_from, label, ipc, seed)
            metrics |= merge_metrics(merge_from)
        images, labels = merge(merge_from, n_batches)
    artifacts.save_synthetic(images, labels, out / SYNTHETIC, method=label, ipc=ipc, seed=seed)
    save_grid(images, labels, ipc, cfg.distill.grid_max_ipc, out / GRID)
    tracker.log_artifact(out / GRID)  # the synthetic images, in the run that made them
    return metrics | {"num_images": len(images)}


def merge_metrics(folders: list[str]) -> dict:
    shards = [read_json(Path(f) / "metrics.json") for f in folders]
    finals = {k for s in shards for k in s if k.startswith("final_loss_")}
    busy = [s for s in shards if s.get("batches", 1)] or shards  # a shard without batches has no rate
    return {
        "shards": len(shards),
        "pool_dir": shards[0].get("inputs", {}).get("pool"),  # the merge job reads no pool: its shards' pool
        "pool_size": shards[0]["pool_size"],
        "pool_members": shards[0].get("pool_members", []),
        "objective": shards[0]["objective"],
        "shard_wall_s": sum(s["wall_s"] for s in shards),
        "health": sorted({h for s in shards for h in s.get("health", [])}),
        "iter_s": float(np.mean([s["iter_s"] for s in busy])),
        **{k: float(np.mean([s[k] for s in shards if k in s])) for k in finals},
    }
