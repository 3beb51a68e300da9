"""The conditional pipeline: only gate-positive images reach the detector graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from runtime_helpers import CLASSES, images

from defectnet.model import TwoModel
from defectnet.runtime import Backend, OnnxRuntimeBackend, Pipeline, RawDetections, TorchBackend, load_engine


class Counting(Backend):
    """Wraps a backend and records the batch size of every graph call."""

    name = "counting"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []

    def load(self) -> None:
        self.inner.load()

    def run_classifier(self, images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        self.calls.append(("classifier", len(images)))
        return self.inner.run_classifier(images, sizes)

    def run_gate(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, Any]:
        self.calls.append(("gate", len(images)))
        return self.inner.run_gate(images, sizes)

    def select(self, features: Any, index: torch.Tensor) -> Any:
        return self.inner.select(features, index)

    def run_detector(self, features: Any, sizes: torch.Tensor) -> RawDetections:
        self.calls.append(("detector", len(sizes)))
        return self.inner.run_detector(features, sizes)


def _pipeline(engine_dir: Path, threshold: float | None = None) -> tuple[Pipeline, Counting]:
    engine = load_engine(engine_dir)
    backend = Counting(OnnxRuntimeBackend(engine))
    pipe = Pipeline(backend, kind=engine.kind, class_names=engine.class_names,
                    gate_threshold=engine.gate_threshold if threshold is None else threshold,
                    preprocessor=engine.preprocessor)
    return pipe, backend


def test_normal_images_never_run_the_detector(run_engine: Path) -> None:
    batch = images(4)
    probe, _ = _pipeline(run_engine, threshold=2.0)
    p = [r.p_defective for r in probe.run(batch)]
    assert len(set(np.round(p, 6))) == 4, f"the tiny gate should separate the images, got {p}"
    threshold = float(np.median(p))
    pipe, counter = _pipeline(run_engine, threshold)
    results = pipe.run(batch)
    positives = [i for i, x in enumerate(p) if x >= threshold]
    assert counter.calls == [("gate", 4), ("detector", len(positives))]
    for i, r in enumerate(results):
        assert r.ran_detector == (i in positives)
        assert abs(r.p_defective - p[i]) < 1e-6
        if i not in positives:
            assert r.verdict == "OK" and len(r.scores) == 0 and r.boxes.shape == (0, 4)
        assert r.timings_ms["gate"] > 0 and r.timings_ms["detector"] > 0  # the batch's stages, shared
    # a batch of normal images only: the detector graph is never called, and no detector time is booked
    normal = [batch[i] for i in range(4) if i not in positives]
    counter.calls.clear()
    normal_results = pipe.run(normal)
    assert all(not r.ran_detector for r in normal_results)
    assert counter.calls == [("gate", len(normal))]
    assert all("detector" not in r.timings_ms and r.timings_ms["gate"] > 0 for r in normal_results)


def test_results_in_original_coordinates_match_torch(run_engine: Path) -> None:
    batch = images(3, seed=1)
    ort = Pipeline.from_engine(run_engine, "onnxruntime", gate_threshold=0.0)
    ref = Pipeline.from_engine(run_engine, "torch", gate_threshold=0.0)
    assert isinstance(ref.backend, TorchBackend)
    for im, a, b in zip(batch, ort.run(batch), ref.run(batch)):
        assert a.ran_detector and b.ran_detector
        assert a.original_size == (im.shape[1], im.shape[2])
        assert abs(a.p_defective - b.p_defective) < 1e-4
        assert len(a.scores) == len(b.scores) > 0
        assert a.verdict == b.verdict == "NG"
        torch.testing.assert_close(a.scores[:10], b.scores[:10], atol=1e-4, rtol=0)
        torch.testing.assert_close(a.boxes[:10], b.boxes[:10], atol=0.05, rtol=0)
        assert float(a.boxes[:, 2].max()) <= im.shape[2] and float(a.boxes[:, 3].max()) <= im.shape[1]
        assert set(a.class_names) <= set(CLASSES)
        assert {"preprocess", "gate", "select", "detector", "postprocess"} <= set(a.timings_ms)
        json_record = a.to_json()
        assert json_record["detections"][0]["class_name"] in CLASSES


def test_features_stay_ortvalues_and_select_gathers(run_engine: Path) -> None:
    import onnxruntime as ort

    backend = OnnxRuntimeBackend(load_engine(run_engine))
    batch = torch.randint(0, 256, (3, 3, 96, 128), dtype=torch.uint8)
    sizes = torch.tensor([[96, 128], [80, 128], [96, 100]])
    p, feats = backend.run_gate(batch, sizes)
    assert p.shape == (3,) and all(isinstance(v, ort.OrtValue) for v in feats.values())
    assert backend.select(feats, torch.arange(3)) is feats  # everything selected: no copy
    sub = backend.select(feats, torch.tensor([2, 0]))
    assert all(isinstance(v, ort.OrtValue) for v in sub.values())
    np.testing.assert_array_equal(sub["c3"].numpy(), feats["c3"].numpy()[[2, 0]])


def test_two_model_pipeline_runs_backbone_on_positives_only(two_model_engine: tuple[Path, TwoModel]) -> None:
    engine_dir, model = two_model_engine
    batch = images(4, seed=2)
    probe, _ = _pipeline(engine_dir, threshold=2.0)
    p = [r.p_defective for r in probe.run(batch)]
    threshold = float(np.median(p))
    pipe, counter = _pipeline(engine_dir, threshold)
    results = pipe.run(batch)
    k = sum(x >= threshold for x in p)
    assert 0 < k < 4
    assert counter.calls == [("classifier", 4), ("gate", k), ("detector", k)]
    assert [r.ran_detector for r in results] == [x >= threshold for x in p]
    ref = Pipeline(TorchBackend(model), kind="two-model", class_names=CLASSES, gate_threshold=threshold,
                   preprocessor=pipe.preprocessor).run(batch)
    for a, b in zip(results, ref):
        assert a.ran_detector == b.ran_detector and abs(a.p_defective - b.p_defective) < 1e-4
        assert len(a.scores) == len(b.scores)


def test_bad_threshold_rejected(run_engine: Path) -> None:
    from defectnet.errors import ConfigError

    with pytest.raises(ConfigError, match="gate_threshold"):
        Pipeline.from_engine(run_engine, gate_threshold=float("nan"))


def test_ort_threads_do_not_spin_unless_asked(run_engine: Path) -> None:
    quiet, spinning = OnnxRuntimeBackend(load_engine(run_engine)), OnnxRuntimeBackend(
        load_engine(run_engine), allow_spinning=True)
    quiet.load()
    spinning.load()
    for backend, want in ((quiet, "0"), (spinning, "1")):
        for session in backend._sessions.values():
            assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == want
