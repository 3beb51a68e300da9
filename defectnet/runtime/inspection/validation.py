"""Input rules of the inspection runtime: anything a line may send in becomes either a uint8
``[3, H, W]`` RGB tensor or an :class:`InputError` with a reason code.

Accepted inputs and how they are read:

* a path (``str`` / ``os.PathLike``) or encoded bytes (``bytes``, ``bytearray``,
  ``memoryview``; bytes are always file *contents*, never a path): decoded by Pillow, converted by the rule of
  :mod:`defectnet.data.image_io` (8-bit RGB as is; grayscale replicated; RGBA/LA drop alpha;
  CMYK/YCbCr/palette converted; 16-bit >> 8; 32-bit float must be in 0..1 and is scaled by
  255). The size in the header is checked *before* the pixels are decoded, so a
  decompression bomb costs nothing.
* a numpy array, **HWC** (the PIL/OpenCV layout, RGB order): ``HxW``, ``HxWx1``, ``HxWx3``,
  ``HxWx4``; dtype uint8, uint16 (>> 8) or float16/32/64 in 0..1 (scaled by 255 -- the same
  rule as float image files, :func:`defectnet.data.image_io.unit_float_to_uint8`). One
  channel is replicated, a 4th channel (alpha) is dropped.
* a torch tensor, **CHW** (the torch layout :class:`~defectnet.runtime.pipeline.Pipeline`
  takes): ``[H, W]`` or ``[C, H, W]`` with C in 1, 3, 4; the same dtypes as numpy.
* a ``PIL.Image.Image``: converted by the image_io rule.

Rejected (reason code in brackets): a missing file [not_found]; a folder, unreadable or
permission-denied file [unreadable]; a 0-byte file or empty bytes [empty]; bytes or a file
that is not an image Pillow reads, or an image mode outside the rule [unsupported_format];
a corrupt or truncated image [decode_error]; any other Python type [unsupported_input];
arrays of another rank [bad_shape], channel count [bad_channels] or dtype -- bool, signed
or 32/64-bit integers, complex [bad_dtype]; a zero-sized image [empty]; a side shorter than
``min_side`` [too_small]; more than ``max_pixels`` pixels or a side above ``max_side``
[too_large]; a long/short side ratio above ``max_aspect_ratio`` [bad_aspect_ratio]; NaN or
inf [non_finite]; float values below 0 or above 1 [out_of_range] (a 0..255 float image is
refused, not guessed: divide it by 255 or send uint8). Float image files, arrays and
tensors follow the same 0..1 rule.

Reason codes for failures after validation: timeout (the frame's deadline passed before the
gate under the ``skip`` deadline policy, or before a service answered), backend_error (the
backend raised on the frame), internal_error (a bug in the runtime; please report it),
overloaded (an inspection service refused the frame because its queues were full: send it
again later), unavailable (an inspection service could not be reached, or a part of it was
down, also after retries).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from defectnet.data.image_io import PixelValueError, pil_to_rgb_array, unit_float_to_uint8
from defectnet.errors import ConfigError, DataError


class Reason(StrEnum):
    """Reason codes of error records (stable strings: dashboards and tests key on them)."""

    NOT_FOUND = "not_found"
    UNREADABLE = "unreadable"
    EMPTY = "empty"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECODE_ERROR = "decode_error"
    UNSUPPORTED_INPUT = "unsupported_input"
    BAD_SHAPE = "bad_shape"
    BAD_CHANNELS = "bad_channels"
    BAD_DTYPE = "bad_dtype"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    TIMEOUT = "timeout"
    BACKEND_ERROR = "backend_error"
    INTERNAL_ERROR = "internal_error"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"


class InputError(DataError):
    """An input the runtime cannot inspect; ``reason`` is a :class:`Reason` code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class InputLimits:
    """Size rules. max_pixels: H*W above it is rejected (default 50 MP: a 4096x3000 bottle
    image is 12.3 MP); max_side: longest side; min_side: shortest side (the backbone needs
    a few pixels); max_aspect_ratio: long/short side (fabric is 2.4:1)."""

    max_pixels: int = 50_000_000
    max_side: int = 32768
    min_side: int = 8
    max_aspect_ratio: float = 20.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_side < 1 or self.min_side < 1 or not self.max_aspect_ratio >= 1:
            raise ConfigError(f"input limits must be positive (max_aspect_ratio >= 1), got {self}")

    def check(self, height: int, width: int, source: str) -> None:
        """Raise :class:`InputError` when an ``height x width`` image breaks a size rule."""
        if height <= 0 or width <= 0:
            raise InputError(Reason.EMPTY, f"{source}: image is {width}x{height} pixels; it must be non-empty")
        if min(height, width) < self.min_side:
            raise InputError(Reason.TOO_SMALL, f"{source}: image is {width}x{height}; the shortest side must be "
                                               f">= {self.min_side} px (send the full frame, not a crop)")
        if height * width > self.max_pixels or max(height, width) > self.max_side:
            raise InputError(Reason.TOO_LARGE, f"{source}: image is {width}x{height} ({height * width:,} pixels); "
                                               f"the limit is {self.max_pixels:,} pixels and {self.max_side} px per "
                                               "side -- downscale it or raise InputLimits.max_pixels")
        ratio = max(height, width) / min(height, width)
        if ratio > self.max_aspect_ratio:
            raise InputError(Reason.BAD_ASPECT_RATIO, f"{source}: image is {width}x{height} (aspect ratio "
                                                      f"{ratio:.1f}); at most {self.max_aspect_ratio:g} is accepted "
                                                      "-- is it a line-scan strip that should be tiled first?")


