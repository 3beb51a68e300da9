"""Image-level macro F1, gate metrics and ATT figures on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from defectnet.evaluation.f1 import gate_metrics, image_f1, predicted_defective
from defectnet.evaluation.timing import LatencyTimer, att_ideal, percentile, summarize_times
from defectnet.structures import Detections


def _det(*scores: float) -> Detections:
    n = len(scores)
    return Detections(torch.zeros((n, 4)), torch.tensor(scores, dtype=torch.float32),
                      torch.ones(n, dtype=torch.int64))


def test_predicted_defective_uses_strict_threshold() -> None:
    assert not predicted_defective(Detections.empty())
    assert not predicted_defective(_det(0.05, 0.01))
    assert predicted_defective(_det(0.01, 0.0501))
    assert not predicted_defective(_det(0.3), score_threshold=0.5)


def test_macro_f1_hand_cases() -> None:
    # perfect
    r = image_f1([True, False, True], [True, False, True])
    assert (r.macro_f1, r.f1_normal, r.f1_defective) == (1.0, 1.0, 1.0)
    # everything called defective: defective F1 = 2*2/(2*2+2) = 2/3, normal F1 = 0 -> macro 1/3
    r = image_f1([True] * 4, [True, True, False, False])
    assert r.f1_defective == pytest.approx(2 / 3) and r.f1_normal == 0.0
    assert r.macro_f1 == pytest.approx(1 / 3)
    assert (r.tp, r.fp, r.fn, r.tn) == (2, 2, 0, 0)
    # truth  D D D N N N N ; pred D D N D N N N
    # defective: tp=2 fp=1 fn=1 -> 4/6 ; normal: tp=3 fp=1 fn=1 -> 6/8 ; macro = (2/3 + 3/4)/2
    r = image_f1([True, True, False, True, False, False, False], [True, True, True, False, False, False, False])
    assert r.f1_defective == pytest.approx(2 / 3) and r.f1_normal == pytest.approx(3 / 4)
    assert r.macro_f1 == pytest.approx((2 / 3 + 3 / 4) / 2)
    # a class in neither truth nor predictions is left out (sklearn's label set, as the seed)
    r = image_f1([False, False], [False, False])
    assert r.macro_f1 == 1.0 and r.f1_defective is None
    with pytest.raises(ValueError):
        image_f1([True], [True, False])


def test_gate_metrics() -> None:
    # truth D D D N N ; gate passes D D . D .  -> recall 2/3, precision 2/3
    g = gate_metrics([True, True, False, True, False], [True, True, True, False, False])
    assert (g.recall, g.precision, g.passed, g.passed_defective, g.defective) == (
        pytest.approx(2 / 3), pytest.approx(2 / 3), 3, 2, 3)
    none = gate_metrics([False, False], [False, False])
    assert none.recall is None and none.precision is None


def test_att_split_by_ground_truth_and_ideal() -> None:
    times = [0.010, 0.040, 0.020, 0.060]  # seconds
    truth = [False, True, False, True]
    s = summarize_times(times, truth, att_one_ms=70.0)
    assert s.att_ms == pytest.approx(32.5)
    assert s.att_normal_ms == pytest.approx(15.0) and s.att_defective_ms == pytest.approx(50.0)
    assert s.alpha == 0.5 and s.beta == pytest.approx(0.3)
    assert s.att_ideal_ms == pytest.approx(70.0 * (1 - 0.5 * (1 - 0.3)))  # 45.5
    assert s.att_one_source == "given"
    own = summarize_times(times, truth)
    assert own.att_one_ms == pytest.approx(50.0) and own.att_one_source == "own_att_defective"
    assert own.att_ideal_ms == pytest.approx(50.0 * 0.65)
    assert s.p50_ms == pytest.approx(30.0) and s.p99_ms == pytest.approx(40 + 20 * 0.97)
    assert att_ideal(100.0, 0.44, 26.5 / 65.6) == pytest.approx(100 * (1 - 0.44 * (1 - 26.5 / 65.6)))


def test_att_edge_cases() -> None:
    only_defective = summarize_times([0.02, 0.04], [True, True], att_one_ms=50.0)
    assert only_defective.att_normal_ms is None and only_defective.alpha == 0.0
    assert only_defective.att_ideal_ms == 50.0  # alpha = 0: no saving
    only_normal = summarize_times([0.02], [False])
    assert only_normal.att_defective_ms is None and only_normal.beta is None and only_normal.att_ideal_ms is None
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_timer_excludes_warmup_and_syncs_around_the_call() -> None:
    clock = FakeClock()
    events: list[str] = []

    def work(dt: float) -> str:
        events.append("call")
        clock.t += dt
        return f"out{dt}"

    timer = LatencyTimer(lambda: events.append("sync"), clock, warmup=2)
    assert timer(lambda: work(1.0)) == ("out1.0", None)
    assert timer(lambda: work(2.0)) == ("out2.0", None)
    assert timer(lambda: work(0.25)) == ("out0.25", 0.25)
    assert timer(lambda: work(0.5))[1] == 0.5
    assert timer.times == [0.25, 0.5]
    assert events[:3] == ["sync", "call", "sync"]
