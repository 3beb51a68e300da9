"""Per-image records: what every accuracy and gate number of an evaluation is computed from.

``defectnet-eval`` and ``defectnet-bench`` keep, for each model and image (in measurement
order), the ground truth, the gate's P(defective), whether the detector ran, the model-part
time and the detections, so that each number in their JSON files can be recomputed from
the file alone (:func:`recompute`), and re-derived at another gate threshold without a
model call (a threshold at or above the one measured, or any threshold when the detector
ran on every image: the bench's "gate off" cases).

Per-image lists (``per_image`` in the JSON files), all of one length:

* ``image_id``: the image's COCO id in the data set's annotation file;
* ``defective``: ground truth (an image with a defect annotation);
* ``p_defective``: the gate's P(defective), rounded to :data:`P_DIGITS` decimals (1.0 for a
  model without gate);
* ``ran_detector``, ``predicted_defective`` (any detection scored above 0.05), ``model_ms``.

Detections (too large for the main file; a sidecar JSON, see :func:`write_detections`):
per image a list of ``[x, y, w, h, score, category_id]`` in original-image pixels (the COCO
result format), boxes rounded to :data:`BOX_DIGITS` and scores to :data:`SCORE_DIGITS`
decimals.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectnet.errors import DataError
from defectnet.evaluation.coco_map import coco_map
from defectnet.evaluation.f1 import SCORE_THRESHOLD, gate_metrics, image_f1
from defectnet.evaluation.ranking import average_precision, roc_auc
from defectnet.io import atomic_write_json

P_DIGITS, BOX_DIGITS, SCORE_DIGITS = 6, 3, 6
DETECTIONS_FORMAT = "defectnet-detections"
#: One detection in a record.
DETECTION_FIELDS: tuple[str, ...] = ("x", "y", "w", "h", "score", "category_id")

ImageDetections = list[list[float]]


def group_detections(results: Sequence[Mapping[str, Any]], image_ids: Sequence[int]) -> list[ImageDetections]:
    """COCO result dicts grouped per image, in the order of ``image_ids`` (the ids the
    results use), each detection as ``[x, y, w, h, score, category_id]`` rounded."""
    slot = {int(i): k for k, i in enumerate(image_ids)}
    if len(slot) != len(image_ids):
        raise ValueError("image_ids must be unique (use the measurement positions' ids)")
    out: list[ImageDetections] = [[] for _ in image_ids]
    for r in results:
        x, y, w, h = (round(float(v), BOX_DIGITS) for v in r["bbox"])
        out[slot[int(r["image_id"])]].append([x, y, w, h, round(float(r["score"]), SCORE_DIGITS),
                                              int(r["category_id"])])
    return out


def coco_results(image_ids: Sequence[int], detections: Sequence[ImageDetections],
                 keep: Sequence[bool] | None = None) -> list[dict[str, Any]]:
    """COCO result dicts from per-image detection records (``keep[k]`` False drops image k's)."""
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection lists")
    out = []
    for k, (image_id, dets) in enumerate(zip(image_ids, detections)):
        if keep is not None and not keep[k]:
            continue
        for x, y, w, h, score, cat in dets:
            out.append({"image_id": int(image_id), "category_id": int(cat), "bbox": [x, y, w, h],
                        "score": float(score)})
    return out


def round_p(p: float) -> float:
    return round(float(p), P_DIGITS)


@dataclass(frozen=True)
class GateRanking:
    """roc_auc / average_precision of P(defective) for the defective images (None when
    undefined); see :mod:`defectnet.evaluation.ranking`."""

    roc_auc: float | None
    average_precision: float | None


def gate_ranking(p_defective: Sequence[float], defective: Sequence[bool]) -> GateRanking:
    """The gate's threshold-free quality from per-image records."""
    return GateRanking(roc_auc(p_defective, defective), average_precision(p_defective, defective))


@dataclass(frozen=True)
class Recomputed:
    """The accuracy numbers of an evaluation recomputed from its records (at ``threshold``
    when one was given; None = as measured)."""

    threshold: float | None
    mAP: float
    AP50: float
    F1: float
    gate_recall: float | None
    gate_precision: float | None
    detector_runs: int
    normal_skipped: float | None


def recompute(per_image: Mapping[str, Sequence[Any]], detections: Sequence[ImageDetections], coco_gt: Any,
              category_ids: Sequence[int], *, result_ids: Sequence[int] | None = None,
              threshold: float | None = None, score_threshold: float = SCORE_THRESHOLD) -> Recomputed:
    """mAP, AP50, macro F1 and gate recall/precision from per-image records.

    coco_gt: the ground truth the results are scored against; result_ids: the ids of the
    images in ``coco_gt`` (default: ``per_image["image_id"]``; the bench renumbers its
    measured images 1..n). threshold: re-gate at this P(defective): an image with P below it
    loses its detections and counts as skipped. Raises DataError when an image at or above
    the threshold did not run the detector (its detections were never computed).
    """
    p = [float(x) for x in per_image["p_defective"]]
    ran = [bool(x) for x in per_image["ran_detector"]]
    truth = [bool(x) for x in per_image["defective"]]
    if not (len(p) == len(ran) == len(truth) == len(detections)):
        raise DataError("per-image records of unequal lengths; the file is damaged")
    if threshold is not None:
        missing = [k for k in range(len(p)) if p[k] >= threshold and not ran[k]]
        if missing:
            raise DataError(f"{len(missing)} image(s) have P(defective) >= {threshold} but did not run the "
                            "detector, so their detections are unknown; re-gate only at thresholds at or above "
                            "the measured one, or use a gate-off record")
        ran = [x >= threshold for x in p]
    ids = list(result_ids) if result_ids is not None else [int(i) for i in per_image["image_id"]]
    results = coco_results(ids, detections, keep=ran)
    mres = coco_map(coco_gt, results, category_ids=sorted(int(c) for c in category_ids))
    predicted = [r and any(d[4] > score_threshold for d in dets) for r, dets in zip(ran, detections)]
    f1 = image_f1(predicted, truth)
    gate = gate_metrics(ran, truth)
    normal = [not r for r, t in zip(ran, truth) if not t]
    return Recomputed(threshold, mres.mAP, mres.AP50, f1.macro_f1, gate.recall, gate.precision, gate.passed,
                      sum(normal) / len(normal) if normal else None)


def detections_path(json_path: str | os.PathLike[str]) -> Path:
    """The detections sidecar of an eval JSON: ``X.json`` -> ``X.detections.json``."""
    p = Path(json_path)
    stem = p.name[:-5] if p.name.endswith(".json") else p.name
    return p.with_name(f"{stem}.detections.json")


def write_detections(path: str | os.PathLike[str], entries: Mapping[str, Mapping[str, Any]]) -> Path:
    """The detections sidecar: ``{"format", "fields", "entries": {key: {"image_id": [...],
    "detections": [...]}}}`` (compact JSON, atomic)."""
    return atomic_write_json(path, {"format": DETECTIONS_FORMAT, "fields": list(DETECTION_FIELDS),
                                    "entries": {k: dict(v) for k, v in entries.items()}}, indent=None)


def read_detections(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The entries of a detections sidecar (see :func:`write_detections`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the detections file {path} ({e}); it is written beside the results "
                        "file by the same run — keep the two together") from None
    if not isinstance(data, dict) or data.get("format") != DETECTIONS_FORMAT:
        raise DataError(f"{path} is not a {DETECTIONS_FORMAT} file")
    return dict(data["entries"])


def clean_float(v: float | None) -> float | None:
    """NaN/inf -> None (JSON has neither)."""
    return None if v is None or not math.isfinite(v) else float(v)
