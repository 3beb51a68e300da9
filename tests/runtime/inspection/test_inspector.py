"""The Inspector: batching, pipelining, back-pressure, deadlines, post-filter, metrics, review,
thread safety. Most tests use a fast fake backend; the engine-backed ones use ``run_engine``."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from runtime_helpers import CLASSES

from defectnet.errors import ConfigError
from defectnet.runtime import Backend, Pipeline, RawDetections
from defectnet.runtime.inspection.inspector import (
    InspectionResult,
    Inspector,
    InspectorBusyError,
    InspectorClosedError,
    PostFilter,
)
from defectnet.runtime.inspection.review import ReviewConfig

pytestmark = pytest.mark.timeout(120)


class FakeBackend(Backend):
    """P(defective) = mean of the image's red channel / 255; one box per positive image
    (label 1 ``hole``, score 0.9, 16x16 px at the top-left); optional sleeps and a poison
    colour (a frame whose top-left pixel is (7, 7, 7) makes the graph raise)."""

    name = "fake"

    def __init__(self, gate_sleep: float = 0.0, detector_sleep: float = 0.0) -> None:
        self.gate_sleep, self.detector_sleep = gate_sleep, detector_sleep
        self.events: list[tuple[str, str, float, int]] = []
        self._lock = threading.Lock()

    def _log(self, what: str, edge: str, n: int) -> None:
        with self._lock:
            self.events.append((what, edge, time.perf_counter(), n))

    @staticmethod
    def _poisoned(images: torch.Tensor) -> bool:
        return bool((images[:, :, 0, 0] == 7).all(1).any())

    def run_gate(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, Any]:
        self._log("gate", "start", len(images))
        time.sleep(self.gate_sleep)
        if self._poisoned(images):
            raise RuntimeError("poisoned frame in the batch")
        p = torch.stack([images[i, 0, : int(h), : int(w)].float().mean() / 255 for i, (h, w) in enumerate(sizes)])
        self._log("gate", "end", len(images))
        return p, images

    def select(self, features: Any, index: torch.Tensor) -> Any:
        return features[index]

    def run_detector(self, features: Any, sizes: torch.Tensor) -> RawDetections:
        self._log("detector", "start", len(sizes))
        time.sleep(self.detector_sleep)
        b = len(sizes)
        boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(b, 1, 1)
        out = RawDetections(boxes, torch.full((b, 1), 0.9), torch.ones(b, 1, dtype=torch.int64),
                            torch.ones(b, dtype=torch.int64))
        self._log("detector", "end", b)
        return out


def fake_pipeline(threshold: float = 0.5, **kw: Any) -> Pipeline:
    from defectnet.data.transforms import Preprocessor

    return Pipeline(FakeBackend(**kw), kind="defectnet", class_names=CLASSES, gate_threshold=threshold,
                    preprocessor=Preprocessor(scale=(128, 96)))


def frame(red: int, h: int = 48, w: int = 64) -> np.ndarray:
    a = np.full((h, w, 3), 60, np.uint8)
    a[:, :, 0] = red
    return a


def test_stream_batches_and_keeps_submission_order() -> None:
    reds = [200, 20, 220, 10, 30, 240, 15]
    with Inspector(fake_pipeline(), batch_size=3, max_wait_ms=200) as insp:
        futures = [insp.submit(frame(r), key=f"f{i}") for i, r in enumerate(reds)]
        insp.submit("no/such/file.png")
    records = list(insp.results())
    assert [r.key for r in records] == [f"f{i}" for i in range(7)] + ["no/such/file.png"]
    assert [r.verdict for r in records[:7]] == ["NG" if r > 127 else "OK" for r in reds]
    assert records[-1].verdict == "ERROR" and records[-1].reason == "not_found"
    assert all(f.done() and f.result() is rec for f, rec in zip(futures, records))
    assert [r.sequence for r in records] == list(range(8))
    assert max(r.batch_size for r in records[:7]) == 3  # grouped up to batch_size
    ng = records[0]
    assert ng.ran_detector and ng.class_names == ["hole"] and ng.boxes.shape == (1, 4)
    # boxes come back in original pixels: 16 px at the 128x96 model scale of a 64x48 frame = 8 px
    assert ng.boxes[0].tolist() == pytest.approx([0, 0, 8, 8])
    stats = insp.stats()
    assert stats["submitted"] == stats["results"] == 8 and stats["ng"] == 3 and stats["errors"] == 1
    assert stats["gate_pass_rate"] == pytest.approx(3 / 7)
    with pytest.raises(InspectorClosedError):
        insp.submit(frame(1))


def test_the_caller_may_reuse_its_buffer_after_submit() -> None:
    array = frame(250)
    tensor = torch.from_numpy(frame(250)).permute(2, 0, 1).contiguous()
    with Inspector(fake_pipeline(gate_sleep=0.05), batch_size=1, max_wait_ms=0) as insp:
        a = insp.submit(array, key="numpy")
        array[:] = 0  # a camera SDK refilling its buffer with the next frame
        b = insp.submit(tensor, key="torch")
        tensor.zero_()
    assert a.result().verdict == b.result().verdict == "NG"


def test_max_wait_flushes_a_partial_batch() -> None:
    with Inspector(fake_pipeline(), batch_size=8, max_wait_ms=5) as insp:
        t0 = time.perf_counter()
        record = insp.inspect(frame(10))
        assert time.perf_counter() - t0 < 2.0 and record.batch_size == 1 and record.verdict == "OK"


def test_gate_of_next_batch_overlaps_the_detector() -> None:
    pipe = fake_pipeline(threshold=0.0, gate_sleep=0.05, detector_sleep=0.3)
    with Inspector(pipe, batch_size=2, max_wait_ms=200) as insp:
        for i in range(4):
            insp.submit(frame(100), key=i)
    events = pipe.backend.events  # type: ignore[attr-defined]
    det1_end = next(t for what, edge, t, _ in events if what == "detector" and edge == "end")
    gate_starts = [t for what, edge, t, _ in events if what == "gate" and edge == "start"]
    assert len(gate_starts) >= 2 and gate_starts[1] < det1_end  # batch 2's gate ran during batch 1's detector
    assert len(list(insp.results())) == 4


def test_back_pressure_blocks_then_raises_and_close_loses_nothing() -> None:
    insp = Inspector(fake_pipeline(gate_sleep=0.2), batch_size=1, max_in_flight=2, max_wait_ms=0)
    insp.submit(frame(1), key=0)
    insp.submit(frame(2), key=1)
    with pytest.raises(InspectorBusyError, match="no room"):
        insp.submit(frame(3), key=2, timeout=0.01)
    insp.submit(frame(4), key=3)  # blocks until the first frame is out, then is accepted
    insp.close()
    assert [r.key for r in insp.results()] == [0, 1, 3]
    insp.close()  # idempotent


def test_close_drains_a_burst_from_several_threads() -> None:
    seen: list[InspectionResult] = []
    insp = Inspector(fake_pipeline(), batch_size=4, max_in_flight=8, on_result=seen.append)

    def producer(t: int) -> None:
        for i in range(25):
            insp.submit(frame((i * 37) % 256) if i % 5 else np.zeros((3, 3)), key=(t, i))

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    insp.close()
    assert len(seen) == 100 and len({r.key for r in seen}) == 100
    assert sum(r.reason == "too_small" for r in seen) == 20
    assert [r.sequence for r in seen] == list(range(100))
    with pytest.raises(ConfigError, match="keep_results"):
        next(insp.results())


def test_backend_failure_isolates_the_poisoned_frame() -> None:
    poisoned = np.full((48, 64, 3), 7, np.uint8)
    with Inspector(fake_pipeline(), batch_size=4, max_wait_ms=100) as insp:
        keys = ["a", "b", "poison", "c"]
        for k in keys:
            insp.submit(poisoned if k == "poison" else frame(200), key=k)
    records = {r.key: r for r in insp.results()}
    assert records["poison"].verdict == "ERROR" and records["poison"].reason == "backend_error"
    assert "poisoned frame" in records["poison"].message
    assert all(records[k].verdict == "NG" for k in "abc")


def test_deadlines_are_reported_and_counted() -> None:
    with Inspector(fake_pipeline(gate_sleep=0.05), batch_size=1, max_wait_ms=0, deadline_ms=1) as insp:
        for i in range(3):
            insp.submit(frame(200), key=i)
    records = list(insp.results())
    assert len(records) == 3 and all(r.deadline_missed and r.verdict == "NG" for r in records)
    assert all(r.latency_ms > 1 and r.deadline_ms == 1 for r in records)
    assert insp.stats()["deadline_misses"] == 3
    assert metric_samples(insp.metrics_text())["defectnet_inspector_deadline_misses_total"] == 3

    # policy 'skip': frames already late when their batch forms get a timeout record instead
    with Inspector(fake_pipeline(gate_sleep=0.1), batch_size=1, max_wait_ms=0, deadline_policy="skip") as insp:
        insp.submit(frame(200), key="first", deadline_ms=None)
        for i in range(2):
            insp.submit(frame(200), key=i, deadline_ms=5)
    records = list(insp.results())
    assert records[0].verdict == "NG" and not records[0].deadline_missed
    assert [r.reason for r in records[1:]] == ["timeout", "timeout"] and all(r.deadline_missed for r in records[1:])
    assert insp.stats()["errors_by_reason"] == {"timeout": 2} and insp.stats()["deadline_misses"] == 2


def test_post_filter_class_thresholds_and_min_area() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 2, 2], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.3])
    f = PostFilter(class_thresholds={"hole": 0.4}, default_score=0.35, min_area=5)
    assert f.keep(boxes, scores, ["hole", "hole", "stain"]).tolist() == [True, False, False]
    with pytest.raises(ConfigError, match="unknown classes"):
        PostFilter(class_thresholds={"crack": 0.5}).check(CLASSES)
    pipe = fake_pipeline()
    with Inspector(pipe, post_filter=PostFilter(class_thresholds={"hole": 0.95})) as strict, \
            Inspector(pipe, post_filter=PostFilter(min_area=100.0)) as big, Inspector(pipe) as plain:
        a, b, c = strict.inspect(frame(250)), big.inspect(frame(250)), plain.inspect(frame(250))
    assert c.verdict == "NG" and len(c.scores) == 1 and c.suppressed == 0
    for r in (a, b):  # the gate passed it, the post-filter removed the only box: OK
        assert r.ran_detector and r.verdict == "OK" and r.suppressed == 1 and len(r.scores) == 0
    assert strict.stats()["detections_suppressed"] == 1


def metric_families(text: str) -> dict[str, Any]:
    """Family name -> parsed family (prometheus_client's own parser: the text must parse)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def metric_samples(text: str) -> dict[str, float]:
    """``name{label="v",...}`` (labels sorted) -> value of every sample in ``text``."""
    out = {}
    for family in metric_families(text).values():
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_metrics_text_is_prometheus_exposition_format() -> None:
    from defectnet.runtime.inspection.validation import Reason

    with Inspector(fake_pipeline(), batch_size=2, max_wait_ms=200) as insp:
        for r in (200, 10, 230):
            insp.submit(frame(r))
        insp.submit(np.full((20, 20), np.nan, np.float32))
    list(insp.results())
    text = insp.metrics_text()
    p = "defectnet_inspector_"
    families = metric_families(text)
    assert all(name.startswith(p) for name in families)
    created = {name for name in families if name.endswith("_created")}  # prometheus_client's default
    assert all(families[name].type == "gauge" for name in created) and len(created) == 13
    kinds = {name.removeprefix(p): f.type for name, f in families.items() if name not in created}
    assert kinds == {
        "frames_submitted": "counter", "results": "counter", "errors": "counter", "deadline_misses": "counter",
        "gate_images": "counter", "gate_passed": "counter", "gate_pass_rate": "gauge",
        "detections_suppressed": "counter", "batch_size": "histogram", "latency_seconds": "histogram",
        "latency_recent_seconds": "summary", "stage_seconds": "histogram", "review_images": "counter",
        "review_dropped": "counter", "callback_errors": "counter", "in_flight": "gauge", "queued_frames": "gauge",
        "gate_threshold": "gauge"}
    v = metric_samples(text)
    assert v[p + "frames_submitted_total"] == 4
    assert [v[f'{p}results_total{{verdict="{k}"}}'] for k in ("OK", "NG", "ERROR")] == [1, 2, 1]
    errors = {k: n for k, n in v.items() if k.startswith(p + "errors_total")}
    assert errors == {f'{p}errors_total{{reason="{r.value}"}}': float(r == Reason.NON_FINITE) for r in Reason}
    assert v[p + "gate_images_total"] == 3 and v[p + "gate_passed_total"] == 2
    assert v[p + "gate_pass_rate"] == pytest.approx(2 / 3)
    # 3 valid frames, submitted at once with 200 ms to fill a batch of 2: batches of 2 and 1
    assert v[p + "batch_size_count"] == 2 and v[p + "batch_size_sum"] == 3
    assert v[p + 'batch_size_bucket{le="1.0"}'] == 1 and v[p + 'batch_size_bucket{le="2.0"}'] == 2
    assert v[p + 'latency_seconds_bucket{le="+Inf"}'] == 4 and v[p + "latency_seconds_count"] == 4
    assert v[p + "latency_recent_seconds_count"] == 4
    assert v[p + "latency_recent_seconds_sum"] == pytest.approx(v[p + "latency_seconds_sum"])
    q50, q99 = v[p + 'latency_recent_seconds{quantile="0.5"}'], v[p + 'latency_recent_seconds{quantile="0.99"}']
    assert 0 < q50 <= q99 <= v[p + "latency_seconds_sum"]
    assert v[p + 'stage_seconds_count{stage="gate"}'] == 2
    assert v[p + "deadline_misses_total"] == v[p + "detections_suppressed_total"] == 0
    assert v[p + 'review_images_total{kind="ng"}'] == v[p + 'review_images_total{kind="borderline"}'] == 0
    assert v[p + "in_flight"] == v[p + "queued_frames"] == 0 and v[p + "gate_threshold"] == 0.5
    stats = insp.stats()
    assert stats["p50_ms"] == pytest.approx(q50 * 1e3) and stats["p99_ms"] == pytest.approx(q99 * 1e3)
    assert stats["batches"] == 2 and stats["mean_batch_size"] == 1.5 and stats["errors_by_reason"] == {
        "non_finite": 1}


def test_a_fresh_inspector_exports_zeros_and_nan_rates() -> None:
    with Inspector(fake_pipeline()) as insp:
        v = metric_samples(insp.metrics_text())
        stats = insp.stats()
    p = "defectnet_inspector_"
    assert math.isnan(v[p + "gate_pass_rate"]) and math.isnan(v[p + 'latency_recent_seconds{quantile="0.5"}'])
    assert v[p + 'results_total{verdict="OK"}'] == v[p + "latency_recent_seconds_count"] == 0
    assert stats["gate_pass_rate"] is None and stats["p50_ms"] is None and stats["results"] == 0


def test_two_inspectors_do_not_mix_their_series() -> None:
    with Inspector(fake_pipeline()) as a, Inspector(fake_pipeline(threshold=0.9)) as b:
        for r in (250, 240, 10):
            a.inspect(frame(r))
        b.inspect(frame(10))
        va, vb = metric_samples(a.metrics_text()), metric_samples(b.metrics_text())
    p = "defectnet_inspector_"
    assert va[p + "frames_submitted_total"] == 3 and vb[p + "frames_submitted_total"] == 1
    assert va[p + 'results_total{verdict="NG"}'] == 2 and vb[p + 'results_total{verdict="NG"}'] == 0
    assert va[p + "gate_threshold"] == 0.5 and vb[p + "gate_threshold"] == 0.9
    assert a.registry is not b.registry
    # nothing went to prometheus_client's process-wide default registry
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value(p + "frames_submitted_total") is None


def test_review_saves_ng_and_borderline_frames_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "review"
    folder.mkdir()
    (folder / "0000_old_ng_x.png").write_bytes(b"old")  # from an earlier run: the oldest, pruned first
    review = ReviewConfig(folder, band=0.05, max_images=3)
    with Inspector(fake_pipeline(threshold=0.5), batch_size=2, review=review) as insp:
        reds = {"ng1": 250, "ng2": 240, "border": 120, "normal": 10, "ng3": 200}  # 120/255 = 0.47: borderline
        for k, r in reds.items():
            insp.submit(frame(r), key=k)
    records = {r.key: r for r in insp.results()}
    assert records["normal"].review_image is None
    assert all(records[k].review_image for k in ("ng1", "ng2", "border", "ng3"))
    assert "_borderline_border.png" in str(records["border"].review_image)
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 3 and not (folder / "0000_old_ng_x.png").exists()
    assert [p.name.split("_", 2)[2] for p in pngs] == ["ng_ng2.png", "borderline_border.png", "ng_ng3.png"]
    for p in pngs:
        assert Image.open(p).size == (64, 48) and p.with_suffix(".json").is_file()
    assert metric_samples(insp.metrics_text())['defectnet_inspector_review_images_total{kind="ng"}'] == 3


def test_bad_options_are_config_errors() -> None:
    pipe = fake_pipeline()
    for kwargs in ({"batch_size": 0}, {"deadline_ms": -1}, {"deadline_policy": "drop"},
                   {"max_in_flight": 1, "batch_size": 4}):
        with pytest.raises(ConfigError):
            Inspector(pipe, **kwargs)


# ----------------------------------------------------------------------------- the real engine
def test_four_threads_match_a_sequential_run(run_engine: Path) -> None:
    g = torch.Generator().manual_seed(3)
    frames = [torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8) for _ in range(12)]
    with Inspector.from_engine(run_engine, batch_size=4, max_wait_ms=20) as insp:
        probe = [insp.pipeline.gate_stage([f]).p_defective.item() for f in frames]
        insp.pipeline.gate_threshold = float(np.median(probe))  # about half the frames run the detector
        expected = [insp.pipeline.run([f])[0] for f in frames]
        got: dict[int, InspectionResult] = {}

        def worker(t: int) -> None:
            for i in range(t, 12, 4):
                if i % 2:
                    got[i] = insp.inspect(frames[i], key=i)
                else:
                    got[i] = insp.submit(frames[i], key=i).result()

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(got) == list(range(12))
    assert max(r.batch_size for r in got.values()) > 1  # the threads' frames were batched together
    for i, ref in enumerate(expected):
        r = got[i]
        assert r.verdict == ref.verdict and r.ran_detector == ref.ran_detector
        assert r.p_defective == pytest.approx(ref.p_defective, abs=1e-5)
        assert len(r.scores) == len(ref.scores)
        torch.testing.assert_close(r.scores, ref.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(r.boxes, ref.boxes, atol=1e-2, rtol=0)
    assert any(r.ran_detector for r in got.values()) and not all(r.ran_detector for r in got.values())
    assert len(list(insp.results())) == 6  # submit()ted frames are streamed, inspect()ed ones are not


def test_serve_metrics_answers_on_loopback_and_stops() -> None:
    import urllib.error
    import urllib.request

    insp = Inspector(fake_pipeline())
    insp.inspect(frame(200))
    server = insp.serve_metrics(0)  # 0: any free port; 127.0.0.1 by default
    assert server.host == "127.0.0.1" and server.port > 0 and server.running
    with urllib.request.urlopen(server.url, timeout=10) as response:
        text = response.read().decode()
    assert metric_samples(text)['defectnet_inspector_results_total{verdict="NG"}'] == 1
    assert text == insp.metrics_text()  # the same registry (nothing changed in between)
    with pytest.raises(ConfigError, match="choose a free port"):
        insp.serve_metrics(server.port)  # taken
    stopped = insp.serve_metrics(0)
    stopped.shutdown()
    stopped.shutdown()  # idempotent
    assert not stopped.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(stopped.url, timeout=5)
    insp.close()  # stops the server it started
    assert not server.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)
    with pytest.raises(InspectorClosedError):
        insp.serve_metrics(0)
    with Inspector(fake_pipeline()) as other, pytest.raises(ConfigError, match="0..65535"):
        other.serve_metrics(70000)
