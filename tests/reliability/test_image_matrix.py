"""Image files are decoded as a viewer shows them, or refused by name (issue 36, 7): every bit depth,
colour mode, animation and EXIF orientation in the matrix below against Pillow's own reading; and a
folder tree with symbolic links (to files, to folders, in loops, across splits) lists every file
once, never in both train and val."""

import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from teddy.data import layouts
from teddy.data.decode import BadImage, decode

RNG = np.random.default_rng(0)
RGB = (RNG.random((12, 16, 3)) * 255).astype(np.uint8)
GREY16 = (RNG.random((12, 16)) * 65535).astype(np.uint16)


def with_exif(path, orientation):
    img = Image.fromarray(RGB)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=100)


def animated(path):
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


MATRIX = {
    "rgb.png": lambda p: Image.fromarray(RGB).save(p),
    "grey8.png": lambda p: Image.fromarray(RGB).convert("L").save(p),
    "grey16.png": lambda p: Image.fromarray(GREY16).save(p),
    "grey16.tiff": lambda p: Image.fromarray(GREY16).save(p),
    "bilevel.png": lambda p: Image.fromarray(RGB).convert("1").save(p),
    "palette.png": lambda p: Image.fromarray(RGB).convert("P").save(p),
    "grey_alpha.png": lambda p: Image.fromarray(RGB).convert("LA").save(p),
    "rgba.png": lambda p: Image.fromarray(RGB).convert("RGBA").save(p),
    "cmyk.jpg": lambda p: Image.fromarray(RGB).convert("CMYK").save(p),
    "rgb.bmp": lambda p: Image.fromarray(RGB).save(p),
    "rgb.tiff": lambda p: Image.fromarray(RGB).save(p),
    "rgb.ppm": lambda p: Image.fromarray(RGB).save(p),
    "animated.gif": animated,
    "animated.webp": animated,
    "exif3.jpg": lambda p: with_exif(p, 3),
    "exif6.jpg": lambda p: with_exif(p, 6),
    "exif8.jpg": lambda p: with_exif(p, 8),
}


def viewer(path, channels: int) -> np.ndarray:
    """What a viewer shows: Pillow's first frame, EXIF-oriented, 16 bits scaled to 8."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):
            img = Image.fromarray((np.asarray(img).astype(float) / 257).round().astype(np.uint8))
        return np.asarray(img.convert("RGB" if channels == 3 else "L")).reshape(*img.size[::-1], channels)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_every_format_decodes_as_a_viewer_shows_it(tmp_path, name, channels):
    path = tmp_path / name
    MATRIX[name](path)
    got = decode(path, channels, None)
    want = viewer(path, channels)
    assert got.dtype.is_floating_point is False and str(got.dtype) == "torch.uint8"
    assert tuple(got.shape) == (channels, *want.shape[:2]), (name, tuple(got.shape))
    # libjpeg's grey (the Y plane) and Pillow's (from RGB) differ by a few levels; a wrong reading
    # (unrotated, clipped 16 bits, another frame) is off by far more
    assert np.abs(got.permute(1, 2, 0).numpy().astype(int) - want.astype(int)).max() <= 8, name


def test_float_pixels_are_refused_by_name(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(RNG.random((8, 8)).astype(np.float32)).save(path)
    with pytest.raises(BadImage, match="float"):
        decode(path, 3, None)


def tree(root):
    """train/a, train/b, val/a, val/b with two images each."""
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(RGB).save(folder / f"{split}_{cls}_{i}.png")
    return root


def listing(root):
    return layouts.list_imagefolder({"root": str(root)})


def test_a_link_loop_lists_each_file_once(tmp_path):
    root = tree(tmp_path / "ds")
    os.symlink(root / "train" / "a", root / "train" / "a" / "again")  # a loop
    found = listing(root)
    assert sorted(p for p, _ in found.train) == sorted(
        f"train/{c}/train_{c}_{i}.png" for c in "ab" for i in range(2)
    )


def test_a_file_linked_into_train_from_val_is_never_in_both(tmp_path):
    root = tree(tmp_path / "ds")
    os.symlink(root / "val" / "a" / "val_a_0.png", root / "train" / "a" / "leaked.png")
    os.symlink(root / "val" / "b", root / "train" / "b" / "leaked_folder")
    found = listing(root)
    real = lambda entries: {os.path.realpath(root / p) for p, _ in entries}  # noqa: E731
    assert not real(found.train) & real(found.val)
    flagged = {p for p, _ in found.problems}
    assert "train/a/leaked.png" in flagged and any("leaked_folder" in p for p in flagged)
    assert all("listed twice" in why for _, why in found.problems)


def test_a_file_linked_into_two_classes_is_listed_once(tmp_path):
    root = tree(tmp_path / "ds")
    os.symlink(root / "train" / "a" / "train_a_0.png", root / "train" / "b" / "also_b.png")
    found = listing(root)
    assert len(found.train) == 4 and [p for p, _ in found.problems] == ["train/b/also_b.png"]
