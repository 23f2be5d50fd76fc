"""Stage pretrain_pool: the base model and the pool of weak models Teddy draws from.

One job per pool member group, so a cluster builds them in parallel:
  base          train the base model with the recipe in config (or load ``pretrain_pool.checkpoint``)
  prior_s<S>    seed S's training trajectory, kept at ``prior_epochs`` and/or the first epochs
                reaching ``prior_targets`` × the base model's val top-1 (stops after the last one)
  prior_<A>_s<S>  the same trajectory for each other architecture A of ``member_archs`` (a
                multi-architecture pool; prior members only)
  post_<III>    the base model pruned (torch-pruning, L1), fine-tuned, BN recalibrated on real data
  (assemble)    ``manifest.json``: every member's origin, epoch/prune ratio, params, FLOPs, val
                accuracy and checksum
Folders: ``pool/base/base.pt``, ``pool/prior_s0/e002.pt``, ``pool/post_003/member.pt``,
``pool/manifest.json``. Without ``--member`` one process runs every job into the same layout.
Long loops checkpoint every epoch and on SIGTERM/SIGUSR1 (preemption) and resume when rerun.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from teddy import augment, health, models
from teddy import config as config_mod
from teddy.data.datasets import DatasetError
from teddy.data.source import open_source
from teddy.io import artifacts
from teddy.io.files import read_json, write_json
from teddy.pool import naming
from teddy.pool.prune import prune, recalibrate_bn
from teddy.runtime.distributed import data_parallel, local_part, share_weight
from teddy.runtime.progress import Progress
from teddy.train import TrainState, accuracy_of, make_optimizer, to_unit, warmup_cosine
from teddy.workflow.params import pool_recipe

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
MEMBERS = artifacts.POOL_MEMBERS  # each job's entries (files relative to its folder)

STATE = "train_state.pt"  # resumable training state, removed when the job completes


def describe(model: torch.nn.Module, spec: models.InputSpec) -> dict:
    """Parameters, multiply-accumulates and FLOPs (2 × MACs) of one forward pass on one image."""
    import torch_pruning as tp

    example = torch.rand(1, spec.channels, spec.image_size, spec.image_size)
    device = next(model.parameters()).device
    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model.eval(), example.to(device))
    model.train(was_training)
    return {"params": int(params), "macs": int(macs), "flops": int(2 * macs)}


# -- training trajectories (base model and prior seeds), resumable ---------------------------------


def train_trajectory(
    cfg,
    source,
    spec,
    seed: int,
    device,
    tracker,
    on_epoch,
    state_path: Path | None = None,
    arch: str | None = None,
) -> torch.nn.Module:
    """Train the pretrain_pool recipe from seed ``seed`` (architecture ``arch``, default pretrain_pool.arch).

    ``on_epoch(epoch, model, extra) -> (stop, extra)`` runs after every epoch; ``extra`` (e.g. the
    members saved so far; None at first) is kept in the resumable state. With ``state_path`` the state is
    saved after every epoch and, mid-epoch, when preemption is requested (then :class:`Preempted`
    is raised); a rerun continues exactly where it stopped.
    """
    p = cfg.pretrain_pool
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    arch = arch or p.arch
    model = models.create_model(arch, spec, width=p.width).to(device)
    net = data_parallel(model)  # under torchrun each rank trains on its share of every batch
    n = source.count("train")
    steps_per_epoch = -(-n // p.batch_size)
    opt = make_optimizer(model, p.optimizer, p.lr, p.weight_decay)
    sched = warmup_cosine(opt, p.epochs * steps_per_epoch, p.warmup_epochs * steps_per_epoch)
    st = {"epoch": 1, "start": 0, "perm": None, "total": 0.0, "extra": None}
    state = TrainState(state_path, model, opt, sched, gen)
    st = state.load(device) or st
    if st["epoch"] > 1 or st["start"]:
        log.info("resuming seed %d's training from %s in epoch %d", seed, state_path, st["epoch"])

    def steps_done() -> int:  # optimiser steps taken so far (a resumed run's included)
        return (st["epoch"] - 1) * steps_per_epoch + -(-st["start"] // p.batch_size)

    progress = Progress(f"pretrain_pool {arch} seed {seed}", p.epochs * steps_per_epoch, done=steps_done())

    while st["epoch"] <= p.epochs:
        model.train()
        if st["perm"] is None:
            st["perm"] = torch.randperm(n, generator=gen)
        chunks = list(torch.split(st["perm"][st["start"] :], p.batch_size))
        mine = [c[local_part(torch.arange(len(c)))] for c in chunks]  # under torchrun: this rank's share
        for chunk, (xb, yb) in zip(chunks, source.read("train", mine), strict=True):
            state.preempt(st, f"in epoch {st['epoch']}")
            crops = augment.sample_crops(len(chunk), 0.5, p.flip, gen) if p.augment else None
            xb = to_unit(xb).to(device)
            if p.augment:
                xb = augment.apply_crops(xb, crops[local_part(torch.arange(len(chunk)))])
            loss = F.cross_entropy(net(xb), yb.to(device))
            opt.zero_grad(set_to_none=True)
            (loss * share_weight(len(yb), len(chunk))).backward()  # ranks' unequal shares average right
            opt.step()
            sched.step()
            st["total"] += loss.item() * len(yb)
            st["start"] += p.batch_size
            progress.update(steps_done())
        tracker.log_metrics({f"train_loss_s{seed}": st["total"] / n}, step=st["epoch"])
        stop, st["extra"] = on_epoch(st["epoch"], model, st["extra"])
        st |= {"epoch": st["epoch"] + 1, "start": 0, "perm": None, "total": 0.0}
        if stop:
            break
        state.save(st)
    state.done()
    return model


def train_base(cfg, source, spec, device, tracker, on_epoch=None) -> torch.nn.Module:
    """The base model, trained in memory (benchmarks, tests)."""
    return train_trajectory(
        cfg, source, spec, cfg.pretrain_pool.seed, device, tracker, on_epoch or (lambda e, m, x: (False, None))
    )


def val_accuracy(model, source, device) -> dict[str, float]:
    return accuracy_of(model, source.batches("val", batch_size=1024), device)


def save_member(
    model, path: Path, cfg, real, spec, device, arch: str | None = None, ckpt_extra: dict | None = None, **info
) -> dict:
    """Write one member (atomically, weights_only-loadable) and return its manifest entry."""
    p = cfg.pretrain_pool
    arch = arch or p.arch
    acc = val_accuracy(model, real, device)
    keep = {k: info[k] for k in ("origin", "epoch", "seed", "prune_ratio") if info.get(k) is not None}
    ckpt = models.checkpoint(
        model, arch, spec, p.width, pruned=info["origin"] == "post", **keep, **(ckpt_extra or {})
    )
    digest = artifacts.save(ckpt, path)
    entry = {"file": path.name, "arch": arch, **info, "val_top1": acc["top1"], "val_top5": acc["top5"]}
    return entry | describe(model, spec) | {"sha256": digest}


def load_base_checkpoint(path: str, arch: str, spec, width: int, device) -> torch.nn.Module:
    """A base model from a local file: a teddy checkpoint, or a plain state dict of the same
    architecture (e.g. torchvision weights already on disk, with or without a ``state_dict`` key)."""
    where = "config key pretrain_pool.checkpoint"
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{where}: {path} is not a file; point it to a local checkpoint (nothing is downloaded)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "arch" in obj and "state_dict" in obj:
        if obj["arch"] != arch:
            raise ValueError(
                f"{where}: {path} holds a {obj['arch']!r} model but pretrain_pool.arch is {arch!r}"
            )
        return models.from_checkpoint(obj, device)
    state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{where}: {path} is neither a teddy checkpoint nor a state dict")
    model = models.create_model(arch, spec, width=width)
    if "0.mean" not in state:  # a bare network (ours wraps it after the Normalize module)
        state = {f"1.{k}": v for k, v in state.items()} | {
            f"0.{k}": v for k, v in model[0].state_dict().items()
        }
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{where}: {path} does not fit {arch} for {spec.channels}×{spec.image_size}² inputs and "
            f"{spec.num_classes} classes (set pretrain_pool.arch/width to the checkpoint's): {str(err)[:400]}"
        ) from None
    return model.to(device)


# -- the jobs ---------------------------------------------------------------------------------------


def build_base(cfg, source, spec, out: Path, device, tracker) -> list[dict]:
    p = cfg.pretrain_pool
    if p.checkpoint:
        model = load_base_checkpoint(p.checkpoint, p.arch, spec, p.width, device)
        info = {"origin": "base", "source": str(p.checkpoint)}
    else:
        no_members = lambda epoch, model, extra: (False, None)  # noqa: E731
        model = train_trajectory(cfg, source, spec, p.seed, device, tracker, no_members, out / STATE)
        info = {"origin": "base", "seed": p.seed, "epoch": p.epochs}
    entry = save_member(model, out / "base.pt", cfg, source, spec, device, **info)
    return [check_base(entry, out / "base.pt", spec.num_classes, source.count("val"))]


def check_base(entry: dict, path: Path, num_classes: int, val_images: int) -> dict:
    """A base model below chance on val contradicts its own training labels: the val labels disagree
    with the training ones (shifted, permuted, another dataset's), so nothing built on it means
    anything: stop, removing what was written. One at chance is kept, its ``health`` saying so."""
    top1, chance = entry["val_top1"], health.chance_top1(num_classes)
    if health.below_chance(top1, num_classes, val_images):
        for file in (path, artifacts.checksum_path(path)):
            file.unlink(missing_ok=True)
        raise DatasetError(
            f"{path}: the base model scores {top1:.2f} % on val, below chance ({chance:.2f} %): the val "
            "labels disagree with the training labels it learnt (shifted or permuted after preparation, "
            "or another dataset's); prepare the data again (prepare_data)"
        )
    problems = health.accuracy_problems(top1, num_classes, val_images, "base model val top-1")
    for problem in problems:
        log.warning("pretrain_pool base: %s: every later stage learns from this teacher", problem)
    return entry | {"health": problems}


def build_prior(
    cfg, source, spec, seed: int, out: Path, device, tracker, base_top1: float | None, arch: str | None = None
) -> list[dict]:
    """Seed ``seed``'s trajectory of ``arch`` (default pretrain_pool.arch), kept at prior_epochs and
    at the first epoch reaching each of prior_targets × ``base_top1``; training stops after the last
    member is saved."""
    p = cfg.pretrain_pool
    arch = arch or p.arch
    tag = f"prior_s{seed}" if arch == p.arch else f"prior_{naming.arch_slug(arch)}_s{seed}"
    targets = sorted(p.prior_targets)
    if targets and base_top1 is None:
        raise ValueError("pretrain_pool.prior_targets need the base model's accuracy: pass --base (its folder)")
    last_epoch = max(p.prior_epochs, default=0)

    def on_epoch(epoch, model, extra):
        extra = extra or {"members": [], "met": []}
        pending = [t for t in targets if t not in extra["met"]]
        reasons = {"epoch": epoch in p.prior_epochs}
        if pending:
            top1 = val_accuracy(model, source, device)["top1"]
            met = [t for t in pending if top1 >= t * base_top1]
            extra["met"] += met
            reasons["targets"] = met
        if reasons["epoch"] or reasons.get("targets"):
            info = {"origin": "prior", "seed": seed, "epoch": epoch, "targets": reasons.get("targets", [])}
            entry = save_member(model, out / f"e{epoch:03d}.pt", cfg, source, spec, device, arch, **info)
            tracker.log_metrics({f"val_top1_{tag}": entry["val_top1"]}, step=epoch)
            extra["members"].append(entry)
        stop = epoch >= last_epoch and len(extra["met"]) == len(targets)
        return stop, extra

    entries: list[dict] = []

    def collect(epoch, model, extra):
        stop, extra = on_epoch(epoch, model, extra)
        entries[:] = extra["members"]
        return stop, extra

    train_trajectory(cfg, source, spec, seed, device, tracker, collect, out / STATE, arch)
    unmet = [t for t in targets if not any(t in e["targets"] for e in entries)]
    if unmet:
        tracker.set_tags({f"{tag}_unmet_targets": unmet})
    return entries


def build_post(cfg, source, spec, index: int, base_path: Path, out: Path, device) -> list[dict]:
    base = models.from_checkpoint(artifacts.load_member(base_path), device)
    member, ratio, recalib = post_member(base, index, cfg, source, spec, device)
    info = {"origin": "post", "index": index, "prune_ratio": ratio}
    extra = {"recalib_idx": recalib}  # in the checkpoint: which real images its BN statistics are
    return [save_member(member, out / "member.pt", cfg, source, spec, device, ckpt_extra=extra, **info)]


def assemble(job_dirs: list[Path], out: Path, arch: str, tracker) -> dict:
    """manifest.json from the jobs' members.json (files made relative to ``out``), checksums checked."""
    base, members = None, []
    for job in job_dirs:
        listed = read_json(job / MEMBERS)
        for entry in listed:
            path = job / entry["file"]
            artifacts.read_verified(path, entry["sha256"], str(job / MEMBERS))
            entry = entry | {
                "file": Path(path).resolve().relative_to(out.resolve()).as_posix(),
                "job": job.name,
            }
            if entry["origin"] == "base":
                base = entry
            else:
                members.append(entry)
    if base is None:
        raise ValueError(f"no base model among {[str(j) for j in job_dirs]}: include the base job's folder")
    members.sort(
        key=lambda e: (
            e["origin"] != "prior",
            e.get("arch", arch) != arch,  # the base architecture's members first, then the others by name
            e.get("arch", arch),
            e.get("seed") or 0,
            e.get("epoch") or 0,
            e.get("index") or 0,
        )
    )
    manifest = {"arch": arch, "jobs": [job.name for job in job_dirs], "base": base, "members": members}
    write_json(manifest, out / MANIFEST)
    tracker.log_artifact(out / MANIFEST)
    metrics = {"base_val_top1": base["val_top1"], "base_flops": base["flops"], "pool_members": len(members)}
    metrics["health"] = base.get("health", [])  # a base model at chance: every later number learns from it

    # the member jobs' own runtimes (Snakemake: one job each), counted into the stage's runtime like
    # distill's shards; an all-in-one build has no per-job metrics and its wall_s covers everything
    job_metrics = [job / "metrics.json" for job in job_dirs if (job / "metrics.json").is_file()]
    if job_metrics:
        metrics["shard_wall_s"] = sum(read_json(m)["wall_s"] for m in job_metrics)
    for m in members:
        name = Path(m["file"]).parent.name + ("" if m["origin"] == "post" else f"_e{m['epoch']:03d}")
        metrics |= {
            f"{name}_val_top1": m["val_top1"],
            f"{name}_params": m["params"],
            f"{name}_flops": m["flops"],
        }
    return metrics


def run(cfg, inputs: dict, outputs: dict, *, device, tracker, member=None, assemble_from=None) -> dict:
    """Without ``member``/``assemble_from``: every job in turn into ``out``/<job>/, then the manifest.
    ``member`` ('base', 'prior:S', 'post:I'): that job only, into ``out`` (post and target-based
    priors read ``inputs['base']``). ``assemble_from``: job folders → ``out``/manifest.json."""
    out, p = Path(outputs["out"]), cfg.pretrain_pool
    out.mkdir(parents=True, exist_ok=True)
    if assemble_from:
        return assemble([Path(d) for d in assemble_from], out, p.arch, tracker)
    data_dir = Path(inputs["data"])
    source = open_source(data_dir, cfg.prepare_data.workers)
    spec = models.InputSpec.from_manifest(read_json(data_dir / artifacts.DATA_MANIFEST))
    todo = [member] if member else naming.pool_job_names(p)
    data = config_mod.to_dict(cfg)
    dirs = []
    for job in todo:
        kind, index, arch = naming.parse_member(cfg.pretrain_pool, job)
        job_dir = out if member else out / job
        job_dir.mkdir(parents=True, exist_ok=True)
        base_dir = Path(inputs["base"]) if member and inputs.get("base") else out / "base"
        if kind == "base":
            entries = build_base(cfg, source, spec, job_dir, device, tracker)
        elif kind == "prior":
            base_top1 = read_json(base_dir / MEMBERS)[0]["val_top1"] if p.prior_targets else None
            entries = build_prior(cfg, source, spec, index, job_dir, device, tracker, base_top1, arch)
        else:
            entries = build_post(cfg, source, spec, index, base_dir / "base.pt", job_dir, device)
        recipe = {"config": pool_recipe(data, kind), "data": artifacts.data_digest(data_dir)}
        entries = [e | {"recipe": recipe} for e in entries]  # what every reader checks its config against
        write_json(entries, job_dir / MEMBERS)
        dirs.append(job_dir)
    if member:
        tracker.set_tags({"member": member})
        return {
            f"{e['origin']}_{e.get('epoch') or e.get('index') or 0}_val_top1": e["val_top1"] for e in entries
        } | {"members": len(entries)}
    return assemble(dirs, out, p.arch, tracker)


# -- post generation: pruned, briefly fine-tuned, BN-recalibrated copies of the base model ----------


def finetune(model, source, epochs: int, lr: float, batch: int, gen, device) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(source.count("train"), generator=gen)
        for xb, yb in source.batches("train", perm, batch):
            loss = F.cross_entropy(model(to_unit(xb).to(device)), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def post_member(
    base: torch.nn.Module, index: int, cfg, source, spec, device
) -> tuple[torch.nn.Module, float, torch.Tensor]:
    """Post member ``index``: prune at a ratio drawn from pretrain_pool.prune_ratio, fine-tune,
    recalibrate → (model, ratio, training-set indices of the recalibration images)."""
    p = cfg.pretrain_pool
    gen = torch.Generator().manual_seed(p.seed * 7919 + index)
    lo, hi = p.prune_ratio
    ratio = lo + (hi - lo) * float(torch.rand(1, generator=gen))
    model = prune(copy.deepcopy(base).cpu(), ratio, spec).to(device)
    finetune(model, source, p.finetune_epochs, p.finetune_lr, p.batch_size, gen, device)
    idx = torch.randperm(source.count("train"), generator=gen)[: p.recalib_images]
    recalibrate_bn(model, source.images("train", idx), p.batch_size, device)
    return model.eval(), ratio, idx
