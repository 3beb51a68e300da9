"""TensorRT backend: plan files with a provenance header, refusal of mismatched engines,
lazy import, the typed API view against the installed stubs, and (GPU + TensorRT only)
a real build compared with ONNX Runtime."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from defectnet.errors import BackendUnavailableError, EngineError
from defectnet.runtime import make_backend
from defectnet.runtime.backends.trt import (
    PLAN_MAGIC,
    check_plan,
    plan_header,
    read_plan,
    read_plan_header,
    tensorrt_available,
    write_plan,
)

HERE = {"tensorrt": "10.13.0", "cuda": "12.8", "gpu": "NVIDIA GeForce RTX 2080 Ti", "compute_capability": "7.5"}


def test_plan_file_roundtrip_and_corruption(tmp_path: Path) -> None:
    header = plan_header(graph="gate", platform=HERE, onnx_sha256="ab" * 32, precision="fp16",
                         profiles=[{"min": [1, 32, 32], "opt": [1, 576, 1344], "max": [4, 1344, 1344]}])
    path = write_plan(tmp_path / "gate.plan", header, b"\x01engine-bytes")
    got, plan = read_plan(path)
    assert plan == b"\x01engine-bytes" and got["precision"] == "fp16" and got["strongly_typed"] is True
    assert read_plan_header(path)["plan_bytes"] == len(plan) and path.read_bytes().startswith(PLAN_MAGIC)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(EngineError, match="truncated or corrupt"):
        read_plan(path)
    (tmp_path / "raw.plan").write_bytes(b"a bare TensorRT engine")
    with pytest.raises(EngineError, match="no provenance header"):
        read_plan(tmp_path / "raw.plan")


@pytest.mark.parametrize("change,needle", [
    ({"tensorrt": "10.9.0"}, "TensorRT 10.13.0 \\(built\\) vs 10.9.0"),
    ({"gpu": "NVIDIA A100", "compute_capability": "8.0"}, "compute capability 7.5"),
    ({"cuda": "13.0"}, "CUDA 12.8"),
])
def test_mismatched_plan_is_refused(change: dict[str, str], needle: str) -> None:
    header = {**HERE, "onnx_sha256": "x"}
    check_plan(header, HERE, onnx_sha256="x", root="eng", name="gate")  # same machine: fine
    with pytest.raises(EngineError, match=needle) as err:
        check_plan(header, {**HERE, **change}, onnx_sha256="x", root="eng", name="gate")
    assert "rebuild with defectnet-build-engine --backend tensorrt" in str(err.value)
    with pytest.raises(EngineError, match="ONNX graph SHA-256"):
        check_plan(header, HERE, onnx_sha256="y", root="eng", name="gate")


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is available here")
def test_backend_without_tensorrt_says_how_to_fix(tmp_path: Path) -> None:
    from defectnet.runtime import Engine

    engine = Engine(tmp_path, {}, {})  # type: ignore[arg-type]  # loading fails before the manifest is read
    backend = make_backend(engine, "tensorrt")
    with pytest.raises(BackendUnavailableError, match=r"needs an NVIDIA GPU with TensorRT \(pip install tensorrt"):
        backend.load()


def _stub_signatures() -> dict[tuple[str, str], list[list[str]]]:
    """(class, method) -> parameter-name lists of every overload in the installed stub text
    (the stub file itself does not parse, see defectnet.runtime.backends.trt.api)."""
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs are not installed")
    text = (Path(list(spec.submodule_search_locations)[0]) / "tensorrt.pyi").read_text()
    out: dict[tuple[str, str], list[list[str]]] = {}
    cls = None
    for line in text.splitlines():
        m = re.match(r"class (\w+)", line)
        if m:
            cls = m.group(1)
            continue
        m = re.match(r"    def (\w+)\((.*)\)", line)
        if m and cls:
            params = [p.split(":")[0].split("=")[0].strip() for p in m.group(2).split(",")]
            out.setdefault((cls, m.group(1)), []).append([p for p in params if p and p != "self"
                                                          and not p.startswith("self")])
    return out


def test_typed_api_matches_the_installed_stubs() -> None:
    from defectnet.runtime.backends.trt import api as trt_api

    stubs = _stub_signatures()
    names = {"Builder": "Builder", "IBuilderConfig": "IBuilderConfig", "IOptimizationProfile": "IOptimizationProfile",
             "INetworkDefinition": "INetworkDefinition", "OnnxParser": "OnnxParser", "ParserError": "ParserError",
             "Runtime": "Runtime", "ICudaEngine": "ICudaEngine", "IExecutionContext": "IExecutionContext",
             "ITimingCache": "ITimingCache"}
    checked = 0
    for ours, theirs in names.items():
        proto = getattr(trt_api, ours)
        for name, member in vars(proto).items():
            if name.startswith("_") or not callable(member):
                continue
            params = [p for p in inspect.signature(member).parameters if p != "self"]
            assert params in stubs.get((theirs, name), []), (ours, name, params, stubs.get((theirs, name)))
            checked += 1
    assert checked >= 20


@pytest.mark.tensorrt
def test_tensorrt_engine_matches_onnxruntime(run_engine: Path, tmp_path: Path) -> None:
    """On a GPU with TensorRT: build fp32 plans from the tiny export and compare with ORT."""
    import torch
    from runtime_helpers import images

    from defectnet.engine_build import BuildOptions, ShapeProfile, build_engine
    from defectnet.runtime import Pipeline

    out = tmp_path / "trt"
    profile = ShapeProfile((1, 32, 32), (1, 256, 320), (2, 320, 320))
    build_engine(run_engine, out, BuildOptions(backend="tensorrt", profile=profile, log=print))
    trt_pipe = Pipeline.from_engine(out, "tensorrt", gate_threshold=0.0)
    ort_pipe = Pipeline.from_engine(run_engine, "onnxruntime", gate_threshold=0.0)
    batch = images(2)
    for a, b in zip(trt_pipe.run(batch), ort_pipe.run(batch)):
        assert abs(a.p_defective - b.p_defective) < 1e-3
        n = min(len(a.scores), len(b.scores), 5)
        assert torch.allclose(a.scores[:n], b.scores[:n], atol=1e-2)
