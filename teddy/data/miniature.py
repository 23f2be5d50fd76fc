"""Miniatures of the image-file layouts, written from real images on this machine.

Nothing can be downloaded, so tests, benchmarks and the README's walk-through build small copies of
each layout users bring (imagefolder, tiny_imagenet, imagenet with class-folder or flat val) from
Fashion-MNIST (Debian package) when present, else scikit-learn's digits: each class gets its own
colour tint, images are upscaled to ``size`` and written as JPEG (PNG for imagefolder), with a few
of the files real datasets contain (grey, RGBA and CMYK images) and, with ``bad=True``, files no
decoder can read (empty, truncated, not an image).

    teddy make-miniature --layout tiny_imagenet --out /tmp/tiny --classes 10 --train 40 --val 10
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from teddy.data import datasets

LAYOUTS = ("imagefolder", "tiny_imagenet", "imagenet")  # the layouts make() writes

# readable names kept exactly: spaces, punctuation and non-ASCII on purpose
NAMES = [
    "T-shirt, top",
    "trouser",
    "pull-over",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
    "Ärmel, überzieher",
    "café au lait",
]
BAD = {"empty.JPEG": b"", "notes.JPEG": b"this is a text file, not an image\n"}


def source_images(classes: int, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 grey images (n, H, W) and labels: Fashion-MNIST if installed, else digits."""

    prep = {"fashion_mnist_dir": "/usr/share/datasets/fashion-mnist", "val_fraction": 0.2, "split_seed": 0}
    try:
        datasets.get("fashion_mnist").check_available(prep)
        split = datasets.get("fashion_mnist").reader(prep)
    except datasets.DatasetError:
        split = datasets.get("digits").reader(prep)
    x, y = split.train_x[:, 0], split.train_y
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c % 10), per_class, replace=False) for c in range(classes)]
    idx = np.concatenate(picked)
    return x[idx], np.repeat(np.arange(classes), per_class)


def colour(grey: np.ndarray, label: int, size: int, rng) -> np.ndarray:
    """An RGB image (size, size, 3) from a grey one: per-class tint, a little noise."""
    from PIL import Image

    img = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    tint = np.array([(label * 37) % 100, (label * 61) % 100, (label * 83) % 100], np.float32) / 100
    rgb = img[..., None] * (0.5 + 0.5 * tint) + 0.15 * (1 - img[..., None]) * tint[::-1]
    rgb += rng.normal(0, 0.02, rgb.shape)
    return (rgb.clip(0, 1) * 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    from PIL import Image

    img = Image.fromarray(rgb)
    img = {"RGB": img, "L": img.convert("L"), "RGBA": img.convert("RGBA"), "CMYK": img.convert("CMYK")}[mode]
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _mode(i: int) -> str:
    """Every 7th file grey, every 11th CMYK (JPEG) or RGBA (PNG): the conversions real data needs."""
    return "L" if i % 7 == 3 else "CMYK" if i % 11 == 5 else "RGB"


def make(
    layout: str,
    out: str | Path,
    classes: int = 10,
    train: int = 40,
    val: int = 10,
    size: int = 64,
    bad: bool = False,
    val_style: str = "csv",
    seed: int = 0,
) -> Path:
    """Write a miniature of ``layout`` to ``out``; imagenet's flat val uses ``val_style``
    ('folders', 'csv' = LOC_val_solution.csv, 'devkit' = ground truth + meta.mat)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: the miniature is written into an empty or new folder")
    rng = np.random.default_rng(seed)
    grey, labels = source_images(classes, train + val, seed)
    wnids = [f"n{1440764 + 1000 * c:08d}" for c in range(classes)]
    names = [NAMES[c % len(NAMES)] + ("" if c < len(NAMES) else f" {c}") for c in range(classes)]
    ext, fmt = (".png", "PNG") if layout == "imagefolder" else (".JPEG", "JPEG")
    val_rows = []
    for c in range(classes):
        own = np.flatnonzero(labels == c)
        for i, j in enumerate(own):
            is_val = i >= train
            k = i - train if is_val else i
            w, h = (size, size) if layout != "imagenet" else (size + 16 * (k % 3), size + 8 * (k % 2))
            rgb = colour(grey[j], c, max(w, h), rng)[:h, :w]
            mode = _mode(i)
            if mode == "CMYK" and fmt == "PNG":
                mode = "RGBA"
            data = encode(rgb, fmt, mode)
            if layout == "imagefolder":
                path = out / ("val" if is_val else "train") / names[c] / f"{k:04d}{ext}"
            elif layout == "tiny_imagenet":
                if is_val:
                    fname = f"val_{c * val + k}{ext}"
                    path = out / "val" / "images" / fname
                    val_rows.append(f"{fname}\t{wnids[c]}\t0\t0\t{size - 1}\t{size - 1}")
                else:
                    path = out / "train" / wnids[c] / "images" / f"{wnids[c]}_{k}{ext}"
            else:
                if is_val and val_style != "folders":
                    fname = f"ILSVRC2012_val_{c * val + k + 1:08d}"
                    path = out / "val" / f"{fname}{ext}"
                    val_rows.append((fname, c))
                else:
                    split = "val" if is_val else "train"
                    path = out / split / wnids[c] / f"{wnids[c]}_{k}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    if layout == "tiny_imagenet":
        (out / "wnids.txt").write_text("\n".join(wnids) + "\n")
        (out / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in zip(wnids, names, strict=True)))
        (out / "val" / "val_annotations.txt").write_text("\n".join(val_rows) + "\n")
        (out / "train" / wnids[0] / f"{wnids[0]}_boxes.txt").write_text("boxes are not images\n")
    elif layout == "imagenet":
        (out / "LOC_synset_mapping.txt").write_text(
            "".join(f"{w} {n}\n" for w, n in zip(wnids, names, strict=True))
        )
        if val_style == "csv":
            rows = "".join(f"{f},{wnids[c]} 0 0 10 10\n" for f, c in val_rows)
            (out / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + rows)
        elif val_style == "devkit":
            write_devkit(out, wnids, names, [c for _, c in sorted(val_rows)])
    if bad:
        first = {
            "imagefolder": out / "train" / names[0],
            "tiny_imagenet": out / "train" / wnids[0] / "images",
            "imagenet": out / "train" / wnids[0],
        }[layout]
        good = sorted(first.glob(f"*{ext}"))[0].read_bytes()
        for name, data in BAD.items():
            (first / name.replace(".JPEG", ext)).write_bytes(data)
        (first / f"truncated{ext}").write_bytes(good[: len(good) // 2])
    return out


def write_devkit(out: Path, wnids: list[str], names: list[str], val_classes: list[int]) -> None:
    """The ILSVRC2012 devkit's files for a flat val: data/meta.mat (ILSVRC2012_ID → wnid; ids in
    another order than the sorted wnids, as in the real devkit) and the ground-truth ids."""
    from scipy.io import savemat

    data = out / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    order = list(reversed(range(len(wnids))))  # ILSVRC2012_ID 1 is the last wnid
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")]
    synsets = np.array([(i + 1, wnids[c], names[c]) for i, c in enumerate(order)], dtype=dtype)
    savemat(data / "meta.mat", {"synsets": synsets})
    id_of = {c: i + 1 for i, c in enumerate(order)}
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{id_of[c]}\n" for c in val_classes))
