"""Image-file datasets: the folder layouts users have, listed into (file, label) entries.

A layout only lists: which files belong to which split and class, and the classes' readable names.
Nothing here decodes an image (prepare_data does, once, and records what it found), so listing
ImageNet costs a directory walk, and a config check (IPC ≤ the smallest class) costs no more.

Layouts:
  imagefolder    root/train/<class>/**, root/val/<class>/** (no val/: a stratified split)
  tiny_imagenet  as distributed: wnids.txt, words.txt, train/<wnid>/images/*, val/images/* +
                 val/val_annotations.txt
  imagenet       train/<wnid>/*; val/<wnid>/* or a flat val/ plus a ground-truth file (the devkit's
                 ILSVRC2012_validation_ground_truth.txt with data/meta.mat, or LOC_val_solution.csv)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from teddy.data.datasets import DatasetError, DatasetSpec, register

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


@dataclass
class Listing:
    """What a layout found: class ids (folder names / WordNet ids) and readable names, and the
    (path relative to the root, label) entries of each split; ``val`` None: no official split."""

    root: Path
    class_ids: list[str]
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]] | None
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) found listing

    def __post_init__(self) -> None:
        """Each file once: a path that reaches a file already listed (a symbolic link, in another
        class or split) is a problem, never a second copy of the image — one image in train and val
        would score the test on training data. Val is listed first, so such a file stays in val."""
        first: dict[str, tuple[str, str]] = {}  # real path → (split, listed path)
        for split in ("val", "train"):
            entries = getattr(self, split)
            if entries is None:
                continue
            kept = []
            for path, label in entries:
                real = os.path.realpath(self.root / path)
                if real in first:
                    where, shown = first[real]
                    self.problems.append(
                        (path, f"the same file as {shown} ({where}): listed twice through a link")
                    )
                    continue
                first[real] = (split, path)
                kept.append((path, label))
            setattr(self, split, kept)

    def train_folder(self, c: int) -> str:
        """Where class ``c``'s training images sit (relative to the root), for messages."""
        folders = {os.path.dirname(path) for path, label in self.train if label == c}
        return os.path.commonpath(sorted(folders)) if folders else f"train/{self.class_ids[c]}"

    def per_class(self, split: str = "train") -> list[int]:
        counts = [0] * len(self.class_ids)
        for _, label in getattr(self, split) or []:
            counts[label] += 1
        return counts


def layout(name: str, native_size: int | None = None):
    """Register the decorated lister ``(prepare_data section) -> Listing`` as the image-file dataset
    ``name`` (``run.dataset: name``; the schema's enum and the dataset registry pick it up).
    ``native_size``: the side its images have (None: whatever prepare_data.image_size says)."""

    def add(lister: Callable[[Mapping], Listing]) -> Callable[[Mapping], Listing]:
        register(DatasetSpec(name=name, classes=(), channels=3, native_size=native_size, lister=lister))
        return lister

    return add


def root_of(prep: Mapping, name: str) -> Path:
    if not prep.get("root"):
        raise DatasetError(
            f"{name} is read from image files: set config key prepare_data.root to the dataset's "
            "folder (README: 'Your own data / Tiny-ImageNet / ImageNet-1K'); nothing is downloaded"
        )
    root = Path(prep["root"]).expanduser()
    if not root.is_dir():
        raise DatasetError(f"config key prepare_data.root: {root} is not a folder")
    return root


def _images(folder: Path, root: Path) -> list[str]:
    """Image files under ``folder`` (recursive, sorted), as paths relative to ``root``. Hidden
    files and files with other suffixes (annotations, boxes) are not images of the dataset."""
    found, walked = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:  # a link back to a folder already walked (a loop): its files are listed
            dirnames[:] = []
            continue
        walked.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))

        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def _class_dirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DatasetError(f"{folder} is missing: the layout needs one folder per class there")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetError(f"{folder} holds no class folders: the layout needs one folder per class")
    return names


def _entries(root: Path, split_dir: Path, ids: list[str], sub: str = "") -> list[tuple[str, int]]:
    return [(path, label) for label, cid in enumerate(ids) for path in _images(split_dir / cid / sub, root)]


def _val_from_folders(root: Path, ids: list[str]) -> list[tuple[str, int]]:
    val_ids = _class_dirs(root / "val")
    unknown = sorted(set(val_ids) - set(ids))
    if unknown:
        raise DatasetError(
            f"{root / 'val'}: class folders {unknown[:5]} have no training folder in {root / 'train'}; "
            "train/ and val/ must hold the same classes"
        )
    return _entries(root, root / "val", ids)  # a class without a val folder has no val images


@layout("imagefolder")
def list_imagefolder(prep: Mapping) -> Listing:
    root = root_of(prep, "imagefolder")
    ids = _class_dirs(root / "train")
    val = _val_from_folders(root, ids) if (root / "val").is_dir() else None
    return Listing(root, ids, list(ids), _entries(root, root / "train", ids), val)


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot be read ({err})") from err


