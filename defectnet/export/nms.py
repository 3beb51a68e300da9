"""Batched, per-class non-maximum suppression that exports as ONNX ``NonMaxSuppression``.

``batched_nms(boxes [B, N, 4], scores [B, C, N], ...)`` has the semantics of the ONNX
operator: for every image b and class c independently, keep the boxes with
``score > score_threshold``, suppress those whose IoU with a higher-scoring kept box is
``> iou_threshold``, keep at most ``max_per_class``. Boxes of different images never
suppress each other (no cross-talk inside a batch). Returns ``[S, 3]`` int64 rows
``(image, class, box)``.

In eager PyTorch it runs :func:`torchvision.ops.batched_nms` per image (so the exported
graph and the eager module agree); under ``torch.onnx.export(..., dynamo=False)`` the
symbolic emits one standard ``NonMaxSuppression`` node with 3-D boxes and scores, as
TensorRT's ONNX parser wants.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms as tv_batched_nms


def _eager(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
           score_threshold: float) -> Tensor:
    n = scores.shape[2]
    rows: list[Tensor] = []
    for b in range(boxes.shape[0]):
        flat = scores[b].reshape(-1)  # [C * N], class-major
        cand = torch.where(flat > score_threshold)[0]
        if cand.numel() == 0:
            continue
        cls, box = cand // n, cand % n
        keep = tv_batched_nms(boxes[b, box], flat[cand], cls, iou_threshold)  # falling score
        cls, box = cls[keep], box[keep]
        # at most max_per_class per class: rank of each kept box within its class
        order = torch.sort(cls, stable=True)[1]
        cls, box = cls[order], box[order]
        rank = torch.arange(cls.numel(), device=cls.device) - torch.searchsorted(cls, cls)
        mine = rank < max_per_class
        cls, box = cls[mine], box[mine]
        rows.append(torch.stack([torch.full_like(cls, b), cls, box], dim=1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
    return torch.cat(rows).to(torch.int64)


class _NonMaxSuppression(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, max_per_class: int,  # type: ignore[override]
                iou_threshold: float, score_threshold: float) -> Tensor:
        return _eager(boxes, scores, max_per_class, iou_threshold, score_threshold)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_per_class: int, iou_threshold: float,
                 score_threshold: float) -> Any:
        # Constants (initializers) for the three scalar inputs: TensorRT's parser needs them
        # to be build-time constants.
        max_out = g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64))
        iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
        thr = g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32))
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou, thr, center_point_box_i=0)


def batched_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
    """Per-image, per-class NMS (see the module docstring).

    boxes: float32 ``[B, N, 4]`` xyxy; scores: float32 ``[B, C, N]``. Returns int64
    ``[S, 3]`` (image index, class index, box index).
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or scores.dim() != 3:
        raise ValueError(f"batched_nms needs boxes [B, N, 4] and scores [B, C, N], got "
                         f"{tuple(boxes.shape)} and {tuple(scores.shape)}")
    out: Tensor = _NonMaxSuppression.apply(boxes, scores, int(max_per_class), float(iou_threshold),
                                           float(score_threshold))
    return out
