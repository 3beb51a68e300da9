"""COCO bbox mAP exactly as the seed measured it (``docs/method.md``, "Metrics").

mAP = AP@[.5:.95] and AP50 from pycocotools' COCOeval (bbox, area "all", maxDets 100),
averaged over the defect categories only (the ground truth passed in holds no background
category). Normal images stay in the image set, so detections on them are false positives.
Categories without ground truth are left out of the average (COCOeval's -1), as pycocotools
does; a category with ground truth but no detections scores 0.

Boxes: detections come in model-input (resized) coordinates and are mapped back to the
original image with :func:`defectnet.data.transforms.boxes_to_original`, then written as
COCO ``[x, y, w, h]`` with ``w = x2 - x1`` (the torchvision convention; mmdetection 1.x added
+1 pixel, which changes AP slightly for tiny boxes).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from defectnet.data.transforms import boxes_to_original
from defectnet.errors import DataError
from defectnet.structures import Detections


@dataclass(frozen=True)
class MapResult:
    """mAP: AP@[.5:.95]; AP50: AP@0.5; per_class_AP / per_class_AP50: category name -> AP
    (NaN for a category without ground truth); num_detections: detections evaluated."""

    mAP: float
    AP50: float
    per_class_AP: dict[str, float] = field(default_factory=dict)
    per_class_AP50: dict[str, float] = field(default_factory=dict)
    num_detections: int = 0


def detections_to_coco(detections: Sequence[Detections], image_ids: Sequence[int],
                       scale_factors: Sequence[tuple[float, float]], original_sizes: Sequence[tuple[int, int]],
                       label_to_category_id: Mapping[int, int]) -> list[dict[str, Any]]:
    """COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh in original pixels,
    ``score``) for per-image detections in model-input coordinates. Labels are mapped to COCO
    category ids with ``label_to_category_id``; an unknown label raises DataError."""
    if not (len(detections) == len(image_ids) == len(scale_factors) == len(original_sizes)):
        raise ValueError("detections, image_ids, scale_factors and original_sizes need equal lengths")
    out: list[dict[str, Any]] = []
    for det, image_id, factor, size in zip(detections, image_ids, scale_factors, original_sizes):
        if det.boxes.shape[0] == 0:
            continue
        boxes = boxes_to_original(det.boxes.detach().float().cpu(), factor, size).numpy()
        scores = det.scores.detach().float().cpu().numpy()
        labels = det.labels.detach().cpu().numpy()
        for box, score, label in zip(boxes, scores, labels):
            try:
                cat = label_to_category_id[int(label)]
            except KeyError:
                raise DataError(f"detection label {int(label)} has no COCO category (known labels "
                                f"{sorted(label_to_category_id)}); the model and the data set disagree") from None
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append({"image_id": int(image_id), "category_id": int(cat),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return out


def _per_class(precision: np.ndarray, k: int, iou_index: int | None) -> float:
    """Mean of COCOeval precision ``[T, R, K, A, M]`` for category k, area all, maxDets 100."""
    p = precision[:, :, k, 0, -1] if iou_index is None else precision[iou_index, :, k, 0, -1]
    p = p[p > -1]
    return float(p.mean()) if p.size else float("nan")


def coco_map(coco_gt: COCO, results: list[dict[str, Any]], category_ids: Sequence[int] | None = None) -> MapResult:
    """Evaluate COCO result dicts against ``coco_gt`` (defect categories only, every image).

    category_ids: the categories to average over (default: all in ``coco_gt``). Returns zeros
    when there are no detections at all (pycocotools cannot load an empty result list).
    """
    cat_ids = sorted(int(c) for c in (category_ids if category_ids is not None else coco_gt.getCatIds()))
    names = {int(c["id"]): str(c["name"]) for c in coco_gt.loadCats(cat_ids)}
    gt_cats = {int(a["category_id"]) for a in coco_gt.dataset.get("annotations", [])}
    if not results:
        per = {names[c]: (0.0 if c in gt_cats else float("nan")) for c in cat_ids}
        return MapResult(0.0, 0.0, per, dict(per), 0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]
    iou50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    per_ap = {names[c]: _per_class(precision, k, None) for k, c in enumerate(cat_ids)}
    per_ap50 = {names[c]: _per_class(precision, k, iou50) for k, c in enumerate(cat_ids)}
    # stats: -1 when no category has ground truth at all
    m, m50 = float(ev.stats[0]), float(ev.stats[1])
    return MapResult(max(m, 0.0), max(m50, 0.0), per_ap, per_ap50, len(results))
