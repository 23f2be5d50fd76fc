"""Decode one image file into a uint8 (C, S, S) tensor, the way every stage sees it.

torchvision.io's decoders (libjpeg-turbo, libpng, libwebp, giflib; benchmarks/data.py chose them
over PIL) handle JPEG incl. CMYK, PNG with alpha or palette, GIF and WebP and convert grey/RGBA/CMYK
to the channels asked for; formats they do not read (BMP, TIFF, PNM) go through Pillow. A file
neither can read fully (empty, truncated, not an image) raises :class:`BadImage` with the reason.
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
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)


def _pillow(path: Path, channels: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # reads every byte: truncated files raise here
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
