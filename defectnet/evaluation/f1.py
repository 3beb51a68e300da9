"""Image-level F1 as the seed measured it, and the gate's recall/precision.

F1 (``docs/method.md``, "Metrics"): an image is *predicted* defective iff any of its detections has a
score > 0.05 (the test score threshold); it is *truly* defective iff it has a defect
annotation. Per class c in {normal, defective}: ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``
(0 when TP_c = 0). The reported number is the **macro** average over the classes that occur
in the ground truth or the predictions — what the seed's ``sklearn.metrics.
classification_report`` computed (so a test set and predictions that are all one class
average over that class alone).

Gate (a deployment metric the seed did not report): the gate calls an image defective when
it ran the detector (``Detections.ran_detector``, i.e. P(defective) >= threshold). Recall =
share of truly defective images the gate passed on (1 - escape rate); precision = share of
gate-positive images that are truly defective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from defectnet.structures import Detections

#: The test score threshold of the original configs.
SCORE_THRESHOLD = 0.05


def predicted_defective(detections: Detections, score_threshold: float = SCORE_THRESHOLD) -> bool:
    """Whether any detection's score is strictly above ``score_threshold``."""
    return bool((detections.scores > score_threshold).any()) if detections.scores.numel() else False


@dataclass(frozen=True)
class F1Result:
    """macro_f1: the reported F1-score. f1_normal / f1_defective: per class (None when the
    class occurs in neither ground truth nor predictions). tp/fp/fn/tn: counts with
    *defective* as the positive class."""

    macro_f1: float
    f1_normal: float | None
    f1_defective: float | None
    tp: int
    fp: int
    fn: int
    tn: int


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def image_f1(predicted: Sequence[bool], truth: Sequence[bool]) -> F1Result:
    """Macro F1 over (normal, defective) of per-image predictions vs ground truth."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} ground-truth images")
    if not truth:
        raise ValueError("image_f1 needs at least one image")
    tp = sum(1 for p, t in zip(predicted, truth) if p and t)
    fp = sum(1 for p, t in zip(predicted, truth) if p and not t)
    fn = sum(1 for p, t in zip(predicted, truth) if not p and t)
    tn = len(truth) - tp - fp - fn
    has_defective = tp + fp + fn > 0   # defective occurs in truth or predictions
    has_normal = tn + fp + fn > 0      # normal occurs in truth or predictions
    f1_def = _f1(tp, fp, fn) if has_defective else None
    f1_nor = _f1(tn, fn, fp) if has_normal else None  # normal as positive: FP_n = FN_d, FN_n = FP_d
    present = [f for f in (f1_nor, f1_def) if f is not None]
    return F1Result(sum(present) / len(present), f1_nor, f1_def, tp, fp, fn, tn)


@dataclass(frozen=True)
class GateResult:
    """recall / precision of "gate says defective" against the ground truth (None when
    undefined: no defective image / no gate-positive image)."""

    recall: float | None
    precision: float | None
    passed: int
    passed_defective: int
    defective: int


def gate_metrics(gate_positive: Sequence[bool], truth: Sequence[bool]) -> GateResult:
    """Recall and precision of the gate's decisions on truly defective images."""
    if len(gate_positive) != len(truth):
        raise ValueError(f"{len(gate_positive)} gate decisions for {len(truth)} ground-truth images")
    passed = sum(1 for g in gate_positive if g)
    defective = sum(1 for t in truth if t)
    hits = sum(1 for g, t in zip(gate_positive, truth) if g and t)
    return GateResult(hits / defective if defective else None, hits / passed if passed else None,
                      passed, hits, defective)
