"""Stage pretrain_pool: train the base model; keep early checkpoints as the prior pool."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from teddy import augment, models, prepare_data
from teddy.train import accuracy, make_optimizer, to_unit, warmup_cosine
from teddy.utils import load_torch, read_json, save_torch, sha256, write_json

BASE = "base.pt"
MANIFEST = "manifest.json"


def member_file(epoch: int) -> str:
    return f"prior_e{epoch:03d}.pt"


def train_base(cfg, data: dict, spec: models.InputSpec, device, tracker, on_epoch) -> torch.nn.Module:
    """Train cfg.pretrain_pool's recipe on the cached train split; ``on_epoch(epoch, model)``."""
    p = cfg.pretrain_pool
    gen = torch.Generator().manual_seed(cfg.run.seeds[0])
    torch.manual_seed(cfg.run.seeds[0])
    model = models.create_model(p.arch, spec, width=p.width).to(device)
    x, y = data["train_x"], data["train_y"]
    steps_per_epoch = -(-len(x) // p.batch_size)
    opt = make_optimizer(model, p.optimizer, p.lr, p.weight_decay)
    sched = warmup_cosine(opt, p.epochs * steps_per_epoch, p.warmup_epochs * steps_per_epoch)
    for epoch in range(1, p.epochs + 1):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), p.batch_size):
            idx = perm[start : start + p.batch_size]
            xb = to_unit(x[idx]).to(device)
            if p.augment:
                xb = augment.apply_crops(xb, augment.sample_crops(len(idx), 0.5, p.flip, gen))
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        tracker.log_metrics({"train_loss": total / len(x)}, step=epoch)
        on_epoch(epoch, model)
    return model


def run(cfg, inputs: dict, outputs: dict, *, device, tracker) -> dict:
    """inputs: ``data`` dir; outputs: ``out`` dir (base.pt, prior_eXXX.pt, manifest.json)."""
    data_dir, out = Path(inputs["data"]), Path(outputs["out"])
    manifest = read_json(data_dir / prepare_data.MANIFEST)
    data = prepare_data.load(data_dir / prepare_data.CACHE, data_dir / prepare_data.MANIFEST)
    spec = models.InputSpec.from_manifest(manifest)
    p = cfg.pretrain_pool
    members = []

    def evaluate_and_save(name: str, model, epoch: int, origin: str, pruned: bool = False) -> dict:
        acc = accuracy(model, data["val_x"], data["val_y"], 1024, device)
        path = out / name
        save_torch(
            models.checkpoint(model, p.arch, spec, p.width, epoch=epoch, origin=origin, pruned=pruned), path
        )
        tracker.log_metrics({f"val_top1_{origin}": acc["top1"]}, step=epoch)
        return {
            "file": name,
            "origin": origin,
            "epoch": epoch,
            "val_top1": acc["top1"],
            "params": models.count_params(model),
            "sha256": sha256(path),
        }

    def on_epoch(epoch, model):
        if epoch in p.prior_epochs:
            members.append(evaluate_and_save(member_file(epoch), model, epoch, "prior"))

    model = train_base(cfg, data, spec, device, tracker, on_epoch)
    base = evaluate_and_save(BASE, model, p.epochs, "base")
    for i in range(p.post_members):
        member, ratio = post_member(model, i, cfg, data, spec, device)
        entry = evaluate_and_save(f"post_{i:03d}.pt", member, p.epochs, "post", pruned=True)
        members.append(entry | {"prune_ratio": ratio})
    write_json({"arch": p.arch, "base": base, "members": members}, out / MANIFEST)
    metrics = {"base_val_top1": base["val_top1"]}
    metrics |= {f"{Path(m['file']).stem}_val_top1": m["val_top1"] for m in members}
    return metrics


