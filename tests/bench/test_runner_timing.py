"""Timing of the bench runner with a fake clock: synchronisation around the model part,
warm-up exclusion, the ATT split by ground truth, medians over repetitions, round-robin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bench_helpers import FakeClock, FakePipeline, fake_case, loaded, marker_reader

from defectnet.bench.imageset import ImageSet, build_image_set
from defectnet.bench.results import summarise, summarise_case
from defectnet.bench.runner import StageTimedBackend, run_cases
from defectnet.runtime.backends import Backend, RawDetections


@pytest.fixture()
def images(bench_data: Path) -> ImageSet:
    return build_image_set(bench_data, "test")


def _reader(images: ImageSet, clock: FakeClock):  # noqa: ANN202
    return marker_reader({images.path(k): images.is_defective(k) for k in range(len(images))}, clock)


def test_att_split_by_ground_truth_and_warmup_excluded(images: ImageSet) -> None:
    clock = FakeClock()
    n = len(images)
    pipe = FakePipeline(clock, warm_calls=2, warm_s=5.0, n=n)
    lc = loaded(pipe, fake_case(), images.label_to_category_id)
    (raw,) = run_cases([lc], images, repeat=1, warmup=2, batch=1, clock=clock, progress=False,
                       reader=_reader(images, clock))
    assert pipe.calls == 2 + n                               # warm-up calls ran ...
    truth = images.truth
    expected = [0.030 if d else 0.010 for d in truth]
    assert raw.model_s[0] == pytest.approx(expected)         # ... but were not timed
    assert raw.e2e_s[0] == pytest.approx([t + 0.003 + 0.002 for t in expected])  # + decode + preprocess
    res = summarise_case(raw, images, att_one_ms=60.0, att_one_from="x", batch=1, warmup=2)
    m = res.metrics
    assert (m.num_normal, m.num_defective) == (2, 4)
    assert m.att_normal_ms == pytest.approx(10.0) and m.att_defective_ms == pytest.approx(30.0)
    assert m.att_ms == pytest.approx((2 * 10 + 4 * 30) / 6)
    assert m.att_ideal_ms == pytest.approx(60.0 * (1 - (2 / 6) * (1 - 10 / 30)))
    assert m.F1 == pytest.approx(1.0) and m.gate_recall == pytest.approx(1.0)   # markers -> perfect verdicts
    assert res.stages_ms["decode"] == pytest.approx(3.0) and res.stages_ms["preprocess"] == pytest.approx(2.0)
    assert res.throughput_b1 == pytest.approx(n / sum(raw.e2e_s[0]))


def test_sync_brackets_the_model_part(images: ImageSet) -> None:
    events: list[str] = []
    clock = FakeClock(events)
    pipe = FakePipeline(clock, n=len(images))
    lc = loaded(pipe, fake_case(), images.label_to_category_id, sync=lambda: events.append("sync"))
    run_cases([lc], images, repeat=1, warmup=0, batch=1, clock=clock, progress=False, reader=_reader(images, clock))
    first = events.index("call")
    assert events[first - 2:first] == ["sync", "clock"]      # sync, start clock, model call
    assert events[first + 1:first + 3] == ["sync", "clock"]  # model call, sync, stop clock
    assert events.count("call") == len(images)


def test_median_over_repetitions(images: ImageSet) -> None:
    clock = FakeClock()
    n = len(images)
    pipe = FakePipeline(clock, n=n, offsets=[0.0, 0.006, 0.100, 0.003])  # +0, +6, +100, +3 ms per image
    lc = loaded(pipe, fake_case(), images.label_to_category_id)
    (raw,) = run_cases([lc], images, repeat=4, warmup=0, batch=1, clock=clock, progress=False,
                       reader=_reader(images, clock))
    res = summarise_case(raw, images, att_one_ms=None, att_one_from=None, batch=1, warmup=0)
    base = (2 * 10 + 4 * 30) / 6
    assert res.att_reps_ms == pytest.approx([base, base + 6, base + 100, base + 3])
    assert res.metrics.att_ms == pytest.approx(base + 4.5)             # median of 4 values
    assert res.metrics.att_normal_ms == pytest.approx(10 + 4.5)
    assert res.metrics.att_one_source == "own_att_defective"           # no one-model row given
    assert any("own ATT_defective" in note for note in res.notes)


def test_round_robin_rotates_and_speedups(images: ImageSet) -> None:
    clock = FakeClock()
    n = len(images)
    order: list[str] = []
    one = FakePipeline(clock, n=n, normal_s=0.030, defective_s=0.030, name="one", order=order)
    gated = FakePipeline(clock, n=n, normal_s=0.010, defective_s=0.030, name="gated", order=order)
    cases = [loaded(one, fake_case("one-model", "one-model"), images.label_to_category_id),
             loaded(gated, fake_case(), images.label_to_category_id)]
    raws = run_cases(cases, images, repeat=3, warmup=0, batch=2, clock=clock, progress=False,
                     reader=_reader(images, clock))
    # batch-1 passes per repetition (n calls each) then the batch-2 passes (n/2 calls each)
    per_rep = []
    pos = 2 * 1  # the two untimed batch warm-up calls come first
    for _ in range(3):
        per_rep.append((order[pos], order[pos + n]))
        pos += 2 * n + 2 * (n // 2)
    assert per_rep == [("one", "gated"), ("gated", "one"), ("one", "gated")]
    results, baseline = summarise(raws, images, batch=2, warmup=0)
    assert baseline == "one-model | torch fp32"
    assert results[0].speedup_att == pytest.approx(1.0)
    assert results[1].speedup_att == pytest.approx(30.0 / ((2 * 10 + 4 * 30) / 6))
    assert results[1].metrics.att_one_ms == pytest.approx(30.0)        # ATT_ideal from the one-model row
    assert results[1].throughput_batch is not None and results[1].att_batch_ms is not None


class _Backend(Backend):
    name = "fake"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def run_gate(self, images: torch.Tensor, image_sizes: torch.Tensor):  # noqa: ANN201
        self.clock.advance(0.004)
        return torch.ones(1), {}

    def select(self, features, index):  # noqa: ANN001, ANN201
        self.clock.advance(0.001)
        return features

    def run_detector(self, features, image_sizes) -> RawDetections:  # noqa: ANN001
        self.clock.advance(0.020)
        return RawDetections(torch.zeros(1, 1, 4), torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.int64),
                             torch.zeros(1, dtype=torch.int64))


def test_stage_timed_backend() -> None:
    events: list[str] = []
    clock = FakeClock(events)
    timed = StageTimedBackend(_Backend(clock), lambda: events.append("sync"), clock)
    _, feats = timed.run_gate(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([[32, 32]]))
    timed.run_detector(timed.select(feats, torch.tensor([0])), torch.tensor([[32, 32]]))
    timed.run_gate(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([[32, 32]]))
    assert timed.take() == pytest.approx({"gate": 8.0, "select": 1.0, "detector": 20.0})
    assert timed.take() == {}
    assert events[:4] == ["sync", "clock", "sync", "clock"]
