"""Stage prepare_data: read a dataset once, check it, and write what every later stage reads.

Array datasets (digits, Fashion-MNIST, CIFAR): split, resize, uint8 tensors in cache.pt.
Image-file datasets (imagefolder, tiny_imagenet, imagenet): an index (files, labels, class names),
not a pixel copy, built in one streamed pass that decodes every file once (loader workers), finds
the bad ones, computes the per-channel mean/std and, with ``storage: cache``, writes the resized
uint8 images to one .npy per split. Memory stays flat in the dataset's size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from teddy import config as config_mod
from teddy.data import datasets
from teddy.data.datasets import DatasetError
from teddy.data.decode import BadImage, decode, resize_uint8
from teddy.data.source import workers_of
from teddy.io import artifacts
from teddy.io.artifacts import CACHE, CACHE_NPY, INDEX
from teddy.io.artifacts import DATA_MANIFEST as MANIFEST
from teddy.io.files import atomic_path, write_json
from teddy.runtime.progress import Progress

log = logging.getLogger(__name__)
CHUNK = 64  # images per loader item in the decoding pass


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    xf = x.float() / 255.0
    return xf.mean(dim=(0, 2, 3)).tolist(), xf.std(dim=(0, 2, 3)).tolist()


def run(cfg, inputs: dict, outputs: dict, *, device, tracker) -> dict:
    """outputs: ``out`` dir (manifest.json + cache.pt, or + index.json [+ train_u8.npy, val_u8.npy])."""
    out = Path(outputs["out"])
    spec = datasets.get(cfg.run.dataset)
    prep = config_mod.to_dict(cfg.prepare_data)
    if spec.files:
        return prepare_files(cfg, spec, prep, out)
    split = spec.read(prep)
    size = cfg.prepare_data.image_size or spec.native_size
    tensors = {
        "train_x": resize_uint8(torch.from_numpy(np.ascontiguousarray(split.train_x)), size),
        "train_y": torch.from_numpy(split.train_y),
        "val_x": resize_uint8(torch.from_numpy(np.ascontiguousarray(split.val_x)), size),
        "val_y": torch.from_numpy(split.val_y),
    }
    digest = artifacts.save(tensors, out / CACHE)
    mean, std = channel_stats(tensors["train_x"])
    manifest = {
        "dataset": spec.name,
        "storage": "memory",
        "classes": list(spec.classes),
        "num_classes": spec.num_classes,
        "channels": spec.channels,
        "image_size": size,
        "train_count": int(len(split.train_y)),
        "val_count": int(len(split.val_y)),
        "train_per_class": np.bincount(split.train_y, minlength=spec.num_classes).tolist(),
        "val_per_class": np.bincount(split.val_y, minlength=spec.num_classes).tolist(),
        "mean": mean,
        "std": std,
        "cache_file": CACHE,
        "cache_sha256": digest,
    }
    write_json(manifest, out / MANIFEST)
    return {"train_count": manifest["train_count"], "val_count": manifest["val_count"]}


# -- image-file datasets ------------------------------------------------------------------------


def split_entries(listing, prep: dict) -> tuple[list, list]:
    """Train and val entries: the layout's own val split, or a stratified one (val_fraction,
    split_seed); then at most max_train_per_class training images per class (seeded)."""
    train, val = list(listing.train), listing.val
    if val is None:
        labels = np.array([label for _, label in train], dtype=np.int64)
        order = np.arange(len(train))
        keep = datasets.stratified_split(order, labels, prep["val_fraction"], prep["split_seed"])
        val = [train[i] for i in keep.val_x]
        train = [train[i] for i in keep.train_x]
    cap = prep.get("max_train_per_class")
    if cap:
        labels = np.array([label for _, label in train], dtype=np.int64)
        kept = datasets.subsample(
            datasets.Split(np.arange(len(train)), labels, np.empty(0), np.empty(0)), cap, prep["split_seed"]
        )
        train = [train[i] for i in kept.train_x]
    return train, list(val)


class _Decode(torch.utils.data.Dataset):
    """Chunks of entries → (uint8 images with zeros where a file is bad, [reason or None])."""

    def __init__(self, root: Path, entries: list, channels: int, size: int):
        self.root, self.entries, self.channels, self.size = root, entries, channels, size

    def __len__(self):
        return -(-len(self.entries) // CHUNK)

    def __getitem__(self, i):
        part = self.entries[i * CHUNK : (i + 1) * CHUNK]
        out = torch.zeros(len(part), self.channels, self.size, self.size, dtype=torch.uint8)
        reasons = []
        for row, (path, _) in enumerate(part):
            try:
                out[row] = decode(self.root / path, self.channels, self.size)
                reasons.append(None)
            except BadImage as err:
                reasons.append(str(err))
        return out, reasons


def decode_pass(root: Path, entries: list, channels: int, size: int, workers: int, sink, what: str):
    """Decode every entry once (in order), handing good images to ``sink(images)``; returns the
    per-entry reasons (None: good) and the float64 per-channel sums (x, x²) over the good pixels."""
    loader = torch.utils.data.DataLoader(
        _Decode(root, entries, channels, size), batch_size=None, num_workers=workers, shuffle=False
    )
    reasons, sums, progress = [], torch.zeros(2, channels, dtype=torch.float64), Progress(what, len(entries))
    for images, why in loader:
        good = torch.tensor([r is None for r in why], dtype=torch.bool)
        kept = images[good]
        sink(kept)
        x = kept.to(torch.float64).div_(255.0)
        sums[0] += x.sum(dim=(0, 2, 3))
        sums[1] += x.square().sum(dim=(0, 2, 3))
        reasons.extend(why)
        progress.update(len(reasons))
    return reasons, sums


class NpyWriter:
    """Streams uint8 rows into ``<path>`` as a .npy file; only :meth:`finish` puts it in place.

    Rows go to a raw temporary file first (the count is known only once bad files are found);
    finish writes the header and copies the rows behind it, hashing as it goes."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.path, self.shape, self.rows = path, shape, 0
        self.raw = path.with_name(f".{path.name}.rows.tmp")
        self.file = open(self.raw, "wb")  # noqa: SIM115 - closed in finish/abort

    def __call__(self, images: torch.Tensor) -> None:
        self.file.write(images.contiguous().numpy().tobytes())
        self.rows += len(images)

    def finish(self, keep: list[bool] | None = None) -> str:
        """Write the .npy (only the rows where ``keep`` is true, if given); returns its sha256."""
        import hashlib

        self.file.close()
        row = int(np.prod(self.shape))
        keep_rows = np.ones(self.rows, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
        header = {"descr": "|u1", "fortran_order": False, "shape": (int(keep_rows.sum()), *self.shape)}
        h = hashlib.sha256()
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as dst, open(self.raw, "rb") as src:
                np.lib.format.write_array_header_1_0(dst, header)
                dst.flush()
                with open(tmp, "rb") as head:
                    h.update(head.read())
                step = max(1, (1 << 24) // row)
                for start in range(0, self.rows, step):
                    block = np.frombuffer(src.read(row * step), dtype=np.uint8).reshape(-1, row)
                    block = block[keep_rows[start : start + len(block)]].tobytes()
                    dst.write(block)
                    h.update(block)
        self.raw.unlink()
        return h.hexdigest()

    def abort(self) -> None:
        self.file.close()
        self.raw.unlink(missing_ok=True)


def too_few(counts: list[int], need: int) -> list[int]:
    return [c for c, n in enumerate(counts) if n < need]


def prepare_files(cfg, spec, prep: dict, out: Path) -> dict:
    listing = spec.listing(prep)
    channels, size = prep["channels"], prep["image_size"] or spec.native_size
    if size is None:
        raise DatasetError(
            f"config key prepare_data.image_size: {spec.name} images come in many sizes; set the side "
            "length every stage sees (e.g. 224 for ImageNet-1K, 64 for Tiny-ImageNet)"
        )
    train, val = split_entries(listing, prep)
    total = (len(train) + len(val)) * channels * size * size
    storage = prep["storage"]
    if storage == "auto":
        storage = "cache" if total <= prep["cache_max_gb"] * 1e9 else "files"
    workers, root = workers_of(prep["workers"]), listing.root.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "%s at %s: %d train + %d val images, %d classes; storage %s (%.2f GB of uint8 at %d px)",
        spec.name,
        root,
        len(train),
        len(val),
        len(listing.class_ids),
        storage,
        total / 1e9,
        size,
    )
    shape = (channels, size, size)
    writers = {s: NpyWriter(out / CACHE_NPY[s], shape) for s in ("train", "val")} if storage == "cache" else {}
    try:
        kept, bad, sums = {}, [(path, why) for path, why in listing.problems], None
        for split, entries in (("train", train), ("val", val)):
            sink = writers[split] if writers else (lambda images: None)
            reasons, s = decode_pass(root, entries, channels, size, workers, sink, f"prepare_data {split}")
            sums = s if split == "train" else sums
            kept[split] = [e for e, r in zip(entries, reasons, strict=True) if r is None]
            bad += [(e[0], r) for e, r in zip(entries, reasons, strict=True) if r is not None]
        need = max(cfg.distill.ipcs)
        counts = np.bincount([label for _, label in kept["train"]], minlength=len(listing.class_ids)).tolist()
        small = too_few(counts, need)
        for c in small:
            folder = listing.train_folder(c)
            why = (
                f"class {listing.classes[c]!r} has {counts[c]} readable training images, fewer than IPC {need}"
            )
            bad.append((folder, why + " (distill.ipcs)"))
        if bad and prep["bad_files"] == "fail":
            shown = "\n".join(f"  {root / path}: {why}" for path, why in bad[:20])
            more = f"\n  … and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise DatasetError(
                f"prepare_data found {len(bad)} problem(s) in {root}:\n{shown}{more}\n"
                "fix or remove these files (or lower distill.ipcs), or set config key "
                "prepare_data.bad_files: skip to leave them out (each is then recorded in manifest.json)"
            )
        keep_cls = [c for c in range(len(listing.class_ids)) if c not in small]
        if not keep_cls:
            raise DatasetError(f"{root}: no class has {need} readable training images (distill.ipcs)")
        if len(keep_cls) < 2:
            raise DatasetError(
                f"{root}: 1 class ({listing.classes[keep_cls[0]]!r}) with {need}+ readable training images; "
                "distillation and every accuracy need at least 2 classes (check the class folders under "
                "train/, or lower distill.ipcs)"
            )
        new = {c: i for i, c in enumerate(keep_cls)}
        rows = {s: [y in new for _, y in e] for s, e in kept.items()}
        kept = {s: [(p, new[y]) for p, y in e if y in new] for s, e in kept.items()}
        index = {
            "layout": spec.name,
            "root": str(root),
            "class_ids": [listing.class_ids[c] for c in keep_cls],
            "classes": [listing.classes[c] for c in keep_cls],
            **{s: {"files": [p for p, _ in e], "labels": [y for _, y in e]} for s, e in kept.items()},
        }
        write_json(index, out / INDEX, indent=None)  # millions of paths: compact, through the C encoder
        index_digest = artifacts.hash_file(out / INDEX)
        artifacts.record_checksum(out / INDEX, index_digest)
        caches = {s: {"file": w.path.name, "sha256": w.finish(rows[s])} for s, w in writers.items()}
        for cache in caches.values():
            artifacts.record_checksum(out / cache["file"], cache["sha256"])
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    pixels = sum(counts) * size * size  # the statistics are over every readable training image
    mean = sums[0] / pixels
    var = (sums[1] / pixels - mean**2) * pixels / max(1, pixels - 1)  # unbiased, as torch.std
    manifest = {
        "dataset": spec.name,
        "storage": storage,
        "root": str(root),
        "classes": index["classes"],
        "class_ids": index["class_ids"],
        "num_classes": len(keep_cls),
        "channels": channels,
        "image_size": size,
        "train_count": len(kept["train"]),
        "val_count": len(kept["val"]),
        "train_per_class": np.bincount(index["train"]["labels"], minlength=len(keep_cls)).tolist(),
        "val_per_class": np.bincount(index["val"]["labels"], minlength=len(keep_cls)).tolist(),
        "mean": mean.tolist(),
        "std": var.clamp(min=0).sqrt().tolist(),
        "index_file": INDEX,
        "index_sha256": index_digest,
        "cache_files": caches,
        "bad_files_policy": prep["bad_files"],
        "bad_files": [{"path": p, "reason": r} for p, r in bad],
        "skipped_classes": [listing.classes[c] for c in small],
    }
    write_json(manifest, out / MANIFEST)
    if bad:
        log.warning("prepare_data left out %d problem(s) (bad_files: skip); manifest.json lists them", len(bad))
    return {"train_count": manifest["train_count"], "val_count": manifest["val_count"], "bad_files": len(bad)}
