"""``teddy estimate --config ...``: GPU-hours, GPU memory and disk per stage, before submitting.

Work is counted from the config — images × epochs (or iterations) × the FLOPs of one image through
the stage's architecture — and turned into GPU-hours at an effective training throughput
(``--tflops``; or ``--measure``: time one forward+backward of every architecture here, on this
device, and use that). FLOPs, parameters and activation sizes come from the models themselves, run
on PyTorch's meta device (nothing is computed or allocated). Dataset sizes come from the dataset's
files when the root is readable, else from the published sizes of the paper datasets.

The figures are estimates for planning and SLURM limits (factor ~2), not measurements: data
loading, evaluation passes and per-job start-up are outside the FLOP count (a fixed per-job minute
is added for start-up).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from teddy import config as config_mod
from teddy import models, protocol
from teddy.data import datasets
from teddy.method import registry as method_registry

# published sizes (train, val, classes) for planning before the files are mounted
KNOWN_SIZES = {
    "imagenet": (1_281_167, 50_000, 1000),
    "tiny_imagenet": (100_000, 10_000, 200),
    "cifar10": (50_000, 10_000, 10),
    "cifar100": (50_000, 10_000, 100),
    "fashion_mnist": (60_000, 10_000, 10),
    "digits": (1_437, 360, 10),
}
# effective training throughput of one A100 with bf16 AMP: about half of NVIDIA's tuned ResNet-50 rate
# (≈ 2,700 img/s × 24.5 GFLOPs ≈ 66 TFLOP/s), for an untuned loop; --measure replaces it
DEFAULT_TFLOPS = 30.0
JOB_START_H = 1 / 60  # one minute per job for start-up, loading, writing
DECODE_PER_CORE_S = 300  # ImageNet-sized JPEGs decoded and resized per second on one core


def runtimes_min(data) -> dict[str, int]:
    """SLURM time limits (minutes) for runtimes set to 0: twice the largest job's estimate + 10."""

    cfg = config_mod.freeze(data)
    rows, _ = estimate(cfg, cfg.resources.gpu_tflops)
    return {r.stage: math.ceil(2 * r.job_h * 60 + 10) for r in rows}


@dataclass(frozen=True)
class Cost:
    """FLOPs of one forward pass of one image, parameters, activation elements per image."""

    flops: float
    params: int
    activations: int


@dataclass
class Row:
    stage: str
    jobs: int = 0
    flops: float = 0.0  # training-equivalent FLOPs of all its jobs
    gpu_mem_gb: float = 0.0  # the largest job
    disk_gb: float = 0.0
    job_flops: dict[str, float] = field(default_factory=dict)  # arch → FLOPs of the largest job
    gpu_h: float = 0.0  # all its jobs, start-up included
    job_h: float = 0.0  # the largest job's hours (GPU; prepare_data: CPU on its cores)
    notes: list[str] = field(default_factory=list)


