"""Decoding image files into uint8 RGB tensors, with one documented conversion rule.

Rule: 8-bit RGB is used as is; grayscale (L, LA, P, 1) is replicated to RGB; RGBA drops
alpha; CMYK/YCbCr are converted by Pillow; 16-bit and 32-bit integer or float grayscale
(I;16, I, F) are scaled to 8 bits by their bit depth (16-bit: >> 8; 32-bit float must be in
0..1 or 0..255). Anything Pillow cannot decode raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from defectnet.data.transforms import to_chw_uint8
from defectnet.errors import DataError

_EIGHT_BIT_MODES = {"RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"}


def pil_to_rgb_array(img: Image.Image, source: str = "image") -> np.ndarray:
    """Convert a Pillow image to an ``[H, W, 3]`` uint8 RGB array by the module's rule."""
    if img.width <= 0 or img.height <= 0:
        raise DataError(f"{source}: image has size {img.width}x{img.height}; it must be non-empty")
    if img.mode in _EIGHT_BIT_MODES:
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        shift = 8 if arr.max(initial=0) <= 0xFFFF else 24
        gray = np.clip(arr >> shift, 0, 255).astype(np.uint8)
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise DataError(f"{source}: float image contains NaN or inf; fix the file")
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        gray = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
    else:
        raise DataError(f"{source}: unsupported image mode {img.mode!r}; save it as 8-bit RGB or grayscale")
    return np.repeat(gray[:, :, None], 3, axis=2)


def read_image(path: str | os.PathLike[str]) -> Tensor:
    """Decode an image file to a uint8 ``[3, H, W]`` RGB tensor.

    Raises DataError when the file is missing, unreadable or of an unsupported kind.
    """
    p = Path(path)
    try:
        with Image.open(p) as img:
            img.load()
            array = pil_to_rgb_array(img, str(p))
    except FileNotFoundError:
        raise DataError(f"image file {p} does not exist; check the path or the data folder") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {p}: {e}; the file is corrupt or not an image") from None
    return to_chw_uint8(array)