def _names(path: Path, ids: list[str]) -> list[str]:
    """Readable names from a "wnid<TAB or space>name" file (words.txt, LOC_synset_mapping.txt),
    kept exactly; a class without a line keeps its id."""
    if not path.is_file():
        return list(ids)
    names = {}
    for line in _read_lines(path):
        wnid, _, name = line.replace("\t", " ", 1).partition(" ")
        names[wnid] = name.strip() or wnid
    return [names.get(i, i) for i in ids]


@layout("tiny_imagenet", native_size=64)
def list_tiny_imagenet(prep: Mapping) -> Listing:
    root = root_of(prep, "tiny_imagenet")
    wnids = root / "wnids.txt"
    ids = sorted(_read_lines(wnids)) if wnids.is_file() else _class_dirs(root / "train")
    missing = [i for i in ids if not (root / "train" / i / "images").is_dir()]
    if missing:
        raise DatasetError(
            f"{root / 'train'}: no images/ folder for classes {missing[:5]} (Tiny-ImageNet layout: "
            "train/<wnid>/images/*.JPEG)"
        )
    train = _entries(root, root / "train", ids, "images")
    notes = root / "val" / "val_annotations.txt"
    if not notes.is_file():
        raise DatasetError(f"{notes} is missing: Tiny-ImageNet's val labels come from it (as distributed)")
    label_of = {c: i for i, c in enumerate(ids)}
    val, problems = [], []
    for number, line in enumerate(_read_lines(notes), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise DatasetError(f"{notes}:{number}: expected '<file>\\t<wnid>\\t…' with a wnid of wnids.txt")
        rel = os.path.join("val", "images", fields[0])
        if (root / rel).is_file():
            val.append((rel, label_of[fields[1]]))
        else:
            problems.append((rel, "listed in val_annotations.txt but missing"))
    return Listing(root, ids, _names(root / "words.txt", ids), train, sorted(val), problems)


def _devkit_truth(truth: Path, files: list[str]) -> list[str]:
    """Devkit ground truth: one ILSVRC2012_ID per line for the sorted val files; ids → wnids
    through the devkit's data/meta.mat."""
    meta = truth.parent / "meta.mat"
    if not meta.is_file():
        raise DatasetError(f"{meta} is missing: the devkit's ground truth {truth.name} needs its meta.mat")
    from scipy.io import loadmat

    synsets = loadmat(meta, squeeze_me=True)["synsets"]
    wnid_of = {int(s[0]): str(s[1]) for s in synsets}
    ids = [int(line) for line in _read_lines(truth)]
    if len(ids) != len(files):
        raise DatasetError(f"{truth}: {len(ids)} labels for {len(files)} images in the flat val folder")
    return [wnid_of[i] for i in ids]


def _csv_truth(truth: Path) -> dict[str, str]:
    """LOC_val_solution.csv (ImageId,PredictionString 'wnid x y x y …') or 'file,wnid' rows."""
    with open(truth, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] and rows[0][0] == "ImageId":
        rows = rows[1:]
    return {r[0]: r[1].split()[0] for r in rows if len(r) >= 2 and r[1].strip()}


@layout("imagenet")
def list_imagenet(prep: Mapping) -> Listing:
    root = root_of(prep, "imagenet")
    ids = _class_dirs(root / "train")
    train = _entries(root, root / "train", ids)
    names = root / "LOC_synset_mapping.txt"
    classes = _names(names if names.is_file() else root / "words.txt", ids)
    val_dir = root / "val"
    if not val_dir.is_dir():
        raise DatasetError(f"{val_dir} is missing: ImageNet needs its val split (class folders or flat)")
    if any(p.is_dir() for p in val_dir.iterdir()):
        return Listing(root, ids, classes, train, _val_from_folders(root, ids))
    truth = prep.get("val_labels")
    candidates = (
        [root / truth]
        if truth
        else [
            root / "LOC_val_solution.csv",
            root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt",
        ]
    )
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise DatasetError(
            f"{val_dir} is flat and no ground truth was found ({', '.join(str(c) for c in candidates)}): "
            "set config key prepare_data.val_labels to the devkit's ILSVRC2012_validation_ground_truth.txt "
            "(with data/meta.mat beside it) or to LOC_val_solution.csv"
        )
    files = _images(val_dir, root)
    label_of = {c: i for i, c in enumerate(ids)}
    if found.suffix == ".csv":
        truth_of = _csv_truth(found)
        wnids = [truth_of.get(Path(f).stem) for f in files]
    else:
        wnids = _devkit_truth(found, files)
    val, problems = [], []
    for path, wnid in zip(files, wnids, strict=True):
        if wnid in label_of:
            val.append((path, label_of[wnid]))
        else:
            why = f"no label in {found.name}" if wnid is None else f"class {wnid} has no train folder"
            problems.append((path, why))
    return Listing(root, ids, classes, train, val, problems)