@functools.cache  # the same model's count is asked once per stage and config the estimate prices
def arch_cost(arch: str, spec: models.InputSpec, width: int) -> Cost:
    """FLOPs/params/activations of one image on the meta device (no compute, no memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    # eval: one image through a model whose last maps are 1×1 (ResNet on 8-px digits) is no batch for
    # batch norm's training statistics; the count of FLOPs is the same
    model = models.create_model(arch, spec, width=width).to("meta").eval()  # builders compute on tensors
    x = torch.empty(1, spec.channels, spec.image_size, spec.image_size, device="meta")
    acts = [0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor) and not list(module.children()):
            acts[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return Cost(float(counter.get_total_flops()), sum(p.numel() for p in model.parameters()), acts[0])


def measure_tflops(arch: str, spec: models.InputSpec, width: int, device, batch: int = 32) -> float:
    """Effective TFLOP/s of training ``arch`` here: timed forward+backward passes."""
    import time

    model = models.create_model(arch, spec, width=width).to(device)
    x = torch.rand(batch, spec.channels, spec.image_size, spec.image_size, device=device)
    y = torch.randint(spec.num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 3
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / n
    return 3 * arch_cost(arch, spec, width).flops * batch / seconds / 1e12


def dataset_sizes(cfg) -> tuple[int, int, int, str]:

    name, prep = cfg.run.dataset, config_mod.to_dict(cfg.prepare_data)
    spec = datasets.get(name)
    if spec.files and prep.get("root"):
        try:
            listing = spec.listing(prep)
            if listing.val is not None:
                n_val, n_train = len(listing.val), len(listing.train)
            else:  # prepare_data's stratified split
                n_val = sum(datasets.val_count(c, prep["val_fraction"]) for c in listing.per_class() if c)
                n_train = len(listing.train) - n_val
            return n_train, n_val, len(listing.class_ids), f"files under {prep['root']}"
        except datasets.DatasetError:
            pass
    if name in KNOWN_SIZES:
        train, val, classes = KNOWN_SIZES[name]
        cap = prep.get("max_train_per_class")
        return min(train, cap * classes) if cap else train, val, classes, "published size"
    raise SystemExit(f"teddy estimate: {name}: set prepare_data.root to a readable copy to count its images")


def gpu_mem_gb(cost: Cost, batch: int, bytes_per_act: int, optimizer_bytes: int = 16) -> float:
    """Weights + gradients + optimizer state, plus the activations a backward pass keeps (×2)."""
    return (cost.params * optimizer_bytes + 2 * batch * cost.activations * bytes_per_act) / 1e9


def estimate(cfg, tflops: float | None = None, device=None) -> tuple[list[Row], dict]:

    n_train, n_val, classes, source = dataset_sizes(cfg)
    p, d, r, e = cfg.pretrain_pool, cfg.distill, cfg.relabel, cfg.evaluate

    data = datasets.get(cfg.run.dataset)
    channels = cfg.prepare_data.channels if data.files else data.channels
    size = cfg.prepare_data.image_size or data.native_size
    if size is None:
        raise SystemExit("teddy estimate: set prepare_data.image_size (the side length every stage sees)")
    spec = models.InputSpec(classes, channels, size, (0.5,) * channels, (0.25,) * channels)
    act_bytes = 2 if cfg.run.dtype == "bfloat16" else 4
    archs = {
        a: arch_cost(a, spec, e.width if a.startswith("convnet") else p.width)
        for a in {p.arch, *p.member_archs, *e.archs}
    }
    measured = {}
    if device is not None:
        measured = {
            a: measure_tflops(a, spec, e.width if a.startswith("convnet") else p.width, device) for a in archs
        }
    speed = {a: (measured.get(a) or tflops or DEFAULT_TFLOPS) * 1e12 for a in archs}
    base = archs[p.arch]
    image_bytes = channels * size * size

    def hours(flops_by_arch: dict[str, float]) -> float:
        return sum(f / speed[a] for a, f in flops_by_arch.items()) / 3600

    rows: list[Row] = []
    # prepare_data: CPU decoding (no GPU); disk: the cache when stored
    prep = Row("prepare_data", jobs=1)
    storage = cfg.prepare_data.storage
    total_bytes = (n_train + n_val) * image_bytes
    if storage == "auto":
        storage = "cache" if total_bytes <= cfg.prepare_data.cache_max_gb * 1e9 else "files"
    prep.disk_gb = (total_bytes if storage == "cache" else 0) / 1e9 + (n_train + n_val) * 80 / 1e9
    core_h = (n_train + n_val) / DECODE_PER_CORE_S / 3600
    prep.job_h = core_h / max(1, cfg.resources.prepare_data.cpus)
    prep.notes.append(f"storage {storage}; CPU decoding ≈ {core_h:.1f} core-hours")
    rows.append(prep)

    pool = Row("pretrain_pool")
    train_fb = 3 * base.flops * n_train  # one epoch, forward + backward
    base_job = 0.0 if p.checkpoint else p.epochs * train_fb
    pool.jobs += 0 if p.checkpoint else 1
    prior_epochs = max([*p.prior_epochs, 0]) if not p.prior_targets else p.epochs
    prior_job = prior_epochs * train_fb
    pool.jobs += len(p.prior_seeds) + p.post_members + 1
    keep = 1 - sum(p.prune_ratio) / 2
    post_job = p.finetune_epochs * train_fb * keep**2
    pool.flops = base_job + len(p.prior_seeds) * prior_job + p.post_members * post_job
    pool.job_flops = {
        p.arch: max(base_job, prior_job if p.prior_seeds else 0.0, post_job if p.post_members else 0.0)
    }
    for arch in p.member_archs:  # each other architecture's own prior trajectories
        other_job = prior_epochs * 3 * archs[arch].flops * n_train
        pool.jobs += len(p.prior_seeds)
        pool.flops += len(p.prior_seeds) * other_job
        pool.job_flops[arch] = max(pool.job_flops.get(arch, 0.0), other_job)
    pool.gpu_mem_gb = gpu_mem_gb(base, p.batch_size, act_bytes)
    members = len(p.prior_epochs) * len(p.prior_seeds) + len(p.prior_targets) + p.post_members + 1
    others = sum(len(p.prior_epochs) * len(p.prior_seeds) * archs[a].params for a in p.member_archs)
    pool.disk_gb = (members * base.params + others) * 4 / 1e9
    rows.append(pool)

    methods = [protocol.algorithm(cfg, m) for m in d.methods]
    optimised = [m for m in methods if method_registry.get(m).optimises]
    sets = [(m, ipc) for m in methods for ipc in d.ipcs for _ in cfg.run.seeds]
    dist = Row("distill")
    per_batch = (d.classes_per_batch or classes) * d.slots_per_batch
    for method, ipc in sets:
        spec = method_registry.get(method)
        if not spec.optimises:
            dist.jobs += 1
            continue
        dist.jobs += d.shards + 1
        images = ipc * classes
        real_batches = spec.objective_name(cfg) in method_registry.REAL_BATCH_OBJECTIVES
        factor = 2 if real_batches else 1  # + the real-batch passes
        set_flops = factor * 3 * base.flops * images * d.iterations
        dist.flops += set_flops
        dist.job_flops[p.arch] = max(dist.job_flops.get(p.arch, 0.0), set_flops / d.shards)
    dist.gpu_mem_gb = gpu_mem_gb(base, per_batch, act_bytes, optimizer_bytes=4) if optimised else 0.0
    dist.disk_gb = sum(ipc * classes * image_bytes * 4 for _, ipc in sets) / 1e9
    rows.append(dist)

    # the full-data row: random real images at the whole training set, relabelled and evaluated per seed
    full_ipc = n_train // classes if e.full_data else None
    full_sets = [("random", full_ipc)] * len(cfg.run.seeds) if full_ipc and full_ipc not in d.ipcs else []
    full_epochs = e.full_data_epochs or e.epochs

    def epochs_of(ipc: int) -> int:
        return full_epochs if full_sets and ipc == full_ipc else e.epochs

    labelled = [*sets, *full_sets]
    rel = Row("relabel", jobs=len(labelled))
    teachers = 1 if r.teacher == "base" else len(p.prior_epochs) * len(p.prior_seeds) + p.post_members
    view_bytes = 32  # crop + mix parameters, float32
    logit_bytes = 2 * classes if r.topk is None else 4 * min(r.topk, classes)
    if r.mode == "precomputed":
        rel.flops = sum(teachers * base.flops * epochs_of(ipc) * ipc * classes for _, ipc in labelled)
        rel.job_flops = {p.arch: max(teachers * base.flops * epochs_of(i) * i * classes for _, i in labelled)}
    rel.disk_gb = sum(epochs_of(ipc) * ipc * classes for _, ipc in labelled) * (view_bytes + logit_bytes) / 1e9
    rel.gpu_mem_gb = gpu_mem_gb(base, e.eval_batch_size, act_bytes, optimizer_bytes=4) / 2
    rel.notes.append(
        f"{view_bytes + logit_bytes} B per image-epoch ({f'top-{r.topk}' if r.topk else 'all logits'})"
    )
    rows.append(rel)

    ev = Row("evaluate")
    by_arch: dict[str, float] = {}
    for _, ipc in labelled:
        for arch in (e.full_data_archs or e.archs) if full_sets and ipc == full_ipc else e.archs:
            ev.jobs += 1
            cost = archs[arch]
            students = 2 if arch in e.hard_label_archs else 1  # + the hard-label student, same views
            epochs = epochs_of(ipc)
            train = students * 3 * cost.flops * ipc * classes * epochs
            val = students * cost.flops * n_val * (min(epochs, 10) + 1)
            online = base.flops * ipc * classes * epochs if r.mode == "online" else 0.0
            by_arch[arch] = by_arch.get(arch, 0.0) + train + val + online
            if (train + val + online) / speed[arch] > sum(f / speed[a] for a, f in ev.job_flops.items()):
                ev.job_flops = {arch: train + val + online}
    ev.flops = sum(by_arch.values())
    ev.gpu_mem_gb = max(gpu_mem_gb(archs[a], e.batch_size, act_bytes) for a in e.archs)
    state_gb = max(archs[a].params for a in e.archs) * 16 / 1e9  # model + optimizer moments + grads
    ev.disk_gb = ev.jobs * state_gb  # the worst case: every job running or interrupted at once
    ev.notes.append(f"resumable state ≤ {state_gb:.2f} GB per running job, removed when it completes")
    rows.append(ev)
    rows.append(Row("report", jobs=1))

    gpu_hours = {
        "pretrain_pool": hours({p.arch: pool.flops}),
        "distill": hours({p.arch: dist.flops}),
        "relabel": hours({p.arch: rel.flops}),
        "evaluate": hours(by_arch),
    }
    for row in rows:
        row.gpu_h = gpu_hours.get(row.stage, 0.0) + row.jobs * JOB_START_H
        if row.job_flops:
            row.job_h = hours(row.job_flops) + JOB_START_H
    info = {
        "dataset": f"{cfg.run.dataset}: {n_train:,} train / {n_val:,} val images, {classes} classes "
        f"at {size} px ({source})",
        "throughput": (
            "measured here: " + ", ".join(f"{a} {v:.2f} TFLOP/s" for a, v in measured.items())
            if measured
            else f"{tflops or DEFAULT_TFLOPS:g} effective TFLOP/s per GPU (--tflops; --measure times a device)"
        ),
        "archs": {
            a: f"{c.flops / 1e9:.2f} GFLOPs/img, {c.params / 1e6:.1f} M params" for a, c in archs.items()
        },
    }
    return rows, info


def table(rows: list[Row], info: dict) -> str:
    lines = [
        info["dataset"],
        f"throughput: {info['throughput']}",
        "architectures (forward, one image): "
        + "; ".join(f"{a} {v}" for a, v in sorted(info["archs"].items())),
        "",
        "| stage | jobs | GPU-hours | largest job (h) | GPU memory / job (GB, rough) | disk (GB) | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    total_h = total_disk = 0.0
    for row in rows:
        h = row.gpu_h
        total_h += h
        total_disk += row.disk_gb
        mem = f"{row.gpu_mem_gb:.1f}" if row.gpu_mem_gb else "–"
        lines.append(
            f"| {row.stage} | {row.jobs} | {h:,.1f} | {row.job_h:,.2f} | {mem} | {row.disk_gb:,.2f} "
            f"| {'; '.join(row.notes)} |"
        )
    jobs = sum(r.jobs for r in rows)
    peak = max(r.gpu_mem_gb for r in rows)
    lines.append(f"| **total** | {jobs} | **{total_h:,.1f}** | | {peak:.1f} | {total_disk:,.2f} | |")
    return "\n".join(lines)


def main(args) -> int:
    import sys

    try:
        cfg = config_mod.load(args.config, args.overrides, check_data=False)
    except config_mod.ConfigError as err:
        print(f"teddy estimate: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device) if args.measure else None
    rows, info = estimate(cfg, cfg.resources.gpu_tflops if args.tflops is None else args.tflops, device)
    print(table(rows, info))
    return 0 if all(math.isfinite(r.gpu_h) for r in rows) else 1
