"""The pool of weak models as later stages use it: load (verified), choose, sample, and the teacher.

pretrain_pool writes the pool; distill draws its members, relabel and evaluate (online) ask its
teacher. They read it only through here, so no stage module imports another.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from teddy import config as config_mod
from teddy import models
from teddy.augment import render
from teddy.io import artifacts
from teddy.io.artifacts import POOL_MANIFEST as MANIFEST
from teddy.io.artifacts import POOL_MEMBERS as MEMBERS
from teddy.io.files import ArtifactError, read_json
from teddy.pool import naming
from teddy.train import accuracy_of
from teddy.workflow.params import pool_recipe


def load_pool(
    pool_dir: str | Path,
    which: str,
    device,
    size: int | None = None,
    archs=None,
    built_for=None,
    data_dir: str | Path | None = None,
) -> tuple[list, list[dict]]:
    """``which``: 'base' → [base model]; 'prior' / 'post' / 'both' → those members, at most ``size``
    spread evenly over the manifest's order (prior: by architecture, seed, then epoch); 'both' takes
    half from each and alternates them; ``archs`` keeps only members of those architectures (None:
    all). Checksums are verified; with ``built_for`` (the reader's config) the manifest must list
    every job's own members, members are drawn only from a pool assembled from the jobs the config
    asks for (``check_jobs``), and each member loaded must have been built by the recipe the config
    gives and, with ``data_dir``, on that prepared data (``check_recipe``).

    Returns the models (eval mode, frozen, channels_last on CUDA) and their manifest entries.
    """
    pool_dir = Path(pool_dir)
    manifest = read_json(pool_dir / MANIFEST)
    if built_for is not None:
        check_members(manifest, pool_dir / MANIFEST)
    if built_for is not None and which != "base":
        check_jobs(manifest, pool_dir / MANIFEST, built_for.pretrain_pool)
    if which == "base":
        entries = [manifest["base"]]
    else:
        kept = [m for m in manifest["members"] if archs is None or m.get("arch", manifest["arch"]) in archs]
        by_origin = {o: [m for m in kept if m["origin"] == o] for o in ("prior", "post")}
        if which == "both":
            half = None if size is None else (size + 1) // 2
            prior, post = (
                spread(by_origin["prior"], half),
                spread(by_origin["post"], size and size - len(spread(by_origin["prior"], half))),
            )
            entries = [m for pair in zip(prior, post, strict=False) for m in pair]
            entries += [m for m in prior + post if m not in entries]
        else:
            entries = spread(by_origin[which], size)
    if not entries:
        among = "" if archs is None else f" of architectures {list(archs)}"
        raise ArtifactError(
            f"{pool_dir / MANIFEST} lists no {which} members{among}: set pretrain_pool.prior_epochs, "
            "pretrain_pool.post_members or pretrain_pool.member_archs (and distill.pool_archs)"
        )
    if built_for is not None:
        check_recipe(entries, pool_dir / MANIFEST, built_for, data_dir)
    pool = []
    for entry in entries:
        path = pool_dir / entry["file"]
        model = models.from_checkpoint(artifacts.load_member(path, entry["sha256"]), device).eval()
        if torch.device(device).type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        for param in model.parameters():
            param.requires_grad_(False)
        pool.append(model)
    return pool, entries


def check_jobs(manifest: dict, path: Path, p) -> None:
    """Fail unless the pool manifest at ``path`` was assembled from exactly the pool jobs the
    pretrain_pool section ``p`` asks for. After ``member_archs``, ``post_members`` or ``prior_seeds``
    change, a manifest assembled before (results restored without the workflow's records, a pool
    folder passed by hand) would otherwise be drawn from silently, without the new members or with
    the dropped ones. Manifests from before ``jobs`` was recorded are read from their entries."""
    want = naming.pool_job_names(p)
    have = manifest.get("jobs")
    if have is None:
        entries = [manifest["base"], *manifest["members"]]
        if any("job" not in e for e in entries):
            return  # too old to tell which jobs made it
        have = list(dict.fromkeys(e["job"] for e in entries))
    missing, extra = [j for j in want if j not in have], [j for j in have if j not in want]
    if missing or extra:
        told = [f"missing {missing}" if missing else "", f"not configured {extra}" if extra else ""]
        raise ArtifactError(
            f"{path}: assembled from pool jobs {have}, but pretrain_pool (member_archs, prior_seeds, "
            f"post_members) now asks for {want} ({'; '.join(t for t in told if t)}): the pool was built "
            f"for another config; {rebuild_advice(path)}"
        )


def rebuild_advice(path: Path) -> str:
    """A pool built for another config: rebuilding it with the command that made it would make the
    same pool again, so the advice is this config's pool, or the pool's own config."""
    return (
        "build the pool for this config (Snakemake reruns it when run with these config files; by "
        f"hand: `teddy pretrain-pool` with this config and --out {path.parent}), or run this stage with "
        f"the config the pool was built with ({path.parent / 'config.resolved.yaml'})"
    )


def _shown(value) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def check_recipe(entries: list[dict], path: Path, cfg, data_dir: str | Path | None = None) -> None:
    """Fail unless every member in ``entries`` was built by the recipe ``cfg`` gives for its kind
    (``teddy.workflow.params.pool_recipe``: the pretrain_pool keys, dataset and dtype its job depends on) and,
    with ``data_dir``, trained on that prepared data. Members written before recipes were recorded
    carry none and are not checked."""
    data = config_mod.to_dict(cfg)
    here = artifacts.data_digest(data_dir) if data_dir is not None else None
    for entry in entries:
        recipe = entry.get("recipe")
        if recipe is None:
            continue
        had = recipe.get("config", {})
        want = pool_recipe(data, entry["origin"])
        diff = [
            f"{k}: {_shown(had[k]) if k in had else '(not recorded)'} in the pool, {_shown(v)} in this config"
            for k, v in want.items()
            if k not in had or had[k] != v
        ]
        if diff:
            raise ArtifactError(
                f"{path}: member {entry['file']} was built by another recipe ({'; '.join(diff[:4])}"
                f"{'; …' if len(diff) > 4 else ''}); {rebuild_advice(path)}"
            )
        if here is not None and recipe.get("data") and recipe["data"] != here:
            raise ArtifactError(
                f"{path}: member {entry['file']} was trained on other data than {data_dir} (its prepared "
                f"cache/index checksum differs); {rebuild_advice(path)}"
            )


def check_members(manifest: dict, path: Path) -> None:
    """Fail unless the manifest lists exactly the members each of its jobs recorded in its own
    members.json (a job folder beside it): a manifest edited or assembled from part of a job would
    otherwise be drawn from silently."""
    for job in manifest.get("jobs", []):
        record = path.parent / job / MEMBERS
        if not record.is_file():
            continue  # a job folder elsewhere (assembled by hand): the checksums still hold
        own = {(Path(job) / e["file"]).as_posix() for e in read_json(record)}
        listed = {e["file"] for e in [manifest["base"], *manifest["members"]] if e.get("job") == job}
        if own != listed:
            gone, added = sorted(own - listed), sorted(listed - own)
            told = [f"missing {gone}" if gone else "", f"not in its record {added}" if added else ""]
            told = "; ".join(t for t in told if t)
            raise ArtifactError(
                f"{path}: lists other members of job {job} than its {record} ({told}): "
                "edited or assembled from part of the job; reassemble it (`teddy pretrain-pool --assemble` "
                "over the job folders, or rerun the workflow)"
            )


def spread(entries: list[dict], size: int | None) -> list[dict]:
    """``size`` of ``entries`` evenly spaced over the list (all when size is None or too large):
    a pool of 3 prior members spans early to late checkpoints rather than taking the weakest."""
    if size is None or size >= len(entries):
        return list(entries)
    if size <= 0:
        return []
    picks = (
        [round(i * (len(entries) - 1) / max(1, size - 1)) for i in range(size)]
        if size > 1
        else [len(entries) // 2]
    )
    return [entries[i] for i in picks]


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


RESCORE_IMAGES, RESCORE_DROP = 512, 10.0  # val images the teacher is re-scored on; points it may lose


def check_teacher_accuracy(teacher, source, path: Path, device) -> float | None:
    """The base-model teacher re-scored on a seeded sample of val images against the val top-1
    recorded when it was built: far below it (more than RESCORE_DROP points and 4 binomial standard
    errors) means the model file or the val labels changed since, consistently enough to pass every
    checksum. Returns the re-scored top-1 (None: an ensemble, which has no one recorded accuracy)."""
    if len(teacher.entries) != 1:
        return None
    recorded = teacher.entries[0]["val_top1"]
    n = source.count("val")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:RESCORE_IMAGES].sort().values
    top1 = accuracy_of(teacher.models[0], source.batches("val", idx, 256), device)["top1"]
    p = max(min(recorded / 100, 0.99), 0.01)
    se = 100 * (p * (1 - p) / len(idx)) ** 0.5
    if top1 < recorded - max(RESCORE_DROP, 4 * se):
        raise ArtifactError(
            f"{path}: its base model ({teacher.entries[0]['file']}) scores {top1:.1f} % on {len(idx)} val "
            f"images, {recorded:.1f} % recorded when it was built: the model file or the val labels "
            "changed since (consistently enough to pass the checksums); prepare the data and build the "
            "pool again"
        )
    return top1


AGREEMENT_VIEWS, AGREEMENT_MIN = 64, 0.9  # views re-run per checked epoch; top-1 agreement required


def check_stored_logits(teacher, images: torch.Tensor, soft: dict, path: Path, device) -> float:
    """Stored soft labels against a re-run of their ``teacher`` on a sample of views (first and
    last stored epoch): logits written by something else (random numbers, another teacher's, another
    set's) with the checksum redone agree with it at about chance. Returns the top-1 agreement."""
    epochs, n = soft["crops"].shape[:2]
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:AGREEMENT_VIEWS].sort().values
    views = {"crops": soft["crops"].to(device), "mix": soft["mix"].to(device), "mix_mode": soft["mix_mode"]}
    agree = []
    for epoch in sorted({0, epochs - 1}):
        with torch.no_grad():
            fresh = teacher(render(images.to(device), views, epoch, idx.to(device))).float().cpu()
        stored = soft["replay"](epoch, idx, "cpu").float()
        agree.append((fresh.argmax(-1) == stored.argmax(-1)).float().mean().item())
    if min(agree) < AGREEMENT_MIN:
        raise ArtifactError(
            f"{path}: its stored teacher logits disagree with the teacher ({soft['teacher']}) re-run on "
            f"{len(idx)} of its views (top-1 agreement {min(agree):.0%}, at least {AGREEMENT_MIN:.0%} "
            "expected): written by something else than relabel with this pool; rerun relabel"
        )
    return min(agree)


class Teacher:
    """Logits of the base model, or (``ensemble``) the mean logits of every pool member, prior and post."""

    def __init__(self, pool_dir, which: str, device, built_for=None, data_dir=None):
        self.models, self.entries = load_pool(
            pool_dir, "base" if which == "base" else "both", device, built_for=built_for, data_dir=data_dir
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.models]).mean(0)
