"""The OpenVINO backend against ONNX Runtime on the same float32 graphs (parity within 1e-4),
its feature handling (fresh tensors per gate run, ROI / Gather selection, host round trip),
the inference precision it always sets, and per-graph ("auto") engines that mix ONNX
Runtime and OpenVINO. Skipped where openvino is not installed, except the import check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from runtime_helpers import images

from defectnet.errors import BackendUnavailableError, ConfigError, EngineError
from defectnet.runtime import Pipeline, load_engine
from defectnet.runtime.backends import BackendOptions, OnnxRuntimeBackend, make_backend
from defectnet.runtime.backends.openvino import openvino_available
from defectnet.runtime.backends.per_graph import PerGraphBackend
from defectnet.runtime.engine import Engine
from defectnet.runtime.manifest import write_manifest
from defectnet.runtime.types import BackendName, Precision

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
TOL = 1e-4


def _batch(engine: Engine, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    batch = engine.preprocessor(images(n, seed))
    return batch.images, torch.tensor(batch.image_sizes, dtype=torch.int64)


@pytest.fixture(scope="module")
def pair(run_engine: Path) -> tuple[Engine, OnnxRuntimeBackend, Any]:
    """The tiny engine loaded once on ONNX Runtime and on OpenVINO (2 threads each)."""
    if not openvino_available():
        pytest.skip("openvino is not installed")
    engine = load_engine(run_engine)
    options = BackendOptions(threads=2)
    ort, ov = make_backend(engine, "onnxruntime", options), make_backend(engine, "openvino", options)
    ort.load()
    ov.load()
    return engine, ort, ov  # type: ignore[return-value]


def _max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(x - y).max()) if x.size else 0.0


def _same_detections(a: object, b: object, tol: float = TOL) -> None:
    assert a.count.tolist() == b.count.tolist()  # type: ignore[attr-defined]
    for i in range(len(a)):  # type: ignore[arg-type]
        (ba, sa, la), (bb, sb, lb) = a.image(i), b.image(i)  # type: ignore[attr-defined]
        assert torch.equal(la, lb)
        assert _max_diff(sa, sb) <= tol
        # box coordinates are pixels up to ~320: 1e-4 relative to the coordinate
        assert float(((ba - bb).abs() / ba.abs().clamp(min=1.0)).max()) <= tol if ba.numel() else True


@needs_openvino
def test_fp32_parity_with_onnxruntime(pair: tuple[Engine, OnnxRuntimeBackend, Any]) -> None:
    engine, ort, ov = pair
    x, s = _batch(engine)
    p_ort, f_ort = ort.run_gate(x, s)
    p_ov, f_ov = ov.run_gate(x, s)  # type: ignore[attr-defined]
    assert _max_diff(p_ort, p_ov) <= TOL
    host_ort, host_ov = ort.features_to_host(f_ort), ov.features_to_host(f_ov)  # type: ignore[attr-defined]
    for level in ("c2", "c3", "c4", "c5"):
        assert host_ov[level].shape == host_ort[level].shape and host_ov[level].dtype == np.float32
        assert _max_diff(host_ort[level], host_ov[level]) <= TOL, level
    det_ort = ort.run_detector(f_ort, s)
    det_ov = ov.run_detector(f_ov, s)  # type: ignore[attr-defined]
    assert int(det_ort.count.sum()) > 0
    _same_detections(det_ort, det_ov)


@needs_openvino
@pytest.mark.parametrize("index", [[0, 1, 2], [1, 2], [2], [0, 2], [2, 0]])
def test_sub_batch_selection_matches_onnxruntime(pair: tuple[Engine, OnnxRuntimeBackend, Any],
                                                 index: list[int]) -> None:
    """Consecutive sub-batches are ROI views, others go through the Gather graph; the
    detector gives ONNX Runtime's detections either way."""
    engine, ort, ov = pair
    x, s = _batch(engine)
    idx = torch.tensor(index)
    f_ort, f_ov = ort.run_gate(x, s)[1], ov.run_gate(x, s)[1]  # type: ignore[attr-defined]
    sel_ov = ov.select(f_ov, idx)  # type: ignore[attr-defined]
    assert [int(sel_ov[k].shape[0]) for k in sel_ov] == [len(index)] * 4
    assert np.array_equal(sel_ov["c5"].data, ov.features_to_host(f_ov)["c5"][index])  # type: ignore[attr-defined]
    _same_detections(ort.run_detector(ort.select(f_ort, idx), s[idx]),
                     ov.run_detector(sel_ov, s[idx]))  # type: ignore[attr-defined]


