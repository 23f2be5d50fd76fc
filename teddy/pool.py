"""The pool of weak models as later stages use it: load (verified), choose, sample, and the teacher.

pretrain_pool writes the pool; distill draws its members, relabel and evaluate (online) ask its
teacher. They read it only through here, so no stage module imports another.
"""

from __future__ import annotations

from pathlib import Path

import torch

from teddy import artifacts, models, workflow
from teddy.artifacts import POOL_MANIFEST as MANIFEST
from teddy.utils import read_json


def load_pool(
    pool_dir: str | Path, which: str, device, size: int | None = None, archs=None, built_for=None
) -> tuple[list, list[dict]]:
    """``which``: 'base' → [base model]; 'prior' / 'post' / 'both' → those members, at most ``size``
    spread evenly over the manifest's order (prior: by architecture, seed, then epoch); 'both' takes
    half from each and alternates them; ``archs`` keeps only members of those architectures (None:
    all). Checksums are verified; with ``built_for`` (the pretrain_pool config section) members are
    drawn only from a pool assembled from the jobs that section asks for (``check_jobs``).

    Returns the models (eval mode, frozen, channels_last on CUDA) and their manifest entries.
    """
    pool_dir = Path(pool_dir)
    manifest = read_json(pool_dir / MANIFEST)
    if built_for is not None and which != "base":
        check_jobs(manifest, pool_dir / MANIFEST, built_for)
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
        raise RuntimeError(
            f"{pool_dir / MANIFEST} lists no {which} members{among}: set pretrain_pool.prior_epochs, "
            "pretrain_pool.post_members or pretrain_pool.member_archs (and distill.pool_archs)"
        )
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
    want = workflow.pool_job_names(p)
    have = manifest.get("jobs")
    if have is None:
        entries = [manifest["base"], *manifest["members"]]
        if any("job" not in e for e in entries):
            return  # too old to tell which jobs made it
        have = list(dict.fromkeys(e["job"] for e in entries))
    missing, extra = [j for j in want if j not in have], [j for j in have if j not in want]
    if missing or extra:
        told = [f"missing {missing}" if missing else "", f"not configured {extra}" if extra else ""]
        raise artifacts.fail(
            path,
            f"assembled from pool jobs {have}, but pretrain_pool (member_archs, prior_seeds, "
            f"post_members) now asks for {want} ({'; '.join(t for t in told if t)}): the pool was built "
            "for another config",
            "pretrain_pool",
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


class Teacher:
    """Logits of the base model, or (``ensemble``) the mean logits of every pool member, prior and post."""

    def __init__(self, pool_dir, which: str, device, built_for=None):
        self.models, self.entries = load_pool(
            pool_dir, "base" if which == "base" else "both", device, built_for=built_for
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.models]).mean(0)
