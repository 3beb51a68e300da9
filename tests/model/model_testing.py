"""Helpers of the model tests: tiny configs and synthetic images (imported by the test modules;
a name of its own, as ``conftest`` is ambiguous between test folders)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from defectnet.data.transforms import PAD_VALUE
from defectnet.model import ModelConfig
from defectnet.structures import Target

H, W = 128, 192


def tiny_config(**changes: object) -> ModelConfig:
    """ResNet-18, narrow FPN and box head: builds in a fraction of a second."""
    base = ModelConfig(num_classes=2, backbone="resnet18", fpn_channels=32, representation_size=64)
    return base.replace(**changes)


def noise_image(seed: int, h: int = H, w: int = W, boxes: Sequence[tuple[int, int, int, int]] = ()) -> Tensor:
    """float32 ``[3, h, w]`` grey noise (0..255) with bright rectangles at ``boxes`` (xyxy)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, h, w, generator=g) * 60 + 70
    for x1, y1, x2, y2 in boxes:
        img[:, y1:y2, x1:x2] = 235.0
    return img


def on_canvas(images: list[Tensor], h: int = H, w: int = W) -> Tensor:
    """Place ``[3, h_i, w_i]`` images top-left on ``[B, 3, h, w]`` canvases of the pad colour."""
    out = torch.tensor(PAD_VALUE, dtype=torch.float32).view(1, 3, 1, 1).repeat(len(images), 1, h, w)
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]] = im
    return out


def target(boxes: list[tuple[int, int, int, int]], labels: list[int] | None = None, image_id: int = 0) -> Target:
    return Target(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels if labels is not None else [1] * len(boxes), dtype=torch.int64),
        image_id=image_id,
    )