@needs_openvino
def test_features_survive_the_next_gate_run(run_engine: Path) -> None:
    """Each gate run writes new tensors: batch k's features (and a selection of them) stay
    valid while batch k+1 is gated (the Inspector overlaps the two)."""
    engine = load_engine(run_engine)
    ov = make_backend(engine, "openvino", BackendOptions(threads=2))
    x, s = _batch(engine)
    _, feats = ov.run_gate(x, s)
    view = ov.select(feats, torch.tensor([1, 2]))
    before = ov.features_to_host(feats)
    before_view = ov.features_to_host(view)
    ov.run_gate(*_batch(engine, seed=5))
    after, after_view = ov.features_to_host(feats), ov.features_to_host(view)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(np.array_equal(before_view[k], after_view[k]) for k in before_view)


@needs_openvino
def test_host_features_round_trip(run_engine: Path) -> None:
    """features_to_host copies; features_from_host shares the arrays' memory and gives the
    same detections (the cross-process path of Pipeline.gate_to_host / detect_on_host)."""
    engine = load_engine(run_engine)
    ov = make_backend(engine, "openvino", BackendOptions(threads=2))
    x, s = _batch(engine, n=2)
    _, feats = ov.run_gate(x, s)
    host = ov.features_to_host(feats)
    assert all(host[k].ctypes.data != feats[k].data.ctypes.data for k in host)
    back = ov.features_from_host(host)
    assert all(back[k].data.ctypes.data == host[k].ctypes.data for k in host)  # no copy
    _same_detections(ov.run_detector(feats, s), ov.run_detector(back, s), tol=0.0)


@needs_openvino
def test_inference_precision_is_always_set(run_engine: Path, tmp_path: Path) -> None:
    """f32 unless the graph entry names another (OpenVINO's own default on a bf16 CPU is bf16)."""
    engine = load_engine(run_engine)
    ov = make_backend(engine, "openvino")
    ov.load()
    hint = {g: str(r.compiled.get_property("INFERENCE_PRECISION_HINT")) for g, r in ov._graphs.items()}  # type: ignore[attr-defined]
    assert all("f32" in v or "float32" in v for v in hint.values()), hint
    folder = _per_graph_folder(engine, tmp_path / "bf16", {"gate": "openvino", "detector": "openvino"},
                               inference_precision={"gate": "bf16"})
    ov2 = make_backend(load_engine(folder), "openvino")
    assert ov2.inference_precision("gate") == "bf16" and ov2.inference_precision("detector") == "f32"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="openvino backend runs on the CPU"):
        make_backend(engine, "openvino", BackendOptions(device="cuda"))


@needs_openvino
def test_pipeline_on_openvino_matches_onnxruntime(run_engine: Path) -> None:
    ims = images(4, seed=3)
    a = Pipeline.from_engine(run_engine, "onnxruntime", gate_threshold=0.0).run(ims)
    b = Pipeline.from_engine(run_engine, "openvino", gate_threshold=0.0).run(ims)
    for ra, rb in zip(a, b):
        assert ra.verdict == rb.verdict and abs(ra.p_defective - rb.p_defective) <= TOL
        assert torch.equal(ra.labels, rb.labels) and _max_diff(ra.scores, rb.scores) <= TOL


# ----------------------------------------------------------------------------- per-graph engines
def _per_graph_folder(engine: Engine, out: Path, backends: dict[str, str],
                      inference_precision: dict[str, str] | None = None) -> Path:
    """A copy of ``engine``'s folder whose manifest names a backend per graph."""
    out.mkdir(parents=True)
    for path in engine.graphs.values():
        shutil.copyfile(path, out / path.name)
    m = engine.manifest
    graphs = dict(m.graphs)
    for g, b in backends.items():
        graphs[g] = replace(graphs[g], backend=BackendName(b), precision=Precision.FP32,
                            inference_precision=(inference_precision or {}).get(g))
    names = set(backends.values())
    write_manifest(out, replace(m, graphs=graphs, backend=names.pop() if len(names) == 1 else BackendName.AUTO,
                                precision=Precision.FP32))
    return out


