"""Normal-share resampling: exact share, determinism, the replacement rule, the curve."""

from __future__ import annotations

from collections import Counter

import pytest

from defectnet.bench.resample import CURVE_SHARES, normal_share_curve, resample_indices, subsample
from defectnet.errors import ConfigError

#: 30 images: 12 normal (positions 0..11), 18 defective.
TRUTH = [False] * 12 + [True] * 18


@pytest.mark.parametrize(("share", "n"), [(0.0, 30), (0.25, 20), (0.4, 30), (0.5, 30), (0.99, 100), (1.0, 12),
                                          (0.44, 25)])
def test_exact_share(share: float, n: int) -> None:
    r = resample_indices(TRUTH, share, n, seed=3)
    k = int(share * n + 0.5)
    assert len(r.indices) == n and r.num_normal == k and r.num_defective == n - k
    assert sum(1 for i in r.indices if not TRUTH[i]) == k
    assert r.share == k / n
    assert abs(r.share - share) <= 0.5 / n


def test_deterministic_for_a_seed() -> None:
    a = resample_indices(TRUTH, 0.5, 20, seed=7)
    assert a == resample_indices(TRUTH, 0.5, 20, seed=7)
    assert a.indices != resample_indices(TRUTH, 0.5, 20, seed=8).indices


def test_without_replacement_when_possible() -> None:
    r = resample_indices(TRUTH, 0.4, 30, seed=0)  # 12 normal of 12, 18 defective of 18
    assert sorted(r.indices) == list(range(30)) and not r.with_replacement
    r = resample_indices(TRUTH, 0.5, 20, seed=0)
    assert len(set(r.indices)) == 20 and r.replaced == ()


def test_replacement_only_for_the_short_class() -> None:
    r = resample_indices(TRUTH, 0.8, 30, seed=1)  # 24 normal needed, 12 exist; 6 defective
    assert r.replaced == ("normal",)
    counts = Counter(r.indices)
    assert set(range(12)) <= set(counts)           # every normal image used at least once
    assert sum(counts[i] for i in range(12)) == 24
    defective = [i for i in r.indices if TRUTH[i]]
    assert len(defective) == len(set(defective)) == 6  # the other class: no repeats


def test_order_is_shuffled() -> None:
    r = resample_indices(TRUTH, 0.4, 30, seed=0)
    assert list(r.indices) != sorted(r.indices)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="fraction"):
        resample_indices(TRUTH, 1.5)
    with pytest.raises(ConfigError, match="fraction"):
        resample_indices(TRUTH, float("nan"))
    with pytest.raises(ConfigError, match="has none"):
        resample_indices([True, True], 0.5)
    with pytest.raises(ConfigError, match="at least one"):
        resample_indices(TRUTH, 0.5, 0)
    assert resample_indices([True, True], 0.0).num_normal == 0  # possible without normal images


def test_subsample_keeps_the_share_without_replacement() -> None:
    r = subsample(TRUTH, 10, seed=0)
    assert len(r.indices) == 10 and r.num_normal == 4 and not r.with_replacement
    assert len(subsample(TRUTH, 100).indices) == 30


def test_curve_from_measured_times() -> None:
    times = [10.0 if not d else 30.0 for d in TRUTH]
    predicted = list(TRUTH)  # perfect image-level predictions
    curve = normal_share_curve(times, TRUTH, predicted, n=40, draws=3)
    assert [p.share for p in curve] == list(CURVE_SHARES)
    assert curve[0].att_normal_ms is None and curve[0].att_ms == pytest.approx(30.0)
    for p in curve[1:]:
        k = int(p.share * 40 + 0.5)
        assert p.att_ms == pytest.approx((10.0 * k + 30.0 * (40 - k)) / 40)
        assert p.att_normal_ms == pytest.approx(10.0) and p.f1 == pytest.approx(1.0)
        assert p.att_defective_ms == pytest.approx(30.0) or k == 40
    assert normal_share_curve(times, TRUTH, predicted, n=40, draws=3) == curve  # deterministic


def test_curve_without_one_class() -> None:
    curve = normal_share_curve([5.0, 6.0], [True, True], [True, False], shares=(0.0, 0.5), n=2)
    assert curve[0].att_ms == pytest.approx(5.5) and curve[1].att_ms is None


def test_speed_recall_curve_by_hand() -> None:
    """Two defective (P 0.9, 0.6) and two normal images (P 0.3, 0.7); 10 ms with the detector,
    2 ms without. One point per recall level, at the largest threshold that keeps it."""
    from defectnet.bench.resample import speed_recall_curve

    pts = speed_recall_curve([0.9, 0.6, 0.3, 0.7], [True, True, False, False], [10.0] * 4, [2.0] * 4,
                             [True, True, False, True], reference_ms=10.0)
    assert [p.threshold for p in pts] == [0.0, 0.6, 0.9]
    assert [p.gate_recall for p in pts] == [1.0, 1.0, 0.5]
    assert [p.normal_skipped for p in pts] == [0.0, 0.5, 1.0]
    assert [p.att_ms for p in pts] == pytest.approx([10.0, 8.0, 4.0])
    assert [p.speedup for p in pts] == pytest.approx([1.0, 1.25, 2.5])
    # at 0.9 the second defective image escapes: predicted [T, F, F, F]
    assert pts[2].f1 == pytest.approx((2 / 3 + 4 / 5) / 2) and pts[0].f1 == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert speed_recall_curve([0.5], [True], [3.0], [1.0], [True], reference_ms=None)[0].speedup is None
    with pytest.raises(ValueError, match="equally long"):
        speed_recall_curve([0.5], [True, False], [3.0], [1.0], [True], reference_ms=None)
