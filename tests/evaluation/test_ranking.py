"""The gate's ROC AUC and average precision: against brute-force definitions and hand values."""

from __future__ import annotations

import numpy as np
import pytest

from defectnet.evaluation.ranking import average_precision, roc_auc


def _auc_pairs(scores: list[float], truth: list[bool]) -> float:
    """P(score of a defective > score of a normal), ties count 1/2: every pair counted."""
    pos = [s for s, t in zip(scores, truth) if t]
    neg = [s for s, t in zip(scores, truth) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _ap_thresholds(scores: list[float], truth: list[bool]) -> float:
    """sum over distinct thresholds t (descending) of (recall(t) - recall(prev)) * precision(t)."""
    total, prev_recall = 0.0, 0.0
    n_pos = sum(truth)
    for t in sorted(set(scores), reverse=True):
        passed = [d for s, d in zip(scores, truth) if s >= t]
        recall = sum(passed) / n_pos
        total += (recall - prev_recall) * (sum(passed) / len(passed))
        prev_recall = recall
    return total


def test_hand_computed_values() -> None:
    # scikit-learn's documented example: roc_auc_score 0.75, average_precision_score 0.8333...
    scores, truth = [0.1, 0.4, 0.35, 0.8], [False, False, True, True]
    assert roc_auc(scores, truth) == pytest.approx(0.75)
    assert average_precision(scores, truth) == pytest.approx(5 / 6)
    assert roc_auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert roc_auc([0.1, 0.8, 0.9], [True, False, False]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5  # all tied: chance
    # a tie between the only defective and a normal image at the top: precision 1/2 at recall 1
    assert average_precision([0.9, 0.9, 0.1], [True, False, False]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    truth = [bool(x) for x in rng.random(n) < 0.45]
    scores = [float(x) for x in np.round(rng.random(n) * 0.5 + 0.4 * np.array(truth), 1)]  # rounded: many ties
    assert roc_auc(scores, truth) == pytest.approx(_auc_pairs(scores, truth))
    assert average_precision(scores, truth) == pytest.approx(_ap_thresholds(scores, truth))


def test_undefined_and_invalid() -> None:
    assert roc_auc([0.1, 0.2], [True, True]) is None and roc_auc([0.1, 0.2], [False, False]) is None
    assert average_precision([0.1, 0.2], [False, False]) is None
    assert average_precision([0.1, 0.2], [True, True]) == 1.0
    with pytest.raises(ValueError, match="pair up"):
        roc_auc([0.1], [True, False])
    with pytest.raises(ValueError, match="finite"):
        average_precision([float("nan"), 0.2], [True, False])
