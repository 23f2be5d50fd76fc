"""Real images of a prepared dataset, for every stage that reads them: one interface, two backends.

    source = open_source(data_dir)          # prepare_data's output folder, checked
    source.labels("train")                  # int64 labels, from the index (no pixels read)
    source.by_class("train")[c]             # indices of class c
    source.images("train", idx)             # uint8 (n, C, S, S) in the order of idx
    for x, y in source.batches("train", order, batch_size):   # an epoch, prefetched by workers

``ArraySource``: the in-memory arrays of the small datasets (cache.pt). ``FileSource``: image
files listed in index.json, read either from prepare_data's pre-resized uint8 cache (one .npy per
split, read with positioned reads: no decode, and the page cache, not the process, holds it) or,
when no cache was written, decoded from the files on every read (teddy.data.decode).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from teddy.io import artifacts
from teddy.io.artifacts import CACHE_NPY, INDEX
from teddy.io.files import ArtifactError, read_json

SPLITS = ("train", "val")


class Source:
    """Labels, per-class index, random access and an epoch loader over a prepared dataset."""

    def __init__(self, manifest: dict, labels: dict[str, torch.Tensor], workers: int = 0):
        self.manifest, self._labels, self.workers = manifest, labels, workers
        self._by_class: dict[str, dict[int, torch.Tensor]] = {}

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def shape(self) -> tuple[int, int, int]:
        m = self.manifest
        return m["channels"], m["image_size"], m["image_size"]

    def labels(self, split: str) -> torch.Tensor:
        return self._labels[split]

    def count(self, split: str) -> int:
        return len(self._labels[split])

    def by_class(self, split: str = "train") -> dict[int, torch.Tensor]:
        if split not in self._by_class:
            y = self._labels[split]
            order = torch.argsort(y, stable=True)
            counts = torch.bincount(y, minlength=self.num_classes).tolist()
            self._by_class[split] = dict(enumerate(torch.split(order, counts)))
        return self._by_class[split]

    def images(self, split: str, idx) -> torch.Tensor:
        raise NotImplementedError

    def batches(
        self, split: str, order: torch.Tensor | None = None, batch_size: int = 256, workers: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) of ``order`` (default: the whole split in index order) in batches of
        ``batch_size``, read ahead by ``workers`` loader processes where the backend reads files."""
        order = torch.arange(self.count(split)) if order is None else torch.as_tensor(order)
        return self.read(split, list(torch.split(order, batch_size)), workers)

    def read(
        self, split: str, chunks: list[torch.Tensor], workers: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) of each index tensor in ``chunks``, in order, read ahead."""
        y = self._labels[split]
        for idx, x in self._read_ahead(split, chunks, self.workers if workers is None else workers):
            yield x, y[idx]

    def _read_ahead(self, split, chunks, workers):
        for idx in chunks:
            yield idx, self.images(split, idx)


class ArraySource(Source):
    """The small datasets: prepare_data's uint8 tensors, in memory."""

    def __init__(self, manifest: dict, tensors: dict):
        super().__init__(manifest, {s: tensors[f"{s}_y"] for s in SPLITS})
        self.x = {s: tensors[f"{s}_x"] for s in SPLITS}

    def images(self, split: str, idx) -> torch.Tensor:
        return self.x[split][torch.as_tensor(idx, dtype=torch.long)]


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, source, split, chunks):
        self.source, self.split, self.chunks = source, split, chunks

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return self.chunks[i], self.source.images(self.split, self.chunks[i])


