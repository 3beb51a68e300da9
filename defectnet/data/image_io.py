"""Decoding image files into uint8 RGB tensors, with one documented conversion rule.

Rule: 8-bit RGB is used as is; grayscale (L, LA, P, 1) is replicated to RGB; RGBA drops
alpha; CMYK/YCbCr are converted by Pillow; 16-bit and 32-bit integer grayscale (I;16, I) are
scaled to 8 bits by their bit depth (16-bit: >> 8); 32-bit float grayscale (F) must lie in
0..1 and is scaled by 255 (:func:`unit_float_to_uint8`, the rule for float arrays too): NaN,
inf or a value outside 0..1 raises :class:`PixelValueError`. Anything Pillow cannot decode
raises :class:`DataError` naming the file.
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


class PixelValueError(DataError):
    """Float pixels that break the 0..1 rule. kind: ``non_finite`` (NaN or inf) or
    ``out_of_range`` (a value below 0 or above 1)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def unit_float_to_uint8(values: np.ndarray, source: str = "image") -> np.ndarray:
    """Float pixels in 0..1 (any shape) -> uint8 of the same shape (``round(x * 255)``).

    Raises :class:`PixelValueError` for NaN/inf or a value outside 0..1: a float image on
    another scale (0..255, 0..65535, signed) is ambiguous, so it is refused rather than guessed.
    """
    f = np.asarray(values, dtype=np.float32)
    if not np.isfinite(f).all():
        raise PixelValueError(f"{source}: float image contains NaN or inf; fix the source", "non_finite")
    lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise PixelValueError(f"{source}: float values span {lo:g}..{hi:g}; a float image must be in 0..1 "
                              "(divide 0..255 data by 255, or send uint8)", "out_of_range")
    return (f * 255.0 + 0.5).astype(np.uint8)


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
        gray = unit_float_to_uint8(np.asarray(img, dtype=np.float32), source)
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
