"""Image/box transforms shared by training, evaluation and every runtime backend.

One implementation, so preprocessing cannot differ between training and deployment:
keep-ratio resize to a maximum scale (mmdetection's rule), horizontal flip (training),
and padding (with the mean colour) to a multiple of 32. Images are uint8 ``[3, H, W]`` RGB tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from defectnet.errors import ConfigError, DataError
from defectnet.structures import ImageBatch

DEFAULT_SCALE: tuple[int, int] = (1333, 800)
SIZE_DIVISOR = 32
#: Per-channel RGB mean/std of the normalisation that happens *inside* the model
#: (torchvision/mmdetection ImageNet statistics, 0..255 scale).
PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
#: Padding colour: the mean pixel, so the normalised padding is ~0 as in mmdetection,
#: which pads after normalising.
PAD_VALUE: tuple[int, int, int] = (124, 116, 104)


def rescale_size(height: int, width: int, scale: tuple[int, int] = DEFAULT_SCALE) -> tuple[int, int]:
    """Keep-ratio target size ``(h, w)``: the long side fits ``max(scale)`` and the short side
    fits ``min(scale)`` (mmdetection ``keep_ratio=True``)."""
    if height <= 0 or width <= 0:
        raise DataError(f"image has size {width}x{height}; both sides must be positive")
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize(image: Tensor, boxes: Tensor | None, scale: tuple[int, int] = DEFAULT_SCALE
           ) -> tuple[Tensor, Tensor | None, tuple[float, float]]:
    """Keep-ratio resize of a uint8 ``[3, H, W]`` image and its xyxy ``[N, 4]`` boxes.

    Returns the resized image, the scaled boxes (or None) and ``(sx, sy)``.
    """
    _, h, w = image.shape
    nh, nw = rescale_size(h, w, scale)
    out = TF.resize(image, [nh, nw], antialias=True) if (nh, nw) != (h, w) else image
    sx, sy = nw / w, nh / h
    if boxes is not None:
        boxes = boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)
    return out, boxes, (sx, sy)


def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror a ``[3, H, W]`` image and its xyxy ``[N, 4]`` boxes left-right."""
    w = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return image.flip(-1), flipped


def pad_batch(images: list[Tensor], divisor: int = SIZE_DIVISOR,
              fill: tuple[int, int, int] = PAD_VALUE) -> Tensor:
    """Stack ``[3, h_i, w_i]`` images into ``[B, 3, H, W]``, padded bottom/right with the
    ``fill`` colour, H and W the largest sizes rounded up to a multiple of ``divisor``."""
    if not images:
        raise ValueError("pad_batch needs at least one image")
    hmax = max(int(im.shape[-2]) for im in images)
    wmax = max(int(im.shape[-1]) for im in images)
    H = -(-hmax // divisor) * divisor
    W = -(-wmax // divisor) * divisor
    out = torch.tensor(fill, dtype=images[0].dtype).view(1, -1, 1, 1).repeat(len(images), 1, H, W)
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]] = im
    return out


def to_chw_uint8(array: np.ndarray) -> Tensor:
    """An ``[H, W, 3]`` uint8 RGB array as a ``[3, H, W]`` uint8 tensor."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise DataError(
            f"expected an HxWx3 uint8 RGB array, got shape {array.shape} dtype {array.dtype}; "
            "convert the image to 8-bit RGB first"
        )
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def boxes_to_original(boxes: Tensor, scale_factor: tuple[float, float],
                      original_size: tuple[int, int]) -> Tensor:
    """Map xyxy ``[N, 4]`` boxes from model-input coordinates back to the original image,
    clipped to its ``(h, w)``."""
    sx, sy = scale_factor
    out = boxes / torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    h, w = original_size
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


@dataclass(frozen=True)
class Preprocessor:
    """Turns decoded images into an :class:`ImageBatch` (the one preprocessing path).

    scale: ``(long, short)`` maximum size of the keep-ratio resize.
    size_divisor: padding multiple (32 for FPN strides up to 32; P6 pools P5).
    """

    scale: tuple[int, int] = DEFAULT_SCALE
    size_divisor: int = SIZE_DIVISOR

    def __post_init__(self) -> None:
        if len(self.scale) != 2 or min(self.scale) < self.size_divisor:
            raise ConfigError(
                f"scale must be two sides of at least {self.size_divisor} px, got {self.scale}; "
                "pass e.g. (1333, 800)"
            )
        if self.size_divisor <= 0 or self.size_divisor % 32:
            raise ConfigError(f"size_divisor must be a positive multiple of 32, got {self.size_divisor}")

    def __call__(self, images: list[Tensor]) -> ImageBatch:
        """images: uint8 ``[3, H_i, W_i]`` tensors. Returns the padded batch."""
        resized, sizes, factors, originals = [], [], [], []
        for im in images:
            originals.append((int(im.shape[-2]), int(im.shape[-1])))
            out, _, f = resize(im, None, self.scale)
            resized.append(out)
            sizes.append((int(out.shape[-2]), int(out.shape[-1])))
            factors.append(f)
        return ImageBatch(pad_batch(resized, self.size_divisor), sizes, factors, originals)
