"""Every file a stage writes for another stage to read, written and read in one place.

Writers save atomically (:func:`teddy.io.files.save_torch`) and then record the file's sha256 beside
it in ``<file>.sha256`` (also atomic). Readers verify that checksum, load with
``weights_only=True`` and check the content against what they expect: finite images, logits and
weights; labels inside the dataset's classes; method/IPC/seed against the folder the file sits in;
soft labels made for exactly this synthetic set. Every problem is an :class:`ArtifactError` that
names the file, what is wrong and the command that rebuilds it. Stage modules read each other's
files only through here.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from teddy.io.files import ArtifactError, atomic_path, first_line, read_json, save_torch
from teddy.runtime.distributed import is_main

# file names, by the stage that writes them
CACHE, DATA_MANIFEST, INDEX = "cache.pt", "manifest.json", "index.json"  # prepare_data
CACHE_NPY = {"train": "train_u8.npy", "val": "val_u8.npy"}  # prepare_data, image-file datasets
POOL_MANIFEST, BASE_MODEL, POST_MEMBER = "manifest.json", "base.pt", "member.pt"  # pretrain_pool
POOL_MEMBERS = "members.json"  # pretrain_pool: each job's own record of the members it wrote

BATCHES, SYNTHETIC, GRID = "batches.pt", "synthetic.pt", "grid.png"  # distill
SOFT_LABELS = "soft_labels.pt"  # relabel
CURVE_PNG = "curve.png"  # evaluate: the student's learning curve
PRODUCERS = {
    CACHE: "prepare_data",
    INDEX: "prepare_data",
    **{name: "prepare_data" for name in CACHE_NPY.values()},
    BASE_MODEL: "pretrain_pool",
    POST_MEMBER: "pretrain_pool",
    BATCHES: "distill",
    SYNTHETIC: "distill",
    SOFT_LABELS: "relabel",
}
PRIOR_MEMBER = re.compile(r"^e\d{3}\.pt$")  # prior members: e<epoch>.pt, declared via members.json
LOGIT_SHARD = re.compile(r"^logits_e\d{4}-\d{4}\.pt$")  # relabel: teacher logits of a range of epochs
RESUMABLE = ("checkpoint.pt", "train_state.pt")  # transient resumable state, not an artifact
CHECKSUM_SUFFIX = ".sha256"


# -- where a file comes from and how to rebuild it ----------------------------------------------


def producer(path: Path) -> str | None:
    name = path.name
    if name in PRODUCERS:
        return PRODUCERS[name]
    if LOGIT_SHARD.match(name):
        return "relabel"
    return "pretrain_pool" if PRIOR_MEMBER.match(name) else None


def rebuild_target(path: Path) -> Path:
    """The Snakemake output that rebuilds ``path`` (a prior member is made by its members.json job)."""
    return path.with_name("members.json") if PRIOR_MEMBER.match(path.name) else path


def made_by(path: Path) -> str | None:
    """The command recorded by the job that wrote ``path`` (``command`` in the metrics.json of its
    folder, or of the folder above: a pool built in one job holds its members in subfolders): the
    Snakemake invocation with the user's config files when the workflow ran it, else the teddy
    command line. None when no readable record is there."""
    for folder in (path.parent, path.parent.parent):
        record = folder / "metrics.json"
        if record.is_file():
            try:
                command = json.loads(record.read_text()).get("command")
            except (ValueError, OSError, AttributeError):
                return None
            return command if isinstance(command, str) and command.strip() else None
    return None


def rebuild_hint(path: Path, stage: str | None = None) -> str:
    """How to rebuild ``path`` with the config it was made with: the recorded command, never a
    default-config one that would rebuild the data and pool over the user's results."""
    command, target = made_by(path), rebuild_target(path)
    if command is None:
        return (
            f"rebuild it with the command these results were made with, forcing {target} "
            f"(no record of the command that made it: {path.parent}/metrics.json is missing)"
        )
    if command.startswith("snakemake"):
        return f"rebuild it with `{command} --force {target}` and then `{command}` (reruns what depends on it)"
    stage = stage or producer(path) or "the stage that wrote it"
    return f"rebuild it with `{command}` (the {stage} job that made it), then rerun what reads it"