def load_pool(pool_dir: str | Path, which: str, device, size: int | None = None) -> tuple[list, list[dict]]:
    """``which``: 'base' → [base model]; 'prior' / 'post' / 'both' → those members, at most ``size``
    (taken alternately from prior and post for 'both'). Checksums are verified.

    Returns the models (eval mode, frozen, channels_last on CUDA) and their manifest entries.
    """
    pool_dir = Path(pool_dir)
    manifest = read_json(pool_dir / MANIFEST)
    if which == "base":
        entries = [manifest["base"]]
    else:
        by_origin = {o: [m for m in manifest["members"] if m["origin"] == o] for o in ("prior", "post")}
        if which == "both":
            pairs = zip(by_origin["prior"], by_origin["post"], strict=False)
            entries = [m for pair in pairs for m in pair]
            entries += [m for m in by_origin["prior"] + by_origin["post"] if m not in entries]
        else:
            entries = by_origin[which]
        entries = entries[:size] if size else entries
    if not entries:
        raise RuntimeError(
            f"{pool_dir / MANIFEST} lists no {which} members: set pretrain_pool.prior_epochs "
            "or pretrain_pool.post_members"
        )
    pool = []
    for entry in entries:
        path = pool_dir / entry["file"]
        if sha256(path) != entry["sha256"]:
            raise RuntimeError(f"{path} does not match its checksum in the pool manifest; rerun pretrain-pool")
        model = models.from_checkpoint(load_torch(path), device).eval()
        if torch.device(device).type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        for param in model.parameters():
            param.requires_grad_(False)
        pool.append(model)
    return pool, entries


def pool_sampler(mode: str, entries: list[dict]):
    """``draw(iteration, generator) -> member index``: uniform, round_robin or accuracy-weighted."""
    n = len(entries)
    if mode == "uniform":
        return lambda it, gen: int(torch.randint(n, (1,), generator=gen))
    if mode == "round_robin":
        return lambda it, gen: it % n
    if mode == "accuracy":
        weights = torch.tensor([e["val_top1"] for e in entries], dtype=torch.float)
        return lambda it, gen: int(torch.multinomial(weights, 1, generator=gen))
    raise ValueError(f"config key distill.pool_sampling: unknown mode {mode!r}")


# -- post generation: pruned, briefly fine-tuned, BN-recalibrated copies of the base model ----------


def prune(model: torch.nn.Module, ratio: float, spec: models.InputSpec) -> torch.nn.Module:
    """Structured channel pruning (L1 magnitude importance, torch-pruning), classifier kept whole."""
    import torch_pruning as tp

    example = torch.rand(2, spec.channels, spec.image_size, spec.image_size)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    pruner.step()
    return model


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, images: torch.Tensor, batch: int, device) -> None:
    """Set every BN layer's running mean/variance to the exact statistics of its input on ``images``
    with the model in eval mode, layer by layer (earlier layers already recalibrated): the
    statistics BN matching compares synthetic features against, cached from real data."""
    model.eval()
    for layer in models.bn_layers(model):
        total = sq = count = 0

        def hook(module, inputs, output):
            nonlocal total, sq, count
            h = inputs[0].double()
            total = total + h.sum(dim=(0, 2, 3))
            sq = sq + (h * h).sum(dim=(0, 2, 3))
            count += h.numel() // h.shape[1]

        handle = layer.register_forward_hook(hook)
        for start in range(0, len(images), batch):
            model(to_unit(images[start : start + batch]).to(device))
        handle.remove()
        mean = total / count
        var = (sq / count - mean * mean) * count / max(1, count - 1)  # unbiased, as BatchNorm stores it
        layer.running_mean.copy_(mean.float())
        layer.running_var.copy_(var.float())


def finetune(model, data: dict, epochs: int, lr: float, batch: int, gen, device) -> None:
    x, y = data["train_x"], data["train_y"]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            idx = perm[start : start + batch]
            loss = F.cross_entropy(model(to_unit(x[idx]).to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def post_member(
    base: torch.nn.Module, index: int, cfg, data: dict, spec, device
) -> tuple[torch.nn.Module, float]:
    """Post member ``index``: prune at a ratio drawn from pretrain_pool.prune_ratio, fine-tune, recalibrate."""
    import copy

    p = cfg.pretrain_pool
    gen = torch.Generator().manual_seed(cfg.run.seeds[0] * 7919 + index)
    lo, hi = p.prune_ratio
    ratio = lo + (hi - lo) * float(torch.rand(1, generator=gen))
    model = prune(copy.deepcopy(base).cpu(), ratio, spec).to(device)
    finetune(model, data, p.finetune_epochs, p.finetune_lr, p.batch_size, gen, device)
    idx = torch.randperm(len(data["train_x"]), generator=gen)[: p.recalib_images]
    recalibrate_bn(model, data["train_x"][idx], p.batch_size, device)
    return model.eval(), ratio
