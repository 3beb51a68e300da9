"""Normal-share resampling: which images a benchmark measures, and the normal-proportion curve.

The seed's test sets have a fixed normal share (fabric 0.45, bottle 0.25), but what a gate
saves depends on it: ATT = alpha * ATT_normal + (1 - alpha) * ATT_defective. Two uses:

* :func:`resample_indices` builds the measured image list: exactly ``round(share * n)``
  normal images and ``n - round(share * n)`` defective ones (so the achieved share is the
  requested one up to ``1 / n``), deterministic for a seed. Each class is drawn **without**
  replacement while it has enough images; only a class that needs more images than the set
  holds is drawn *with* replacement: every image of that class is used once and the rest
  are drawn with replacement (so no image is left out and none is over-represented by
  chance more than necessary). The result is shuffled (seeded), so normal and defective
  images interleave as on a production line.
* :func:`normal_share_curve` recomputes ATT, ATT_normal, ATT_defective and the image-level
  macro F1 at normal shares 0 .. 0.99 by resampling the *measured* per-image times and
  detections of one run (no model call per share), averaging a few seeded draws.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from defectnet.errors import ConfigError
from defectnet.evaluation.f1 import image_f1

#: Images per resampled set of the curve, at least (so the share grid is exact to 0.005).
CURVE_MIN_IMAGES = 200
#: Normal shares of the curve: 0, 0.05, ..., 0.95 and 0.99 (the paper's figure goes to 0.99).
CURVE_SHARES: tuple[float, ...] = (*(round(0.05 * i, 2) for i in range(20)), 0.99)


@dataclass(frozen=True)
class Resample:
    """indices: positions into the source list, in measurement order. share: the achieved
    normal share. replaced: the classes drawn with replacement (``"normal"``/``"defective"``)."""

    indices: tuple[int, ...]
    share: float
    num_normal: int
    num_defective: int
    replaced: tuple[str, ...]
    seed: int

    @property
    def with_replacement(self) -> bool:
        return bool(self.replaced)


def _check_share(share: float) -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) \
            or not 0.0 <= share <= 1.0:
        raise ConfigError(f"normal share must be a fraction in [0, 1] (e.g. 0.44), got {share!r}")
    return float(share)


def _draw(rng: np.random.Generator, pool: list[int], k: int) -> tuple[list[int], bool]:
    """``k`` items of ``pool``: without replacement when possible, else all once + the rest
    with replacement. Returns (items, replaced)."""
    if k <= len(pool):
        return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)], False
    extra = rng.choice(len(pool), size=k - len(pool), replace=True)
    return list(pool) + [pool[i] for i in extra], True


def resample_indices(truth_defective: Sequence[bool], share: float, n: int | None = None,
                     seed: int = 0) -> Resample:
    """``n`` positions of ``truth_defective`` (default: as many as it has) with a normal share
    of exactly ``round(share * n) / n`` (see the module docstring for the replacement rule)."""
    share = _check_share(share)
    total = len(truth_defective) if n is None else n
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ConfigError(f"the resampled set needs at least one image, got n={n!r}")
    normal = [i for i, d in enumerate(truth_defective) if not d]
    defective = [i for i, d in enumerate(truth_defective) if d]
    k_normal = int(math.floor(share * total + 0.5))
    k_defective = total - k_normal
    for label, k, pool in (("normal", k_normal, normal), ("defective", k_defective, defective)):
        if k and not pool:
            raise ConfigError(f"a normal share of {share} over {total} images needs {k} {label} images, but the "
                              f"data set has none; choose a share of {1.0 if label == 'normal' else 0.0} or use a "
                              f"data set with {label} images")
    rng = np.random.default_rng(seed)
    picked_n, rep_n = _draw(rng, normal, k_normal)
    picked_d, rep_d = _draw(rng, defective, k_defective)
    order = picked_n + picked_d
    perm = rng.permutation(len(order))
    replaced = tuple(name for name, r in (("normal", rep_n), ("defective", rep_d)) if r)
    return Resample(tuple(order[i] for i in perm), k_normal / total, k_normal, k_defective, replaced, seed)


def subsample(truth_defective: Sequence[bool], max_images: int, seed: int = 0) -> Resample:
    """At most ``max_images`` positions keeping the set's own normal share (without
    replacement; the whole set, shuffled, when it is small enough)."""
    n = len(truth_defective)
    if n == 0:
        raise ConfigError("cannot subsample an empty image set")
    share = sum(1 for d in truth_defective if not d) / n
    return resample_indices(truth_defective, share, min(n, max_images), seed)


@dataclass(frozen=True)
class CurvePoint:
    """Metrics at one normal share (means over the draws; None where undefined, e.g.
    ATT_defective at a share with no defective image)."""

    share: float
    att_ms: float | None
    att_normal_ms: float | None
    att_defective_ms: float | None
    f1: float | None


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def normal_share_curve(times_ms: Sequence[float], truth_defective: Sequence[bool],
                       predicted_defective: Sequence[bool], *, shares: Sequence[float] = CURVE_SHARES,
                       n: int | None = None, draws: int = 10, seed: int = 0) -> list[CurvePoint]:
    """ATT / ATT_normal / ATT_defective / macro F1 at each normal share, from measured
    per-image model times (ms), ground truth and image-level predictions.

    Each share resamples ``n`` images (default: the measured count, at least
    :data:`CURVE_MIN_IMAGES`) with :func:`resample_indices` for ``draws`` seeds ``seed .. seed + draws - 1`` and averages
    the metrics over the draws. The draws are the same for every model measured on the same
    images, so curves compare like for like.
    """
    if not (len(times_ms) == len(truth_defective) == len(predicted_defective)):
        raise ValueError("times_ms, truth_defective and predicted_defective need equal lengths")
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}")
    size = n if n is not None else max(len(times_ms), CURVE_MIN_IMAGES)
    has_n, has_d = not all(truth_defective), any(truth_defective)
    points: list[CurvePoint] = []
    for share in shares:
        k_normal = int(math.floor(share * size + 0.5))
        if (k_normal and not has_n) or (k_normal < size and not has_d):
            points.append(CurvePoint(float(share), None, None, None, None))
            continue
        att, att_n, att_d, f1 = [], [], [], []
        for j in range(draws):
            idx = resample_indices(truth_defective, share, size, seed + j).indices
            t = [times_ms[i] for i in idx]
            truth = [bool(truth_defective[i]) for i in idx]
            att.append(statistics.fmean(t))
            if (m := _mean([x for x, d in zip(t, truth) if not d])) is not None:
                att_n.append(m)
            if (m := _mean([x for x, d in zip(t, truth) if d])) is not None:
                att_d.append(m)
            f1.append(image_f1([bool(predicted_defective[i]) for i in idx], truth).macro_f1)
        points.append(CurvePoint(float(share), _mean(att), _mean(att_n), _mean(att_d), _mean(f1)))
    return points


@dataclass(frozen=True)
class SpeedRecallPoint:
    """One gate threshold of :func:`speed_recall_curve`. gate_recall: share of defective
    images with P >= threshold; normal_skipped: share of normal images below it; att_ms:
    the resampled ATT; speedup: reference ATT / att_ms; f1: the image-level macro F1."""

    threshold: float
    gate_recall: float
    normal_skipped: float | None
    att_ms: float
    speedup: float | None
    f1: float


def speed_recall_curve(p_defective: Sequence[float], truth_defective: Sequence[bool], full_ms: Sequence[float],
                       skipped_ms: Sequence[float], predicted_full: Sequence[bool], *,
                       reference_ms: float | None) -> list[SpeedRecallPoint]:
    """ATT and speed-up against gate recall as the gate threshold sweeps, from one gate-off
    measurement (no model call per threshold).

    Per image (all lists in measurement order): P(defective); ground truth; ``full_ms``, the
    measured model-part time with the detector on (the gate-off case's per-image median);
    ``skipped_ms``, what the same image costs when the gate sends it out (that time minus the
    stages that only run for passed images: sub-batch selection and detector, for a two-model
    the detector's backbone and detector); ``predicted_full``, its verdict with the detector
    on (any detection above the score threshold). At threshold t an image costs ``full_ms``
    if P >= t, else ``skipped_ms``, and is predicted defective iff P >= t and
    ``predicted_full``. Thresholds: 0 (gate off) and every distinct P of a defective image
    (the largest threshold of each recall level), ascending. reference_ms: the ATT the
    speed-up divides (the PyTorch one-model's, else the gate-off ATT; None: no speed-up).
    """
    n = len(p_defective)
    if not (n == len(truth_defective) == len(full_ms) == len(skipped_ms) == len(predicted_full)) or n == 0:
        raise ValueError("speed_recall_curve needs equally long, non-empty per-image lists")
    n_def = sum(1 for t in truth_defective if t)
    n_norm = n - n_def
    thresholds = sorted({0.0, *(float(p) for p, t in zip(p_defective, truth_defective) if t)})
    points = []
    for thr in thresholds:
        ran = [float(p) >= thr for p in p_defective]
        att = statistics.fmean(f if r else s for f, s, r in zip(full_ms, skipped_ms, ran))
        recall = sum(1 for r, t in zip(ran, truth_defective) if r and t) / n_def if n_def else 1.0
        skipped = sum(1 for r, t in zip(ran, truth_defective) if not r and not t) / n_norm if n_norm else None
        f1 = image_f1([r and bool(pf) for r, pf in zip(ran, predicted_full)], [bool(t) for t in truth_defective])
        points.append(SpeedRecallPoint(thr, recall, skipped, att,
                                       reference_ms / att if reference_ms is not None and att > 0 else None,
                                       f1.macro_f1))
    return points
