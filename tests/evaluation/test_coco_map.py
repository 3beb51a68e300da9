"""mAP must equal pycocotools run directly on the same detections (original coordinates)."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from defectnet.errors import DataError
from defectnet.evaluation.coco_map import coco_map, detections_to_coco
from defectnet.structures import Detections

CATS = [{"id": 3, "name": "hole"}, {"id": 7, "name": "stain"}, {"id": 9, "name": "knot"}, {"id": 11, "name": "empty"}]
LABEL_TO_CAT = {1: 3, 2: 7, 3: 9, 4: 11}
SCALE = (0.5, 0.5)  # model input is half the original size
SIZE = (100, 200)  # original (h, w)


def make_gt() -> COCO:
    anns = [  # (image, category, xywh)
        (1, 3, [10, 10, 40, 20]), (1, 7, [100, 50, 30, 30]), (2, 3, [50, 20, 20, 20]),
        (3, 9, [5, 5, 10, 10]), (3, 7, [150, 60, 20, 30]), (6, 3, [120, 10, 60, 40]),
    ]
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": SIZE[1], "height": SIZE[0]} for i in range(1, 7)],
        "annotations": [{"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3],
                         "iscrowd": 0} for k, (im, c, b) in enumerate(anns)],
        "categories": CATS,
    }
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# per image id: (xyxy in ORIGINAL pixels, score, label); images 4 and 5 are normal
DETS: dict[int, list[tuple[list[float], float, int]]] = {
    1: [([11, 10, 50, 31], 0.9, 1), ([98, 52, 130, 80], 0.8, 2), ([0, 0, 20, 20], 0.3, 1)],
    2: [([52, 21, 70, 40], 0.7, 1), ([50, 20, 70, 40], 0.2, 2)],
    3: [([150, 60, 171, 88], 0.6, 2)],
    4: [([10, 10, 60, 40], 0.95, 1)],          # false positive on a normal image
    5: [([30, 30, 90, 90], 0.5, 2), ([1, 1, 9, 9], 0.06, 1)],
    6: [([121, 12, 178, 50], 0.4, 1)],
}


def model_detections() -> tuple[list[Detections], list[int]]:
    dets, ids = [], []
    for image_id in range(1, 7):
        rows = DETS.get(image_id, [])
        boxes = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4) * SCALE[0]
        dets.append(Detections(boxes, torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows])))
        ids.append(image_id)
    return dets, ids


def direct_pycocotools(gt: COCO) -> tuple[float, float, np.ndarray]:
    res = [{"image_id": i, "category_id": LABEL_TO_CAT[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": s} for i, rows in DETS.items() for b, s, lab in rows]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1]), ev.eval["precision"]


def test_detections_are_mapped_to_original_coordinates_and_category_ids() -> None:
    dets, ids = model_detections()
    res = detections_to_coco(dets, ids, [SCALE] * 6, [SIZE] * 6, LABEL_TO_CAT)
    assert len(res) == sum(len(v) for v in DETS.values())
    first = res[0]
    assert first["image_id"] == 1 and first["category_id"] == 3
    assert first["bbox"] == pytest.approx([11, 10, 39, 21])
    assert {r["image_id"] for r in res} == {1, 2, 3, 4, 5, 6}


def test_map_matches_pycocotools() -> None:
    gt = make_gt()
    dets, ids = model_detections()
    res = detections_to_coco(dets, ids, [SCALE] * 6, [SIZE] * 6, LABEL_TO_CAT)
    ours = coco_map(gt, res, category_ids=list(LABEL_TO_CAT.values()))
    m, m50, precision = direct_pycocotools(gt)
    assert 0 < ours.mAP < 1
    assert ours.mAP == pytest.approx(m, abs=1e-12)
    assert ours.AP50 == pytest.approx(m50, abs=1e-12)
    for k, cat in enumerate(CATS):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        expected = float(p.mean()) if p.size else math.nan
        got = ours.per_class_AP[cat["name"]]
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
    assert ours.per_class_AP["knot"] == 0.0  # ground truth but no detection
    assert math.isnan(ours.per_class_AP["empty"])  # no ground truth: not in the average
    assert ours.mAP == pytest.approx(np.mean([ours.per_class_AP[n] for n in ("hole", "stain", "knot")]))


def test_false_positives_on_normal_images_lower_map() -> None:
    gt = make_gt()
    dets, ids = model_detections()
    with_fp = coco_map(gt, detections_to_coco(dets, ids, [SCALE] * 6, [SIZE] * 6, LABEL_TO_CAT))
    clean = [d if i not in (4, 5) else Detections.empty() for d, i in zip(dets, ids)]
    without = coco_map(gt, detections_to_coco(clean, ids, [SCALE] * 6, [SIZE] * 6, LABEL_TO_CAT))
    assert with_fp.mAP < without.mAP


def test_no_detections_at_all() -> None:
    gt = make_gt()
    res = detections_to_coco([Detections.empty() for _ in range(6)], list(range(1, 7)), [SCALE] * 6, [SIZE] * 6,
                             LABEL_TO_CAT)
    assert res == []
    r = coco_map(gt, res)
    assert (r.mAP, r.AP50, r.num_detections) == (0.0, 0.0, 0)
    assert r.per_class_AP["hole"] == 0.0 and math.isnan(r.per_class_AP["empty"])


def test_unknown_label_is_a_data_error() -> None:
    det = Detections(torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([0.9]), torch.tensor([5]))
    with pytest.raises(DataError, match="label 5"):
        detections_to_coco([det], [1], [SCALE], [SIZE], LABEL_TO_CAT)


def test_results_are_not_mutated() -> None:
    gt = make_gt()
    dets, ids = model_detections()
    res = detections_to_coco(dets, ids, [SCALE] * 6, [SIZE] * 6, LABEL_TO_CAT)
    before: Any = copy.deepcopy(res)
    coco_map(gt, res)
    assert res == before