class FileSource(Source):
    """Image-file datasets: index.json (files, labels) and, when prepare_data wrote it, the
    pre-resized uint8 cache; otherwise each read decodes the files under the recorded root."""

    def __init__(self, folder: Path, manifest: dict, index: dict, workers: int = 0):
        labels = {s: torch.tensor(index[s]["labels"], dtype=torch.long) for s in SPLITS}
        super().__init__(manifest, labels, workers)
        self.folder, self.root = folder, Path(index["root"])
        self.files = {s: index[s]["files"] for s in SPLITS}
        self.cached = manifest["storage"] == "cache"
        self._fd: dict[str, tuple[int, int]] = {}  # split → (pid, descriptor)
        self._offset: dict[str, int] = {}  # split → where the pixels start in its .npy
        if self.cached:
            for split in SPLITS:
                self._check_cache(split)

    def _check_cache(self, split: str) -> None:
        """Header and size of a split's cache match the index (the full checksum is `teddy verify`'s:
        reading 100+ GB at every job start would cost more than the job)."""
        path = self.folder / CACHE_NPY[split]
        try:
            shape, dtype, offset = npy_header(path)
            size = path.stat().st_size
        except (OSError, ValueError) as err:
            raise artifacts.fail(path, f"is not a readable uint8 cache ({err})") from err
        want = (self.count(split), *self.shape)
        if tuple(shape) != want or dtype != np.uint8 or size != offset + int(np.prod(want)):
            have = f"holds {tuple(shape)} {dtype} in {size} bytes"
            raise artifacts.fail(path, f"{have}; the index wants {want} uint8")
        self._offset[split] = offset

    def _handle(self, split: str) -> int:
        pid, fd = self._fd.get(split, (None, None))
        if pid != os.getpid():  # each loader worker opens its own descriptor
            fd = os.open(self.folder / CACHE_NPY[split], os.O_RDONLY)
            self._fd[split] = (os.getpid(), fd)
        return fd

    def images(self, split: str, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        out = torch.empty((len(idx), *self.shape), dtype=torch.uint8)
        if self.cached:
            fd, offset = self._handle(split), self._offset[split]
            per = out[0].numel() if len(idx) else 0
            view = out.view(len(idx), -1).numpy()
            for row in torch.argsort(idx).tolist():  # ascending file offsets
                got = os.preadv(fd, [view[row]], offset + int(idx[row]) * per)
                if got != per:
                    raise artifacts.fail(self.folder / CACHE_NPY[split], "is shorter than its index says")
            return out
        from teddy.data.decode import BadImage, decode

        channels, size, _ = self.shape
        for row, i in enumerate(idx.tolist()):
            path = self.root / self.files[split][i]
            try:
                out[row] = decode(path, channels, size)
            except BadImage as err:
                raise ArtifactError(
                    f"{path}: {err}; it was readable when prepare_data indexed it: the dataset changed, "
                    "rerun prepare_data (its problems then go by prepare_data.bad_files)"
                ) from err
        return out

    def _read_ahead(self, split, chunks, workers):
        if workers <= 0 or len(chunks) <= 1:
            yield from super()._read_ahead(split, chunks, workers)
            return
        loader = torch.utils.data.DataLoader(
            _Chunks(self, split, chunks), batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=4
        )
        yield from loader


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a .npy file, from its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        return shape, dtype, f.tell()


def workers_of(setting: int | None) -> int:
    """Loader processes for image files (config key prepare_data.workers): null = half the CPU
    cores, at most 8; 0 = read in the calling process."""
    return min(8, max(1, (os.cpu_count() or 2) // 2)) if setting is None else int(setting)


def open_source(data_dir: str | Path, workers: int | None = None) -> Source:
    """prepare_data's output folder as a :class:`Source`, checked against its manifest."""
    data_dir = Path(data_dir)
    manifest = read_json(data_dir / artifacts.DATA_MANIFEST)
    if manifest.get("storage", "memory") == "memory":
        return ArraySource(manifest, artifacts.load_cache(data_dir))
    index = artifacts.load_index(data_dir, manifest)
    root = Path(index["root"])
    if manifest["storage"] == "files" and not root.is_dir():
        raise ArtifactError(
            f"{root}: the dataset's image folder (recorded by prepare_data in {data_dir / INDEX}) is gone; "
            "mount it there again, or rerun prepare_data with prepare_data.root set to where it is now"
        )
    return FileSource(data_dir, manifest, index, workers_of(workers))