def fail(path: Path, problem: str, stage: str | None = None) -> ArtifactError:
    """``stage``: the producer where the file name alone does not tell (manifest.json)."""
    return ArtifactError(f"{path}: {problem}; {rebuild_hint(path, stage)}")


# -- write, verify, load ------------------------------------------------------------------------


def checksum_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def save(obj: Any, path: str | Path) -> str:
    """Save ``obj`` atomically and record its sha256 in ``<path>.sha256``; returns the digest."""
    path = Path(path)
    digest = save_torch(obj, path)
    if is_main():
        with atomic_path(checksum_path(path)) as tmp:
            tmp.write_text(f"{digest}  {path.name}\n")
    return digest


def record_checksum(path: str | Path, digest: str) -> None:
    """Record ``digest`` for a file written by other means than :func:`save` (JSON, streamed caches)."""
    path = Path(path)
    if is_main():
        with atomic_path(checksum_path(path)) as tmp:
            tmp.write_text(f"{digest}  {path.name}\n")


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def recorded_digest(path: Path) -> str:
    record = checksum_path(path)
    if not record.is_file():
        raise fail(
            path, f"no checksum record {record.name} beside it (the stage that writes it did not finish)"
        )
    text = record.read_text().split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise fail(path, f"its checksum record {record.name} is damaged")
    return text[0]


def read_verified(path: str | Path, expected: str | None = None, listed_in: str = "") -> tuple[bytes, str]:
    """The file's bytes and sha256, after checking them against the recorded checksum and, when
    given, against ``expected`` (the digest a manifest ``listed_in`` holds for it)."""
    path = Path(path)
    if not path.is_file():
        stage = producer(path) or "the stage that produces it"
        raise ArtifactError(f"{path} does not exist: run {stage} first ({rebuild_hint(path)})")
    recorded = recorded_digest(path)
    payload = path.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != recorded:
        raise fail(
            path, f"its sha256 {digest[:12]}… differs from the recorded {recorded[:12]}… (damaged or replaced)"
        )
    if expected is not None and digest != expected:
        raise fail(path, f"does not match its checksum in {listed_in} (a stale or replaced file)")
    return payload, digest


def load(path: str | Path, map_location: Any = "cpu") -> Any:
    """Verify ``path`` against its checksum and load it (weights_only)."""
    payload, _ = read_verified(path)
    return torch_load_bytes(Path(path), payload, map_location)


def torch_load_bytes(path: Path, payload: bytes, map_location: Any = "cpu") -> Any:
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/EOFError/UnpicklingError/...
        raise fail(path, f"cannot be read ({first_line(err)}): the file is truncated or corrupt") from None


# -- content checks -----------------------------------------------------------------------------