@needs_openvino
@pytest.mark.parametrize("gate, detector", [("onnxruntime", "openvino"), ("openvino", "onnxruntime")])
def test_mixed_engine_runs_end_to_end(run_engine: Path, tmp_path: Path, gate: str, detector: str) -> None:
    engine = load_engine(run_engine)
    folder = _per_graph_folder(engine, tmp_path / "mixed", {"gate": gate, "detector": detector})
    mixed = load_engine(folder)
    assert mixed.manifest.backend == BackendName.AUTO
    assert (mixed.manifest.graph_backend("gate"), mixed.manifest.graph_backend("detector")) == (gate, detector)
    backend = make_backend(mixed, "auto", BackendOptions(threads=2))
    assert isinstance(backend, PerGraphBackend) and backend.describe() == {"gate": gate, "detector": detector}
    backend.load()
    # each graph's backend loaded only its own graph
    assert set(backend.gate.engine.graphs) == {"gate"} and set(backend.detector.engine.graphs) == {"detector"}  # type: ignore[attr-defined]
    # the hand-over between the runtimes copies nothing on the CPU
    x, s = _batch(engine)
    _, feats = backend.run_gate(x, s)
    arrays = backend.gate.features_as_arrays(feats)
    handed = backend.detector.features_from_arrays(arrays)
    ptr = (lambda v: v.data.ctypes.data) if detector == "openvino" else (lambda v: v.data_ptr())
    assert all(ptr(handed[k]) == arrays[k].ctypes.data for k in arrays)
    ims = images(5, seed=7)
    ref = Pipeline.from_engine(run_engine, "onnxruntime", gate_threshold=0.0).run(ims)
    got = Pipeline.from_engine(folder, "auto", gate_threshold=0.0).run(ims)
    for ra, rb in zip(ref, got):
        assert ra.verdict == rb.verdict and abs(ra.p_defective - rb.p_defective) <= TOL
        assert torch.equal(ra.labels, rb.labels) and _max_diff(ra.scores, rb.scores) <= TOL
    # a threshold that sends a sub-batch to the detector (selection on the gate's backend)
    p = torch.tensor([r.p_defective for r in ref])
    threshold = float(p.median())
    ref = Pipeline.from_engine(run_engine, "onnxruntime", gate_threshold=threshold).run(ims)
    got = Pipeline.from_engine(folder, "auto", gate_threshold=threshold).run(ims)
    assert [r.ran_detector for r in ref] == [r.ran_detector for r in got] and 0 < sum(r.ran_detector for r in got) < 5
    for ra, rb in zip(ref, got):
        assert torch.equal(ra.labels, rb.labels) and _max_diff(ra.scores, rb.scores) <= TOL


@needs_openvino
def test_auto_assembles_what_the_manifest_says(run_engine: Path, tmp_path: Path) -> None:
    engine = load_engine(run_engine)
    assert isinstance(make_backend(engine, "auto"), OnnxRuntimeBackend)  # a plain export
    folder = _per_graph_folder(engine, tmp_path / "ov", {"gate": "openvino", "detector": "openvino"})
    backend = make_backend(load_engine(folder), "auto")
    assert backend.name == BackendName.OPENVINO and not isinstance(backend, PerGraphBackend)


def test_per_graph_entries_are_validated(run_engine: Path) -> None:
    entry = load_engine(run_engine).manifest.graphs["gate"]
    with pytest.raises(EngineError, match="a graph runs on onnxruntime, openvino or tensorrt"):
        replace(entry, backend=BackendName.AUTO)
    with pytest.raises(EngineError, match="inference_precision 'int4'"):
        replace(entry, inference_precision="int4")
    with pytest.raises(EngineError, match="one graph has one precision"):
        replace(entry, precision=Precision.MIXED)


