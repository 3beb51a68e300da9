"""Gate and detector in different processes: Pipeline.gate_to_host (P + the positives'
features as host arrays) and Pipeline.detect_on_host give the boxes Pipeline.run gives."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import images

from defectnet.errors import ConfigError
from defectnet.runtime import Pipeline
from defectnet.runtime.pipeline import HostGated


def _median_threshold(pipe: Pipeline, batch: list[torch.Tensor]) -> float:
    pipe.gate_threshold = 2.0
    p = [r.p_defective for r in pipe.run(batch)]
    assert len(set(np.round(p, 6))) == len(batch), f"the tiny gate should separate the images, got {p}"
    return float(np.median(p))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_detect_on_host_features_matches_run(run_engine: Path, backend: str) -> None:
    batch = [im[:, :200, :300].contiguous() for im in images(5, seed=3)]  # one size: one padding
    pipe = Pipeline.from_engine(run_engine, backend)
    pipe.gate_threshold = _median_threshold(pipe, batch)
    expected = pipe.run(batch)
    gated = pipe.gate_to_host(batch)
    assert isinstance(gated, HostGated) and len(gated) == 5
    positives = gated.index.tolist()
    assert gated.ran_detector.tolist() == [r.ran_detector for r in expected]
    assert 0 < len(positives) < 5
    assert gated.features is not None and set(gated.features) == {"c2", "c3", "c4", "c5"}
    assert all(isinstance(v, np.ndarray) and v.shape[0] == len(positives) for v in gated.features.values())
    shipped: HostGated = pickle.loads(pickle.dumps(gated))  # what crossing a process boundary does
    # all positives at once, and each on its own (as a detector replica gets them)
    together = pipe.detect_on_host(shipped.features or {}, shipped.image_sizes)
    for k, i in enumerate(positives):
        alone = pipe.detect_on_host(shipped.positive_features(k), shipped.image_sizes[k:k + 1])
        for raw, slot in ((together, k), (alone, 0)):
            boxes, scores, labels = raw.image(slot)
            r = pipe.image_result(float(shipped.p_defective[i]), True, boxes, scores, labels,
                                  shipped.scale_factors[i], shipped.original_sizes[i], len(batch))
            want = expected[i]
            assert r.verdict == want.verdict and r.class_names == want.class_names
            torch.testing.assert_close(r.boxes, want.boxes, atol=1e-4, rtol=0)
            torch.testing.assert_close(r.scores, want.scores, atol=1e-4, rtol=0)
            assert torch.equal(r.labels, want.labels)
    for i in set(range(5)) - set(positives):
        assert not expected[i].ran_detector
        assert float(shipped.p_defective[i]) == pytest.approx(expected[i].p_defective, abs=1e-6)
    assert gated.timings_ms["gate"] > 0 and "select" in gated.timings_ms


def test_gate_to_host_without_positives(run_engine: Path) -> None:
    pipe = Pipeline.from_engine(run_engine, gate_threshold=2.0)  # nothing passes
    gated = pipe.gate_to_host(images(2))
    assert gated.features is None and gated.index.numel() == 0 and not gated.ran_detector.any()
    with pytest.raises(IndexError):
        gated.positive_features(0)
    with pytest.raises(ConfigError, match="at least one image"):
        pipe.detect_on_host({}, torch.zeros(0, 2, dtype=torch.int64))