def describe(source: Any) -> str:
    """A short, log-safe description of an input (a path, or type + shape + dtype)."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        return path if isinstance(path, str) else repr(path)
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<ndarray {'x'.join(map(str, source.shape))} {source.dtype}>"
    if isinstance(source, Tensor):
        return f"<tensor {'x'.join(map(str, source.shape))} {str(source.dtype).removeprefix('torch.')}>"
    if isinstance(source, Image.Image):
        return f"<PIL {source.width}x{source.height} {source.mode}>"
    return f"<{type(source).__name__}>"


def to_image(source: Any, limits: InputLimits = InputLimits(), name: str | None = None) -> Tensor:
    """Any accepted input (see the module docstring) -> a new uint8 ``[3, H, W]`` RGB tensor
    (never a view of the caller's array or tensor, so the caller may reuse its buffer).

    Raises :class:`InputError` (with its reason code) for everything else.
    """
    label = name or describe(source)
    if isinstance(source, Tensor):
        return _from_tensor(source, limits, label)
    if isinstance(source, np.ndarray):
        return _chw(_from_hwc_array(source, limits, label))
    if isinstance(source, str | os.PathLike):
        return _chw(_from_file(Path(os.fspath(source)), limits, label))  # type: ignore[arg-type]
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise InputError(Reason.EMPTY, f"{label}: no bytes to decode; send the encoded file's contents")
        return _chw(_decode(io.BytesIO(bytes(source)), limits, label))
    if isinstance(source, Image.Image):
        return _chw(_from_pil(source, limits, label))
    raise InputError(Reason.UNSUPPORTED_INPUT, f"{label}: cannot inspect a {type(source).__name__}; send a file "
                                               "path, encoded bytes, a numpy HxWxC array or a torch CxHxW tensor")


# ----------------------------------------------------------------------------- files and bytes
def read_input_file(path: str | os.PathLike[str], name: str | None = None) -> bytes:
    """The contents of an input file, by the file rules of :func:`to_image` (not_found,
    unreadable, a folder, empty), without decoding it: for a client that sends the encoded
    bytes to an inspection service, which applies the rest of the rule."""
    label = name or describe(path)
    file = Path(os.fspath(path))
    _check_file(file, label)
    try:
        return file.read_bytes()
    except PermissionError:
        raise InputError(Reason.UNREADABLE, f"{label}: permission denied; make it readable by this user") from None
    except OSError as e:
        raise InputError(Reason.UNREADABLE, f"{label}: cannot read the file ({e.strerror or e})") from None


def _check_file(path: Path, label: str) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(Reason.NOT_FOUND, f"{label}: file does not exist; check the path") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise InputError(Reason.UNREADABLE, f"{label}: cannot read the file "
                                            f"({getattr(e, 'strerror', None) or e})") from None
    if path.is_dir():
        raise InputError(Reason.UNREADABLE, f"{label}: is a folder, not an image file")
    if size == 0:
        raise InputError(Reason.EMPTY, f"{label}: file is empty (0 bytes); was it still being written?")


def _from_file(path: Path, limits: InputLimits, label: str) -> np.ndarray:
    _check_file(path, label)
    try:
        with open(path, "rb") as f:
            return _decode(f, limits, label)
    except PermissionError:
        raise InputError(Reason.UNREADABLE, f"{label}: permission denied; make it readable by this user") from None
    except InputError:
        raise
    except OSError as e:
        raise InputError(Reason.UNREADABLE, f"{label}: cannot read the file ({e.strerror or e})") from None


def _decode(fp: Any, limits: InputLimits, label: str) -> np.ndarray:
    try:
        img = Image.open(fp)
    except UnidentifiedImageError:
        raise InputError(Reason.UNSUPPORTED_FORMAT, f"{label}: not an image format Pillow reads (or its header is "
                                                    "corrupt); send PNG, JPEG, BMP or TIFF") from None
    except Image.DecompressionBombError as e:
        raise InputError(Reason.TOO_LARGE, f"{label}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(Reason.DECODE_ERROR, f"{label}: cannot decode ({e}); the file is corrupt") from None
    with img:
        return _from_pil(img, limits, label)


def _from_pil(img: Image.Image, limits: InputLimits, label: str) -> np.ndarray:
    limits.check(img.height, img.width, label)  # header size: before any pixel is decoded
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise InputError(Reason.TOO_LARGE, f"{label}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(Reason.DECODE_ERROR, f"{label}: cannot decode ({e}); the file is corrupt or "
                                              "truncated") from None
    try:
        return pil_to_rgb_array(img, label)
    except PixelValueError as e:
        raise InputError(Reason(e.kind), str(e)) from None
    except DataError as e:
        raise InputError(Reason.UNSUPPORTED_FORMAT, str(e)) from None


# ----------------------------------------------------------------------------- arrays
_FLOATS = (np.float16, np.float32, np.float64)


def _from_hwc_array(a: np.ndarray, limits: InputLimits, label: str) -> np.ndarray:
    """HxW / HxWxC array of an accepted dtype -> HxWx3 uint8."""
    if a.dtype not in (np.uint8, np.uint16, *_FLOATS):
        raise InputError(Reason.BAD_DTYPE, f"{label}: dtype {a.dtype} is not an image bit depth; send uint8, "
                                           "uint16 or float in 0..1, e.g. array.astype(np.uint8)")
    if a.ndim not in (2, 3):
        raise InputError(Reason.BAD_SHAPE, f"{label}: a {a.ndim}-D array; an image is HxW or HxWxC (send a "
                                           "batch one frame at a time)")
    channels = 1 if a.ndim == 2 else int(a.shape[2])
    if channels not in (1, 3, 4):
        hint = " (numpy arrays are HxWxC; a CxHxW image should be a torch tensor)" if a.shape[0] in (1, 3, 4) else ""
        raise InputError(Reason.BAD_CHANNELS, f"{label}: {channels} channels; an image has 1 (gray), 3 (RGB) "
                                              f"or 4 (RGBA){hint}")
    limits.check(int(a.shape[0]), int(a.shape[1]), label)
    if a.dtype == np.uint16:
        a8 = (a >> 8).astype(np.uint8)  # image_io's 16-bit rule
    elif a.dtype in _FLOATS:
        try:
            a8 = unit_float_to_uint8(a, label)  # image_io's float rule: 0..1
        except PixelValueError as e:
            raise InputError(Reason(e.kind), str(e)) from None
    else:
        a8 = a
    if a8.ndim == 2:
        a8 = a8[:, :, None]
    if a8.shape[2] == 1:
        return np.repeat(a8, 3, axis=2)
    return a8[:, :, :3]


def _from_tensor(t: Tensor, limits: InputLimits, label: str) -> Tensor:
    if t.dtype == torch.uint8 and t.ndim == 3 and t.shape[0] == 3:  # the fast path: no conversion
        limits.check(int(t.shape[1]), int(t.shape[2]), label)
        return t.detach().to("cpu", copy=True).contiguous()  # a copy: the caller may reuse its buffer
    if t.is_complex() or t.dtype == torch.bool or (not t.is_floating_point() and t.dtype != torch.uint8
                                                   and str(t.dtype) != "torch.uint16"):
        raise InputError(Reason.BAD_DTYPE, f"{label}: dtype {t.dtype} is not an image bit depth; send uint8, "
                                           "uint16 or float in 0..1")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise InputError(Reason.BAD_SHAPE, f"{label}: a {t.ndim}-D tensor; an image tensor is CxHxW or HxW "
                                           "(send a batch one frame at a time)")
    if t.shape[0] not in (1, 3, 4):
        hint = " (torch tensors are CxHxW; an HxWxC image should be a numpy array)" if t.shape[-1] in (1, 3, 4) else ""
        raise InputError(Reason.BAD_CHANNELS, f"{label}: {t.shape[0]} channels; an image has 1 (gray), 3 (RGB) "
                                              f"or 4 (RGBA){hint}")
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if str(t.dtype) == "torch.uint16":
        t = t.to(torch.int32)  # numpy has no view of torch.uint16 in every version
        array = t.permute(1, 2, 0).numpy().astype(np.uint16)
    else:
        array = t.permute(1, 2, 0).numpy()
    return _chw(_from_hwc_array(array, limits, label))


def _chw(array: np.ndarray) -> Tensor:
    """HxWx3 -> a new ``[3, H, W]`` tensor (always a copy: camera SDKs reuse their buffers)."""
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), order="C", copy=True))


__all__ = ["InputError", "InputLimits", "Reason", "describe", "read_input_file", "to_image"]