def test_package_imports_and_fails_clearly_without_openvino(run_engine: Path) -> None:
    code = (
        "import sys; sys.modules['openvino'] = None\n"
        "import defectnet.runtime, defectnet.engine_build, defectnet.bench.scenario\n"
        "from defectnet.runtime.backends import make_backend\n"
        "from defectnet.runtime import load_engine\n"
        "from defectnet.errors import BackendUnavailableError\n"
        f"b = make_backend(load_engine({str(run_engine)!r}), 'openvino')\n"
        "try:\n    b.load()\nexcept BackendUnavailableError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "ERR the openvino backend needs OpenVINO" in out and "pip install 'openvino" in out
    assert BackendUnavailableError  # the error type users catch


@needs_openvino
def test_a_graph_openvino_cannot_read_names_the_graph(run_engine: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(run_engine, folder)
    (folder / "gate.onnx").write_bytes(b"not an onnx graph")
    backend = make_backend(load_engine(folder, check_hashes=False), "openvino")
    with pytest.raises(EngineError, match="OpenVINO cannot compile the gate graph of .*re-export it"):
        backend.load()


@needs_openvino
def test_auto_fp32_build_of_a_two_model_engine_without_data(two_model_engine: tuple[Path, object],
                                                            tmp_path: Path) -> None:
    """Without --data only fp32 candidates compete and the accuracy gate is recorded as
    skipped; the classifier graph gets its own choice like the others."""
    from defectnet.engine_build import BuildOptions, build_engine

    root, _ = two_model_engine
    names = ["onnxruntime fp32", "openvino fp32"]
    timings = {"classifier": {names[0]: [2.0], names[1]: [1.0]}, "gate": {names[0]: [1.0], names[1]: [2.0]},
               "detector": {names[0]: [3.0, 3.0], names[1]: [2.0, 2.5]}}
    out = tmp_path / "engine-auto"
    m = build_engine(root, out, BuildOptions(precision=None, backend="auto", timings=timings, log=lambda _: None))
    assert m.selection is not None and m.selection.chosen == {"classifier": "openvino fp32",
                                                              "gate": "onnxruntime fp32", "detector": "openvino fp32"}
    assert (m.backend, m.precision) == (BackendName.AUTO, Precision.FP32)
    assert m.accuracy is not None and m.accuracy.passed is None and "no --data" in (m.accuracy.skipped or "")
    backend = make_backend(load_engine(out), "auto")
    assert isinstance(backend, PerGraphBackend)
    assert backend.describe() == {"classifier": "openvino", "gate": "onnxruntime", "detector": "openvino"}
    ims = images(3, seed=2)
    ref = Pipeline.from_engine(root, "onnxruntime", gate_threshold=0.0).run(ims)
    got = Pipeline.from_engine(out, "auto", gate_threshold=0.0).run(ims)
    for ra, rb in zip(ref, got):
        assert abs(ra.p_defective - rb.p_defective) <= TOL and ra.verdict == rb.verdict
        assert torch.equal(ra.labels, rb.labels) and _max_diff(ra.scores, rb.scores) <= TOL


@needs_openvino
@pytest.mark.parametrize("mixed", [False, True], ids=["openvino", "auto-ort-gate-ov-detector"])
def test_host_features_cross_a_process_boundary(run_engine: Path, tmp_path: Path, mixed: bool) -> None:
    """Pipeline.gate_to_host -> pickle -> detect_on_host gives run()'s detections, on OpenVINO
    and on a mixed engine (the gate's backend copies the features out, the detector's takes them)."""
    import pickle

    engine = load_engine(run_engine)
    folder = _per_graph_folder(engine, tmp_path / "mixed", {"gate": "onnxruntime", "detector": "openvino"}) \
        if mixed else run_engine
    pipe = Pipeline.from_engine(folder, "auto" if mixed else "openvino")
    batch = [im[:, :200, :300].contiguous() for im in images(5, seed=3)]
    pipe.gate_threshold = 2.0
    p = sorted(r.p_defective for r in pipe.run(batch))
    pipe.gate_threshold = p[2]  # three of five go to the detector
    expected = pipe.run(batch)
    shipped = pickle.loads(pickle.dumps(pipe.gate_to_host(batch)))
    assert shipped.index.tolist() == [i for i, r in enumerate(expected) if r.ran_detector] and len(shipped.index) == 3
    raw = pipe.detect_on_host(shipped.features, shipped.image_sizes)
    for k, i in enumerate(shipped.index.tolist()):
        boxes, scores, labels = raw.image(k)
        r = pipe.image_result(float(shipped.p_defective[i]), True, boxes, scores, labels, shipped.scale_factors[i],
                              shipped.original_sizes[i], len(batch))
        torch.testing.assert_close(r.boxes, expected[i].boxes, atol=1e-4, rtol=0)
        torch.testing.assert_close(r.scores, expected[i].scores, atol=1e-4, rtol=0)
        assert torch.equal(r.labels, expected[i].labels)
