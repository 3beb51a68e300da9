"""The typed engine manifest: exact JSON round trip (exported and built folders), every
validation error with its fix, and the string enums that keep old folders and records
readable."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from defectnet.errors import EngineError
from defectnet.io import sha256_file
from defectnet.runtime import load_engine
from defectnet.runtime.manifest import (
    SCHEMA_VERSION,
    GraphEntry,
    Manifest,
    ManifestError,
    Preprocessing,
    write_manifest,
)
from defectnet.runtime.types import BackendName, EngineKind, Precision, Verdict


def _exported(run_engine: Path) -> dict[str, Any]:
    return json.loads((run_engine / "manifest.json").read_text())


def _built(exported: dict[str, Any]) -> dict[str, Any]:
    """An exported manifest with every block defectnet-build-engine and
    defectnet-calibrate-gate add, shaped as they write them."""
    m = copy.deepcopy(exported)
    m.update(precision="int8", backend="tensorrt", verification=None, created="2026-01-01T00:00:00+00:00")
    m["build"] = {"tool": "defectnet-build-engine", "source_engine": "/runs/const/engine",
                  "source_graphs_sha256": {g: e["sha256"] for g, e in m["graphs"].items()},
                  "source_verified": True, "graph_optimization": "onnxruntime basic",
                  "calibration_threads": "onnxruntime default"}
    m["quantization"] = {"calibration": {"method": {"gate": "minmax"}}, "float_regions": {"gate": []},
                         "flavour": "tensorrt",
                         "flavours": {"tensorrt": {"activations": "int8", "graphs": {"gate": {"file": "gate.onnx"}}}}}
    m["tensorrt"] = {"engines": {g: {"file": f"{g}.plan", "sha256": "a" * 64, "bytes": 10, "header": {"gpu": "x"}}
                                 for g in m["graphs"]},
                     "platform": {"tensorrt": "10.0"}, "profile": {"min": [1, 32, 32]}, "timing_cache": "/tmp/t",
                     "network": "strongly typed"}
    m["accuracy"] = {"split": "test", "num_images": 4, "reference": {"mAP": 0.5, "att_ms": 9.0},
                     "engine": {"mAP": 0.49, "att_ms": 3.0}, "drops": {"mAP": 0.01}, "tolerances": {"max_map_drop": 0.01},
                     "passed": True, "failed": [], "summary": ["mAP 0.4900 vs 0.5000"], "reference_source": "PyTorch"}
    m["gate_calibration"] = {"threshold": 0.25, "target_recall": 0.995, "recall": 1.0, "pass_rate": 0.5,
                             "normal_pass_rate": 0.1, "images": 8, "defective": 4, "normal": 4, "escapes": 0,
                             "margin": None, "split": "test", "backend": "onnxruntime",
                             "previous_threshold": 0.5, "created": "2026-01-01T00:00:00+00:00"}
    m["fp16"] = {"converter": "x", "graphs": {}}  # an untyped block: kept in extra
    m["future_block"] = {"anything": [1, 2]}  # a field this version does not know: kept as written
    return m


# ----------------------------------------------------------------------------- round trip
def test_exported_folder_loads_typed(run_engine: Path) -> None:
    """An engine folder exported today: typed fields, enums, and no build."""
    engine = load_engine(run_engine)
    m = engine.manifest
    assert isinstance(m, Manifest) and m.kind is EngineKind.DEFECTNET and engine.kind is EngineKind.DEFECTNET
    assert m.precision is Precision.FP32 and m.backend is None and not m.is_built and not m.has_tensorrt_plans
    assert m.class_names == ("hole", "stain") and m.preprocessing.scale == (320, 256)
    assert m.preprocessing.preprocessor() == engine.preprocessor and m.detections_per_img == engine.detections_per_img
    assert set(m.graphs) == {"gate", "detector"}
    for name, entry in m.graphs.items():
        assert entry.file == f"{name}.onnx" and entry.sha256 == sha256_file(run_engine / entry.file)
        assert entry.size == (run_engine / entry.file).stat().st_size and entry.inputs and entry.outputs
    assert m.source is not None and m.source.checkpoint == str(run_engine.parent.resolve())
    assert m.source.variant == "const" == m.variant and m.source.model_config["num_classes"] == 2
    assert len(m.source.weights_sha256) == 1
    assert m.verification is None  # exported with verify=False
    assert m.tensorrt_check is not None and m.tensorrt_check.supported and m.tensorrt_check.problems == []
    assert {"gate", "exporter", "versions"} <= set(m.extra)


def test_exported_manifest_round_trips_byte_for_byte(run_engine: Path, tmp_path: Path) -> None:
    data = _exported(run_engine)
    manifest = Manifest.from_json(data, run_engine)
    assert manifest.to_json() == data
    write_manifest(tmp_path, manifest)
    assert (tmp_path / "manifest.json").read_bytes() == (run_engine / "manifest.json").read_bytes()
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_built_manifest_round_trips(run_engine: Path) -> None:
    data = _built(_exported(run_engine))
    m = Manifest.from_json(data)
    assert json.dumps(m.to_json(), sort_keys=True) == json.dumps(data, sort_keys=True)
    assert (m.precision, m.backend) == (Precision.INT8, BackendName.TENSORRT) and m.is_built
    assert m.build is not None and m.build.source_engine == "/runs/const/engine" and m.build.source_verified
    assert m.quantization is not None and m.quantization.flavour is BackendName.TENSORRT
    assert m.has_tensorrt_plans and m.tensorrt is not None and m.tensorrt.engines["gate"].file == "gate.plan"
    assert m.accuracy is not None and m.accuracy.passed and m.accuracy.engine_att_ms == 3.0
    assert m.accuracy.reference_att_ms == 9.0 and m.accuracy.summary == ("mAP 0.4900 vs 0.5000",)
    assert m.gate_calibration is not None and m.gate_calibration.threshold == 0.25
    assert m.gate_calibration.previous_threshold == 0.5 and m.gate_calibration.extra["images"] == 8
    assert m.extra["fp16"] == {"converter": "x", "graphs": {}} and m.extra["future_block"] == {"anything": [1, 2]}


def test_skipped_accuracy_gate_round_trips(run_engine: Path) -> None:
    data = _built(_exported(run_engine))
    data["accuracy"] = {"passed": None, "skipped": "no --data: the accuracy gate needs a test split"}
    m = Manifest.from_json(data)
    assert m.accuracy is not None and m.accuracy.passed is None and m.accuracy.skipped
    assert m.to_json()["accuracy"] == data["accuracy"]


def test_minimal_legacy_manifest_loads(run_engine: Path) -> None:
    """Only the fields the first runtime required (an old, hand-trimmed folder) still load."""
    data = _exported(run_engine)
    keep = ("format", "schema_version", "kind", "graphs", "class_names", "gate_threshold", "preprocessing",
            "detections_per_img")
    legacy = {k: data[k] for k in keep}
    legacy["graphs"] = {g: {"file": e["file"], "sha256": e["sha256"]} for g, e in data["graphs"].items()}
    legacy["preprocessing"] = {"scale": data["preprocessing"]["scale"], "size_divisor": 32}
    m = Manifest.from_json(legacy)
    assert m.source is None and m.variant == "" and m.precision is Precision.FP32 and m.graphs["gate"].size is None
    assert {k: v for k, v in m.to_json().items() if k not in ("variant", "verification")} == legacy


def test_the_manifest_is_validated_on_creation() -> None:
    pre = Preprocessing((320, 256), 32)
    graphs = {"gate": GraphEntry("gate.onnx", "0" * 64), "detector": GraphEntry("detector.onnx", "1" * 64)}
    m = Manifest(kind="one-model", graphs=graphs, class_names=["a"], gate_threshold=0.5,  # type: ignore[arg-type]
                 preprocessing=pre, detections_per_img=10, precision="int8", backend="onnxruntime")  # type: ignore[arg-type]
    assert m.kind is EngineKind.ONE_MODEL and m.precision is Precision.INT8 and m.backend is BackendName.ONNXRUNTIME
    assert m.class_names == ("a",)
    with pytest.raises(ManifestError, match="classifier graph entry"):
        replace(m, kind=EngineKind.TWO_MODEL)
    with pytest.raises(ManifestError, match="unknown precision 'fp8'"):
        replace(m, precision="fp8")
    with pytest.raises(ManifestError, match="'torch' is not an engine target"):
        replace(m, backend=BackendName.TORCH)
    with pytest.raises(ManifestError, match="gate_threshold"):
        replace(m, gate_threshold=float("nan"))
    with pytest.raises(ManifestError, match="plain file name"):
        GraphEntry("../gate.onnx", "0" * 64)
    with pytest.raises(EngineError, match="preprocessing block"):
        Preprocessing((10, 5), 32)


# ----------------------------------------------------------------------------- validation errors
REEXPORT = r"re-export it with defectnet-export --model NAME --out "


def _set(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.update(fields)


def _pop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.pop(key)


@pytest.mark.parametrize("change, message", [
    (_pop("kind"), r"field 'kind' is missing"),
    (_pop("class_names"), r"field 'class_names' is missing"),
    (_pop("detections_per_img"), r"field 'detections_per_img' is missing"),
    (_pop("preprocessing"), r"field 'preprocessing' is missing"),
    (lambda m: m["preprocessing"].pop("size_divisor"), r"field 'preprocessing.size_divisor' is missing"),
    (lambda m: m["graphs"]["detector"].pop("file"), r"lacks the detector graph entry \(file \+ sha256\)"),
    (lambda m: m["graphs"].pop("gate"), r"lacks the gate graph entry"),
    (_set(gate_threshold="0.5"), r"field 'gate_threshold' must be a finite number, got a string"),
    (_set(detections_per_img=True), r"field 'detections_per_img' must be an integer, got a boolean"),
    (_set(detections_per_img=0), r"detections_per_img must be >= 1"),
    (_set(class_names=["a", 2]), r"field 'class_names' must be a list of strings"),
    (_set(graphs=[]), r"field 'graphs' must be an object, got a list"),
    (_set(source={"checkpoint": 3}), r"field 'source.checkpoint' must be a string"),
    (lambda m: m["graphs"]["gate"].update(bytes="many"), r"field 'graphs.gate.bytes' must be an integer"),
    (_set(preprocessing={"scale": [320], "size_divisor": 32}), r"'preprocessing.scale' must be two integers"),
    (_set(kind="three-model"), r"unknown engine kind 'three-model' \(known: defectnet, one-model, two-model\)"),
    (_set(precision="fp8"), r"unknown precision 'fp8' \(known: fp32, fp16, int8, bf16, mixed\)"),
    (_set(backend="directml"), r"unknown backend 'directml' \(known: onnxruntime, torch, tensorrt, openvino, auto\)"),
    (_set(tensorrt={"engines": {"gate": {"sha256": "x"}}}), r"field 'tensorrt.engines.gate.file' is missing"),
    (_set(verification={"runs": []}), r"field 'verification.passed' is missing"),
])
def test_invalid_field(run_engine: Path, change: Callable[[dict[str, Any]], None], message: str) -> None:
    data = _exported(run_engine)
    change(data)
    with pytest.raises(EngineError, match=message) as err:
        Manifest.from_json(data, run_engine)
    assert f"engine folder {run_engine}: manifest.json: " in str(err.value)
    assert str(err.value).endswith(f"re-export it with defectnet-export --model NAME --out {run_engine}")


def test_invalid_built_folder_says_rebuild(run_engine: Path) -> None:
    data = _built(_exported(run_engine))
    data["quantization"]["flavour"] = "directml"
    with pytest.raises(EngineError, match=r"unknown quantization.flavour 'directml'.*rebuild it with "
                                          r"defectnet-build-engine --engine /runs/const/engine --out /e$"):
        Manifest.from_json(data, "/e")


@pytest.mark.parametrize("data, message", [
    ([1, 2], "is not a defectnet-engine manifest"),
    ({"format": "onnx"}, "is not a defectnet-engine manifest"),
    ({"format": "defectnet-engine", "schema_version": "1"}, "schema_version '1', not an integer"),
])
def test_not_a_manifest(data: Any, message: str) -> None:
    with pytest.raises(EngineError, match=message + ".*" + REEXPORT):
        Manifest.from_json(data, "/e")


def test_older_schema_version_says_reexport(run_engine: Path) -> None:
    data = _exported(run_engine)
    data["schema_version"] = SCHEMA_VERSION - 1
    with pytest.raises(EngineError, match=rf"written by an older defectnet \(schema {SCHEMA_VERSION - 1}; this one "
                                          rf"reads {SCHEMA_VERSION}\); {REEXPORT}/e$"):
        Manifest.from_json(data, "/e")


def test_newer_schema_version_says_upgrade(run_engine: Path) -> None:
    data = _exported(run_engine)
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(EngineError, match=rf"written by a newer defectnet \(schema {SCHEMA_VERSION + 1}, this one "
                                          rf"reads {SCHEMA_VERSION}\); upgrade defectnet \(pip install -U defectnet\) "
                                          r"or re-export it with this version: defectnet-export --model NAME --out /e$"):
        Manifest.from_json(data, "/e")


# ----------------------------------------------------------------------------- enums
def test_enums_are_their_strings() -> None:
    """Old folders and records compare and serialise unchanged."""
    assert Precision("int8") is Precision.INT8 and BackendName.ONNXRUNTIME == "onnxruntime"
    assert EngineKind.ONE_MODEL == "one-model" and Verdict.NG == "NG" and f"{Verdict.ERROR}" == "ERROR"
    assert json.dumps({"verdict": Verdict.OK, BackendName.TORCH: [Precision.FP16]}) == \
        '{"verdict": "OK", "torch": ["fp16"]}'
    assert "two-model" in set(EngineKind) and {Precision.FP32: 1}["fp32"] == 1


# ----------------------------------------------------------------------------- readers
def test_tensorrt_backend_reads_the_typed_plans(run_engine: Path) -> None:
    """The TensorRT backend finds its plans and the ONNX hashes they must match in the typed
    manifest (no GPU needed: nothing is loaded)."""
    from defectnet.runtime.backends.trt import TensorRtBackend
    from defectnet.runtime.engine import engine_from_manifest
    from defectnet.runtime.manifest import PlanEntry, TensorRtPlans

    engine = load_engine(run_engine)
    with pytest.raises(EngineError, match="has no TensorRT engines.*defectnet-build-engine --backend tensorrt"):
        TensorRtBackend(engine, "cuda").plan_paths()
    plans = TensorRtPlans({g: PlanEntry(f"{g}.plan") for g in engine.graphs})
    built = engine_from_manifest(run_engine, replace(engine.manifest, tensorrt=plans, precision=Precision.FP16,
                                                     backend=BackendName.TENSORRT))
    paths = TensorRtBackend(built, "cuda").plan_paths()
    assert paths == {g: (run_engine / f"{g}.plan", engine.manifest.graphs[g].sha256) for g in engine.graphs}
    partial = engine_from_manifest(run_engine, replace(built.manifest, tensorrt=TensorRtPlans(
        {"gate": PlanEntry("gate.plan")})))
    with pytest.raises(EngineError, match="lacks the TensorRT detector engine"):
        TensorRtBackend(partial, "cuda").plan_paths()