def require_finite(path: Path, what: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise fail(path, f"{what} holds {bad} NaN/Inf value(s)")


def require_labels(path: Path, what: str, labels: torch.Tensor, num_classes: int) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise fail(
            path, f"{what} lie in [{int(labels.min())}, {int(labels.max())}], not in the {num_classes} classes"
        )


def require_counts(path: Path, split: str, labels: torch.Tensor, manifest: dict) -> None:
    """The labels per class against the manifest's count of them: labels shifted or permuted after
    the manifest was written (checksums redone) no longer match it."""
    recorded = manifest.get(f"{split}_per_class")
    if recorded is None:
        return  # a manifest from before per-class counts were recorded
    counts = torch.bincount(labels, minlength=manifest["num_classes"]).tolist()
    if counts != list(recorded):
        first = next(c for c, (a, b) in enumerate(zip(counts, recorded, strict=True)) if a != b)
        raise fail(
            path,
            f"its {split} labels per class differ from {DATA_MANIFEST}'s {split}_per_class (class {first}: "
            f"{counts[first]} here, {recorded[first]} recorded): the labels were changed after preparation",
        )


def folder_selection(path: Path) -> dict:
    """method/IPC/seed that the workflow's folder layout (``<method>/ipc<K>/seed<S>/``) says."""
    match = re.search(r"/([^/]+)/ipc(\d+)/seed(\d+)(?:/|$)", path.parent.as_posix())
    return {} if match is None else {"method": match[1], "ipc": int(match[2]), "seed": int(match[3])}


def require_selection(path: Path, record: dict) -> None:
    said = folder_selection(path)
    wrong = {k: (record.get(k), v) for k, v in said.items() if k in record and record[k] != v}
    if wrong:
        detail = ", ".join(f"{k} {got!r} where the folder says {want!r}" for k, (got, want) in wrong.items())
        raise fail(path, f"holds another set than its folder names ({detail}): copied or moved")


# -- each stage's files ---------------------------------------------------------------------------


def load_cache(data_dir: str | Path) -> dict:
    """prepare_data's uint8 tensors, verified against their checksum and the dataset manifest."""
    data_dir = Path(data_dir)
    manifest = read_json(data_dir / DATA_MANIFEST)
    path = data_dir / CACHE
    payload, _ = read_verified(path, manifest.get("cache_sha256"), DATA_MANIFEST)
    data = torch_load_bytes(path, payload)
    for split in ("train", "val"):
        x, y = data[f"{split}_x"], data[f"{split}_y"]
        if x.dtype != torch.uint8 or len(x) != len(y) or len(y) != manifest[f"{split}_count"]:
            raise fail(path, f"its {split} split does not match {DATA_MANIFEST} (dtype, count)")
        require_labels(path, f"{split} labels", y, manifest["num_classes"])
        require_counts(path, split, y, manifest)
    return data


def load_index(data_dir: str | Path, manifest: dict) -> dict:
    """prepare_data's index of an image-file dataset (files and labels per split), verified against
    its checksum and the dataset manifest."""
    path = Path(data_dir) / INDEX
    payload, _ = read_verified(path, manifest.get("index_sha256"), DATA_MANIFEST)
    try:
        index = json.loads(payload)
        for split in ("train", "val"):
            files, labels = index[split]["files"], index[split]["labels"]
            if len(files) != len(labels) or len(labels) != manifest[f"{split}_count"]:
                raise fail(path, f"its {split} split does not match {DATA_MANIFEST} (count)")
            y = torch.tensor(labels, dtype=torch.long)
            require_labels(path, f"{split} labels", y, manifest["num_classes"])
            require_counts(path, split, y, manifest)
        index["root"]
    except (ValueError, KeyError, TypeError) as err:
        raise fail(path, f"is not a dataset index ({first_line(err)})") from None
    return index


def data_digest(data_dir: str | Path) -> str:
    """What identifies a prepared dataset: the checksum of its cache or index (manifest.json)."""
    manifest = read_json(Path(data_dir) / DATA_MANIFEST)
    return manifest.get("cache_sha256") or manifest.get("index_sha256") or ""


def verify_large(path: Path) -> None:
    """A large streamed file (the uint8 caches) against its recorded checksum, read in blocks."""
    if hash_file(path) != recorded_digest(path):
        raise fail(path, "its sha256 differs from the recorded one (damaged or replaced)")


def save_synthetic(images: torch.Tensor, labels: torch.Tensor, path: Path, **meta) -> str:
    return save({"images": images.float(), "labels": labels.long(), **meta}, path)


def load_synthetic(folder: str | Path, manifest: dict | None = None) -> dict:
    """distill's synthetic set (images in [0, 1], labels, method, ipc, seed), checked against its
    folder and, when given, the dataset manifest (channels, size, classes)."""
    path = Path(folder) / SYNTHETIC
    syn = load(path)
    syn["sha256"] = recorded_digest(path)
    require_finite(path, "images", syn["images"])
    if len(syn["images"]) and (syn["images"].min() < 0 or syn["images"].max() > 1):
        raise fail(path, "images leave the valid range [0, 1]")
    require_selection(path, syn)
    if manifest is not None:
        shape = (manifest["channels"], manifest["image_size"], manifest["image_size"])
        if tuple(syn["images"].shape[1:]) != shape:
            raise fail(path, f"images are {tuple(syn['images'].shape[1:])}, the dataset's are {shape}")
        require_labels(path, "labels", syn["labels"], manifest["num_classes"])
    return syn


def load_batches(folder: str | Path) -> dict:
    path = Path(folder) / BATCHES
    batches = load(path)
    for index, batch in batches.items():
        require_finite(path, f"batch {index}'s images", batch["images"])
    return batches


def load_soft_labels(folder: str | Path, synthetic: dict | None = None) -> dict:
    """relabel's views (and teacher logits), checked to belong to ``synthetic`` when given."""
    path = Path(folder) / SOFT_LABELS
    soft = load(path)
    if "logits" in soft:
        require_finite(path, "teacher logits", soft["logits"])
    missing = [s["file"] for s in soft.get("logit_shards", []) if not (path.parent / s["file"]).is_file()]
    if missing:
        raise fail(path, f"lists logit shards {missing[:3]} that are not beside it")
    if "logits" in soft or "logit_shards" in soft:
        soft["replay"] = SoftTargets(path.parent, soft)
    require_selection(path, soft)
    if synthetic is not None:
        made_for = soft.get("synthetic_sha256")
        if made_for is not None and made_for != synthetic["sha256"]:
            raise fail(path, "was made for another synthetic set than the one given (its sha256 differs)")
        if soft["crops"].shape[1] != len(synthetic["images"]):
            raise fail(
                path, f"holds views of {soft['crops'].shape[1]} images, the set has {len(synthetic['images'])}"
            )
    return soft


def pack_logits(logits: torch.Tensor, topk: int | None) -> dict:
    """Teacher logits (E, N, K) as stored: all of them in fp16, or the ``topk`` largest (fp16 values
    and int16/int32 class indices)."""
    if topk is None or topk >= logits.shape[-1]:
        return {"logits": logits.half()}
    values, indices = logits.topk(topk, dim=-1)
    index_dtype = torch.int16 if logits.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    return {"values": values.half(), "indices": indices.to(index_dtype)}


def soft_label_bytes(folder: Path, shards: list[dict]) -> int:
    return sum((folder / s["file"]).stat().st_size for s in shards)


class SoftTargets:
    """The stored teacher logits of a soft-label file, per (epoch, images): inline, or read shard by
    shard (one in memory at a time, each verified against the checksum soft_labels.pt lists); top-k
    files give dense logits with −inf outside the k kept classes (probability 0 at any temperature)."""

    def __init__(self, folder: Path, soft: dict):
        self.folder, self.soft = Path(folder), soft
        self.shards = soft.get("logit_shards", [])
        self.current: tuple[int, dict] | None = None

    def __call__(self, epoch: int, idx: torch.Tensor, device) -> torch.Tensor:
        if "logits" in self.soft:
            return self.soft["logits"][epoch, idx.cpu()].to(device)
        number = next((i for i, s in enumerate(self.shards) if s["start"] <= epoch < s["stop"]), None)
        if number is None:
            raise fail(self.folder / SOFT_LABELS, f"lists no logit shard for epoch {epoch}")
        if self.current is None or self.current[0] != number:
            shard = self.shards[number]
            path = self.folder / shard["file"]
            payload, _ = read_verified(path, shard["sha256"], SOFT_LABELS)
            part = torch_load_bytes(path, payload)
            for name in ("logits", "values"):
                if name in part:
                    require_finite(path, "teacher logits", part[name])
            self.current = (number, part)
        part, row = self.current[1], epoch - self.shards[number]["start"]
        idx = idx.cpu()
        if "logits" in part:
            return part["logits"][row, idx].to(device)
        values, indices = part["values"][row, idx].float(), part["indices"][row, idx].long()
        dense = torch.full((len(idx), self.soft["num_classes"]), float("-inf"))
        return dense.scatter_(1, indices, values).to(device)


def load_member(path: str | Path, expected_sha256: str | None = None, map_location: Any = "cpu") -> dict:
    """A pool member checkpoint, verified (and against the pool manifest's checksum when given)."""
    path = Path(path)
    payload, _ = read_verified(path, expected_sha256, "the pool manifest")
    ckpt = torch_load_bytes(path, payload, map_location)
    for name, tensor in ckpt["state_dict"].items():
        require_finite(path, f"weight {name}", tensor)
    return ckpt


# -- a whole results tree (teddy verify) ------------------------------------------------------------


def check_file(path: Path) -> None:
    """Run the reader of ``path``'s kind (raises ArtifactError); JSON files must parse."""
    if path.suffix == ".json" and path.name != INDEX:
        read_json(path)
    elif path.name == CACHE:
        load_cache(path.parent)
    elif path.name == INDEX:
        load_index(path.parent, read_json(path.parent / DATA_MANIFEST))
    elif path.name in CACHE_NPY.values():
        verify_large(path)
    elif path.name == SYNTHETIC:
        load_synthetic(path.parent)
    elif path.name == SOFT_LABELS:
        # the workflow's layout: relabel/<method>/ipc<K>/seed<S> ↔ distill/<method>/ipc<K>/seed<S>
        parts = list(path.parent.parts)
        twin = Path(*parts[: len(parts) - 4], "distill", *parts[-3:]) if "relabel" in parts[-4:-3] else None
        load_soft_labels(path.parent, load_synthetic(twin) if twin and (twin / SYNTHETIC).is_file() else None)
    elif path.name == BATCHES:
        load_batches(path.parent)
    elif LOGIT_SHARD.match(path.name):
        load(path)
    else:
        load_member(path)


def verify_tree(root: str | Path) -> tuple[int, list[tuple[Path, str]]]:
    """Check every artifact under ``root``; returns (files checked, [(file, problem)])."""
    root = Path(root)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and (producer(p) or p.suffix == ".json") and p.name not in RESUMABLE
    )
    bad: dict[Path, str] = {}

    def check(path: Path, reader) -> None:
        if path in bad:
            return
        try:
            reader()
        except ArtifactError as err:  # keep the problem, without the path and the rebuild hint
            bad[path] = str(err).removeprefix(f"{path}: ").split("; rebuild it")[0]

    for path in files:
        check(path, lambda path=path: check_file(path))
    for manifest in root.rglob(POOL_MANIFEST):  # pool manifests: members match their recorded checksums
        pool = {} if manifest in bad else read_json(manifest)
        for entry in [pool["base"], *pool["members"]] if "members" in pool else []:
            member = manifest.parent / entry["file"]
            check(member, lambda member=member, entry=entry: load_member(member, entry["sha256"]))
    return len(files), list(bad.items())


def rebuild_commands(bad: list[Path]) -> list[str]:
    """The commands that rebuild exactly ``bad``, each with the config it was made with (grouped by
    the recorded command), and one line naming the files whose command is not recorded."""
    by_command: dict[str, list[str]] = {}
    unknown = []
    for path in bad:
        command = made_by(path)
        if command is None:
            unknown.append(str(path))
        else:
            by_command.setdefault(command, []).append(str(rebuild_target(path)))
    lines = []
    for command, targets in by_command.items():
        forced = " ".join(sorted(set(targets)))
        lines.append(f"{command} --force {forced} && {command}" if command.startswith("snakemake") else command)
    if unknown:
        lines.append(
            f"no record of the command that made {' '.join(unknown)} (its metrics.json is missing): rerun "
            "the command these results were made with, the same config files, forcing them"
        )
    return lines
