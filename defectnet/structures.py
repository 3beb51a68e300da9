"""Small typed containers passed between data, model, evaluation and runtime.

Coordinate convention: boxes are ``xyxy`` float32 pixels. Inside the model they are in
the coordinates of the *resized* image (the model input, before padding);
:func:`defectnet.data.transforms.boxes_to_original` maps them back to the original image.
Labels are contiguous ``1..K`` (0 is background and is never a detection label).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import torch
from torch import Tensor


class Target(TypedDict):
    """Ground truth of one image (model-input coordinates).

    boxes: float32 ``[N, 4]`` xyxy; labels: int64 ``[N]`` in ``1..K``; ``N == 0`` for a
    normal (defect-free) image. image_id: the COCO image id.
    """

    boxes: Tensor
    labels: Tensor
    image_id: int


def is_defective(target: Target) -> bool:
    """An image is defective iff it has at least one defect box."""
    return int(target["boxes"].shape[0]) > 0


@dataclass
class Detections:
    """Detections of one image.

    boxes: float32 ``[N, 4]`` xyxy; scores: float32 ``[N]``; labels: int64 ``[N]`` in ``1..K``.
    p_defective: the gate's P(defective) (1.0 for models without a gate).
    ran_detector: False when the gate sent the image out after the backbone.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    p_defective: float = 1.0
    ran_detector: bool = True

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(
                "Detections need boxes [N,4], scores [N], labels [N]; got "
                f"{tuple(self.boxes.shape)}, {tuple(self.scores.shape)}, {tuple(self.labels.shape)}"
            )

    @staticmethod
    def empty(p_defective: float = 0.0, ran_detector: bool = False,
              device: torch.device | str = "cpu") -> Detections:
        """No detections (a normal image, or a gate exit)."""
        return Detections(
            boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
            scores=torch.zeros((0,), dtype=torch.float32, device=device),
            labels=torch.zeros((0,), dtype=torch.int64, device=device),
            p_defective=p_defective,
            ran_detector=ran_detector,
        )

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device),
                          self.p_defective, self.ran_detector)


@dataclass
class ImageBatch:
    """A preprocessed batch ready for the model.

    images: uint8 ``[B, 3, H, W]`` RGB, each image resized keep-ratio then padded (mean colour) at the
    bottom/right so H and W are multiples of the size divisor.
    image_sizes: ``(h, w)`` of each resized image before padding.
    scale_factors: ``(sx, sy)`` = resized / original width and height per image (equal up to
    rounding: the resize keeps the aspect ratio).
    original_sizes: ``(h, w)`` of each original image.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    scale_factors: list[tuple[float, float]]
    original_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])
