"""Decode one image file into a uint8 (C, S, S) tensor, the way every stage sees it.

torchvision.io's decoders (libjpeg-turbo, libpng, libwebp, giflib; benchmarks/data.py chose them
over PIL) handle JPEG incl. CMYK, PNG with alpha or palette, GIF and WebP and convert grey/RGBA/CMYK
to the channels asked for; formats they do not read (BMP, TIFF, PNM) go through Pillow. Decoded as
a viewer shows them: EXIF orientation applied, the first frame of an animation, 16-bit images
scaled to 8 bits (not clipped). A file neither can read fully (empty, truncated, not an image) or
whose pixels have no defined 8-bit reading (32-bit float) raises :class:`BadImage` with the reason.
Resizing: shorter side to S (bilinear, antialiased, as prepare_data resizes array datasets), then
the centre S×S square.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class BadImage(ValueError):
    """A file that cannot be decoded into an image; the message is the reason."""


def resize_uint8(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size): shorter side to ``size`` (bilinear with
    antialiasing), then the centre crop; square inputs are simply resized; None keeps them."""
    h, w = x.shape[-2:]
    if size is None or (h == w == size):
        return x
    scale = size / min(h, w)
    th, tw = max(size, round(h * scale)), max(size, round(w * scale))
    out = F.interpolate(x.float(), size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (th - size) // 2, (tw - size) // 2
    return out[..., top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def _torchvision(data: bytes, channels: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    with warnings.catch_warnings():
        # torchvision 0.29 announces the move of its decoders to TorchCodec; the pinned version has them
        warnings.simplefilter("ignore", DeprecationWarning)
        img = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode, apply_exif_orientation=True
        )
    if img.ndim == 4:  # an animated GIF/WebP: its frames; the first is what a viewer shows
        img = img[0]
    if img.shape[0] == 3 and channels == 1:  # the GIF decoder ignores the mode: ITU-R 601 luma, as Pillow
        weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(3, 1, 1)
        img = ((img.int() * weights).sum(0, keepdim=True) + 500).div(1000, rounding_mode="floor").byte()

    if img.dtype == torch.uint16:  # 16-bit PNG: scaled to 8 bits, 65535 → 255 (a cast would clip)
        img = (img.float() / 257).round().to(torch.uint8)
    return img


def _pillow(path: Path, channels: int) -> torch.Tensor:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()  # reads every byte (the first frame): truncated files raise here
        img = ImageOps.exif_transpose(img)
        if img.mode == "F":
            raise BadImage("32-bit float pixels have no defined 8-bit reading: convert it to 8 or 16 bits")
        if img.mode.startswith("I"):  # 16/32-bit integer grey: scaled, as Pillow's convert would clip
            wide = np.asarray(img).astype(np.float64)
            bits = 16 if img.mode.startswith("I;16") or wide.max() <= 65535 else 32
            img = Image.fromarray((wide * 255 / (2**bits - 1)).round().clip(0, 255).astype(np.uint8))
        arr = np.asarray(img.convert("RGB" if channels == 3 else "L"))
    return torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], channels).permute(2, 0, 1)


def decode(path: str | Path, channels: int, size: int | None) -> torch.Tensor:
    """The image at ``path`` as uint8 (channels, size, size); :class:`BadImage` if it is not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadImage(f"cannot be read ({err.strerror or err})") from err
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        img = _torchvision(data, channels)
    except RuntimeError:
        try:
            img = _pillow(path, channels)
        except Exception as second:  # noqa: BLE001 - Pillow raises many types for bad files
            if "cannot identify image file" in str(second):
                raise BadImage("not an image (neither torchvision nor Pillow knows its format)") from second
            raise BadImage(f"truncated or corrupt image ({str(second).split(chr(10))[0]})") from second
    if img.shape[-1] < 1 or img.shape[-2] < 1:
        raise BadImage(f"decodes to an empty image {tuple(img.shape)}")
    return resize_uint8(img[None], size)[0].contiguous()
