"""How well the gate's P(defective) ranks defective images above normal ones.

Both numbers are threshold-free and computed from per-image records (P and ground truth);
neither needs a model call. scikit-learn is not a dependency of this package, so these are
small numpy implementations of the standard definitions, tested against brute-force
versions and hand-computed values (``tests/evaluation/test_ranking.py``):

* :func:`roc_auc`: area under the ROC curve = the probability that a random defective
  image gets a higher P than a random normal one, ties counted as one half (the
  Mann-Whitney U statistic over ``n_defective * n_normal``; average ranks for ties). This
  is what ``sklearn.metrics.roc_auc_score`` returns.
* :func:`average_precision`: ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct P values
  taken as thresholds from the highest down (R, P: recall and precision of "P >= t" for
  defective images), with no interpolation -- ``sklearn.metrics.average_precision_score``'s
  definition.

Both return None when a class is missing (the number is undefined).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _arrays(scores: Sequence[float], truth: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.asarray(truth, dtype=bool).reshape(-1)
    if s.shape != t.shape:
        raise ValueError(f"{s.size} scores for {t.size} ground-truth labels; they must pair up")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s, t


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (ascending), tied values sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and sorted_v[end + 1] == sorted_v[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def roc_auc(scores: Sequence[float], truth: Sequence[bool]) -> float | None:
    """ROC AUC of ``scores`` (higher = more likely defective) against ``truth`` (True =
    defective); None without a defective or without a normal image."""
    s, t = _arrays(scores, truth)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    u = float(ranks[t].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def average_precision(scores: Sequence[float], truth: Sequence[bool]) -> float | None:
    """Average precision of ``scores`` for the defective class (see the module docstring);
    None without a defective image."""
    s, t = _arrays(scores, truth)
    n_pos = int(t.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    # the last index of each run of equal scores: one threshold per distinct value
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tp = np.cumsum(t_sorted)[last].astype(np.float64)
    passed = (last + 1).astype(np.float64)
    precision, recall = tp / passed, tp / n_pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))
