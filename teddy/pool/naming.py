"""The pool's jobs and their names: which jobs a pretrain_pool config makes (base, prior trajectories,
post members), their folder names, which one starts from the base model, and the config keys each
one's result depends on. Read by the workflow (the job list), the pretrain-pool stage and the CLI
(``--member``), and the pool's readers (recorded job names); it imports nothing of the package."""

from __future__ import annotations

import re


def _getter(p):
    return p.get if isinstance(p, dict) else lambda key: getattr(p, key)


def pool_job_names(p) -> list[str]:
    """The pool's jobs for the pretrain_pool config section ``p`` (mapping or dataclass), base first."""
    get = _getter(p)
    has_prior = bool(get("prior_epochs") or get("prior_targets"))
    priors = [f"prior_s{s}" for s in get("prior_seeds")] if has_prior else []
    priors += [
        f"prior_{arch_slug(a)}_s{s}" for a in get("member_archs") for s in get("prior_seeds") if has_prior
    ]
    return ["base", *priors, *(f"post_{i:03d}" for i in range(get("post_members")))]


def parse_member(p, text: str) -> tuple[str, int, str]:
    """A pool job of the pretrain_pool section ``p`` (mapping or dataclass): 'base' | 'prior:S' |
    'prior:ARCH:S' | 'post:I' (or the folder names prior_sS, prior_<A>_sS, post_III) → (kind,
    index, architecture)."""
    get = _getter(p)
    by_slug = {arch_slug(a): a for a in get("member_archs")}
    for slug, arch in by_slug.items():
        text = text.replace(f"prior_{slug}_s", f"prior:{arch}:")
    text = text.replace("prior_s", "prior:").replace("post_", "post:")
    kind, _, rest = text.partition(":")
    arch, _, index = rest.rpartition(":")
    valid = kind == "base" and not index
    if kind in ("prior", "post") and index.isdigit():
        i = int(index)
        valid = i in get("prior_seeds") if kind == "prior" else i < get("post_members") and not arch
        valid = valid and (not arch or arch in get("member_archs"))
    if not valid:
        raise ValueError(
            f"--member {text!r}: use base, prior:S with S in pretrain_pool.prior_seeds "
            f"{list(get('prior_seeds'))} "
            f"(prior:ARCH:S for ARCH in pretrain_pool.member_archs {list(get('member_archs'))}), "
            f"or post:I with I < pretrain_pool.post_members ({get('post_members')})"
        )
    return kind, int(index or 0), arch or get("arch")


def arch_slug(arch: str) -> str:
    """An architecture name as a folder-name part (torchvision:resnet50 → torchvision-resnet50)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", arch).strip("-")


POOL_PRIOR_KEYS = {"prior_epochs", "prior_targets"}
POOL_POST_KEYS = {"prune_ratio", "finetune_epochs", "finetune_lr", "recalib_images"}
POOL_LIST_KEYS = {"prior_seeds", "post_members", "member_archs"}  # which jobs exist, not what one job computes


def pool_job_config(p: dict, kind: str) -> dict:
    """The pretrain_pool keys one job's result depends on (a change reruns only the jobs it affects)."""
    drop = (
        POOL_LIST_KEYS
        | {
            "base": POOL_PRIOR_KEYS | POOL_POST_KEYS,
            "prior": POOL_POST_KEYS | {"checkpoint"},
            "post": POOL_PRIOR_KEYS,
        }[kind]
    )
    return {k: v for k, v in p.items() if k not in drop}


def needs_base(p, kind: str) -> bool:
    """Whether a ``kind`` job (base / prior / post) of the pretrain_pool section ``p`` starts from the
    base model: post members prune it; prior trajectories only when they stop at a fraction of its
    accuracy (``prior_targets``)."""
    return kind == "post" or (kind == "prior" and bool(_getter(p)("prior_targets")))
