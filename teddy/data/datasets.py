"""Dataset registry: where each dataset comes from; the array datasets (digits, Fashion-MNIST, CIFAR).

Import-light (numpy only at module level) so config checks can run before any work starts.
Nothing here downloads: a missing dataset is a DatasetError that says how to get it.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetError(RuntimeError):
    """A dataset cannot be read; the message names the path and how to provide it."""


@dataclass(frozen=True)
class Split:
    train_x: np.ndarray  # uint8 (N, C, H, W)
    train_y: np.ndarray  # int64 (N,)
    val_x: np.ndarray
    val_y: np.ndarray


@dataclass(frozen=True)
class DatasetSpec:
    """An array dataset (``reader`` gives uint8 arrays) or an image-file layout (``lister`` gives a
    teddy.data.layouts.Listing; classes, channels and size come from the files and the config)."""

    name: str
    classes: tuple[str, ...]
    channels: int
    native_size: int | None
    reader: Callable[[Mapping], Split] | None = None
    checker: Callable[[Mapping], None] = lambda prep: None
    train_per_class: int | None = None  # known size of the smallest class, if fixed
    lister: Callable[[Mapping], object] | None = None
    class_counts: tuple[int, ...] | None = None  # images per class before a stratified val split

    @property
    def files(self) -> bool:
        return self.lister is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_available(self, prep: Mapping) -> None:
        if self.files:
            self.listing(prep)
        else:
            self.checker(prep)

    def listing(self, prep: Mapping):
        """The layout's file listing (a directory walk, no decoding), cached per root and options."""
        key = (self.name, str(prep.get("root")), str(prep.get("val_labels")))
        if key not in _LISTINGS:
            _LISTINGS[key] = self.lister(prep)
        return _LISTINGS[key]

    def read(self, prep: Mapping) -> Split:
        self.checker(prep)
        split = subsample(self.reader(prep), prep.get("max_train_per_class"), prep["split_seed"])
        return split

    def min_train_per_class(self, prep: Mapping) -> int:
        """Training images of the smallest class, from counts or file names: no pixel is read for
        the file layouts (prepare_data may still leave out bad files, and says so)."""
        n = self.train_per_class
        if self.files:
            listing = self.listing(prep)
            counts = listing.per_class("train")
            if listing.val is None:  # the stratified val split takes its share of each class
                counts = [c - val_count(c, prep["val_fraction"]) if c else 0 for c in counts]
            n = min(counts)
        elif n is None and self.class_counts:  # counts known: the split without reading any image
            n = min(c - val_count(c, prep["val_fraction"]) for c in self.class_counts)
        elif n is None:
            n = int(np.bincount(self.reader(prep).train_y).min())
        cap = prep.get("max_train_per_class")
        return min(n, cap) if cap else n


_LISTINGS: dict[tuple, object] = {}
_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> DatasetSpec:
    if name not in _REGISTRY:
        raise DatasetError(
            f"config key run.dataset: unknown dataset {name!r}; available: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[name]


def available() -> list[str]:
    return list(_REGISTRY)


def subsample(split: Split, per_class: int | None, seed: int) -> Split:
    """Keep at most ``per_class`` training images per class, chosen with ``seed``."""
    if not per_class:
        return split
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(split.train_y == c))[:per_class] for c in np.unique(split.train_y)]
    )
    keep.sort()
    return Split(split.train_x[keep], split.train_y[keep], split.val_x, split.val_y)


def val_count(class_count: int, val_fraction: float) -> int:
    """Images of a class that the stratified split gives to val (at least one)."""
    return max(1, round(class_count * val_fraction))


def stratified_split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        val_idx.append(idx[: val_count(len(idx), val_fraction)])
    val = np.zeros(len(y), dtype=bool)
    val[np.concatenate(val_idx)] = True
    return Split(x[~val], y[~val], x[val], y[val])


# -- digits (scikit-learn, embedded) ---------------------------------------------------------


def _read_digits(prep: Mapping) -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)[:, None]  # 0..16 → 0..255
    y = digits.target.astype(np.int64)
    return stratified_split(x, y, prep["val_fraction"], prep["split_seed"])


register(
    DatasetSpec(
        name="digits",
        classes=tuple(str(i) for i in range(10)),
        channels=1,
        native_size=8,
        reader=_read_digits,
        checker=lambda prep: None,
        class_counts=(178, 182, 177, 183, 181, 182, 181, 179, 174, 180),  # scikit-learn's digits
    )
)


# -- Fashion-MNIST (Debian package dataset-fashion-mnist) ------------------------------------

_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "val_x": "t10k-images-idx3-ubyte.gz",
    "val_y": "t10k-labels-idx1-ubyte.gz",
}


def _check_fmnist(prep: Mapping) -> None:
    root = Path(prep["fashion_mnist_dir"])
    missing = [f for f in _FMNIST_FILES.values() if not (root / f).is_file()]
    if missing:
        raise DatasetError(
            f"Fashion-MNIST files {', '.join(missing)} not found in {root} "
            "(config key prepare_data.fashion_mnist_dir): install them with "
            "`sudo apt-get install dataset-fashion-mnist`, or point the key at a folder holding them"
        )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_fmnist(prep: Mapping) -> Split:
    root = Path(prep["fashion_mnist_dir"])
    arr = {k: _read_idx(root / f) for k, f in _FMNIST_FILES.items()}
    return Split(
        arr["train_x"][:, None].copy(),
        arr["train_y"].astype(np.int64),
        arr["val_x"][:, None].copy(),
        arr["val_y"].astype(np.int64),
    )


register(
    DatasetSpec(
        name="fashion_mnist",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        channels=1,
        native_size=28,
        reader=_read_fmnist,
        checker=_check_fmnist,
        train_per_class=6000,
    )
)


# -- CIFAR-10/100 (torchvision's python layout under a local root) ---------------------------


def _cifar(name: str, folder: str, train: list[str], test: str, label_key: str, n_classes: int):
    def root_of(prep: Mapping) -> Path:
        if not prep.get("root"):
            raise DatasetError(
                f"{name} is read from a local copy: set config key prepare_data.root to the folder "
                f"that holds {folder}/ (torchvision layout); nothing is downloaded"
            )
        return Path(prep["root"]) / folder

    def check(prep: Mapping) -> None:
        base = root_of(prep)
        missing = [f for f in [*train, test] if not (base / f).is_file()]
        if missing:
            raise DatasetError(
                f"{name}: {', '.join(missing)} not found in {base} (config key prepare_data.root); "
                f"unpack the python version of {name} there"
            )

    def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        return np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(d[label_key])

    def read(prep: Mapping) -> Split:
        base = root_of(prep)
        parts = [load(base / f) for f in train]
        vx, vy = load(base / test)
        tx = np.concatenate([p[0] for p in parts])
        ty = np.concatenate([p[1] for p in parts]).astype(np.int64)
        return Split(tx, ty, vx, vy.astype(np.int64))

    return DatasetSpec(
        name=name,
        classes=tuple(str(i) for i in range(n_classes)),
        channels=3,
        native_size=32,
        reader=read,
        checker=check,
        train_per_class=50000 // n_classes,
    )


register(
    _cifar(
        "cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10
    )
)
register(_cifar("cifar100", "cifar-100-python", ["train"], "test", "fine_labels", 100))
