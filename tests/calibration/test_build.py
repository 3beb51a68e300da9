"""defectnet-build-engine's library path: an INT8 ONNX Runtime engine folder with provenance
that the runtime loads unchanged, and the accuracy gate that rejects a build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from defectnet.calibration import CalibrationSettings
from defectnet.engine_build import BuildOptions, Tolerances, build_engine
from defectnet.errors import ConfigError, EngineError
from defectnet.runtime import Engine, Pipeline, load_engine
from defectnet.runtime.engine import MANIFEST_FILE
from defectnet.runtime.manifest import Manifest
from defectnet.runtime.types import BackendName, Precision

LOOSE = Tolerances(1.0, 1.0, 1.0, 1.0)  # a random-init model: the gate's mechanics are what is tested


@pytest.fixture(scope="module")
def int8_engine(tiny_engine: Engine, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "engine-int8"
    build_engine(tiny_engine.root, out, BuildOptions(precision="int8", data_dir=tiny_data, calib_size=8,
                                                     tolerances=LOOSE, threads=2, log=lambda _: None))
    return out


def test_int8_engine_folder_and_manifest(int8_engine: Path, tiny_engine: Engine) -> None:
    engine = load_engine(int8_engine)  # hashes of every graph checked
    m = engine.manifest
    on_disk = json.loads((int8_engine / MANIFEST_FILE).read_text())
    assert m.to_json() == on_disk and Manifest.from_json(on_disk) == m  # the typed manifest round-trips
    assert (on_disk["precision"], on_disk["backend"]) == ("int8", "onnxruntime")
    assert (m.precision, m.backend) == (Precision.INT8, BackendName.ONNXRUNTIME) and m.is_built
    q = m.quantization
    assert q is not None and q.flavour == "onnxruntime" and set(q.flavours) == {"tensorrt", "onnxruntime"}
    assert "uint8" in q.flavours["onnxruntime"]["activations"]
    assert q.flavours["tensorrt"]["bias"].startswith("float")
    for g in ("gate", "detector"):
        trt_file = int8_engine / q.flavours["tensorrt"]["graphs"][g]["file"]
        assert trt_file.is_file() and trt_file.name.endswith(".int8-tensorrt.onnx")
        assert q.flavours["onnxruntime"]["graphs"][g]["file"] == f"{g}.onnx"
        assert q.flavours["onnxruntime"]["graphs"][g]["sha256"] == m.graphs[g].sha256
        assert any(r["nodes"] for r in q.extra["float_regions"][g])
    cal = q.extra["calibration"]
    assert cal["method"] == {"gate": "minmax", "detector": "percentile"}
    assert cal["set"]["selected"] == 8 and cal["set"]["split"] == "train"
    assert cal["detector_images"]["images"] == 8 and cal["cache"]["key"]
    assert m.tensorrt_check is not None and m.tensorrt_check.supported  # the tensorrt flavour parses in TensorRT
    assert m.build is not None and m.build.source_engine == str(tiny_engine.root.resolve())
    assert m.build.source_graphs_sha256["gate"] == tiny_engine.manifest.graphs["gate"].sha256
    acc = m.accuracy
    assert acc is not None and acc.passed and acc.extra["split"] == "test"
    assert "PyTorch" in acc.extra["reference_source"]
    for key in ("mAP", "AP50", "F1", "gate_recall", "att_ms"):
        assert key in acc.engine and key in acc.reference


def test_int8_engine_runs_in_the_pipeline(int8_engine: Path, tiny_data: Path) -> None:
    from defectnet.data.image_io import read_image

    pipe = Pipeline.from_engine(int8_engine, "onnxruntime", gate_threshold=0.0)
    images = [read_image(p) for p in sorted((tiny_data / "images").iterdir())[:2]]
    results = pipe.run(images)
    assert len(results) == 2 and all(r.ran_detector for r in results)


def test_failed_accuracy_gate_leaves_no_manifest(tiny_engine: Engine, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rejected"
    with pytest.raises(EngineError, match=r"accuracy gate.*F1 .*FAILED.*manifest.rejected.json"):
        build_engine(tiny_engine.root, out, BuildOptions(precision="fp32", data_dir=tiny_data,
                                                         tolerances=Tolerances(1.0, 1.0, -1.0, 1.0),
                                                         log=lambda _: None))
    assert not (out / MANIFEST_FILE).exists()
    rejected = json.loads((out / "manifest.rejected.json").read_text())
    assert rejected["accuracy"]["passed"] is False and rejected["accuracy"]["failed"] == ["F1"]


def test_fp32_build_without_data_records_a_skipped_gate(tiny_engine: Engine, tmp_path: Path) -> None:
    m = build_engine(tiny_engine.root, tmp_path / "fp32", BuildOptions(log=lambda _: None))
    assert m.precision == "fp32" and m.backend == "onnxruntime" and m.accuracy is not None
    assert m.accuracy.passed is None and m.accuracy.skipped
    on_disk = json.loads((tmp_path / "fp32" / MANIFEST_FILE).read_text())
    assert on_disk["accuracy"] == {"passed": None, "skipped": m.accuracy.skipped}
    assert (on_disk["precision"], on_disk["backend"]) == ("fp32", "onnxruntime")
    assert load_engine(tmp_path / "fp32").graphs["gate"].name == "gate.onnx"


def test_option_errors(tiny_engine: Engine, int8_engine: Path, tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OpenVINO.*--backend openvino or auto.*--backend tensorrt"):
        BuildOptions(precision="fp16", backend="onnxruntime", data_dir=tiny_data).validate()
    with pytest.raises(ConfigError, match="needs --data"):
        BuildOptions(precision="int8").validate()
    with pytest.raises(ConfigError, match="already a built engine"):
        build_engine(int8_engine, tmp_path / "x", BuildOptions(log=lambda _: None))
    with pytest.raises(ConfigError, match="exported folder itself"):
        build_engine(tiny_engine.root, tiny_engine.root, BuildOptions(log=lambda _: None))
    with pytest.raises(ConfigError, match="method"):
        CalibrationSettings(method="kl")


def test_cli_tensorrt_without_tensorrt_fails_at_once(tiny_engine: Engine) -> None:
    from defectnet.engine_build.cli import main

    r = CliRunner().invoke(main, ["--int8", "--backend", "tensorrt", "--engine", str(tiny_engine.root)])
    assert r.exit_code == 1
    assert "needs an NVIDIA GPU with TensorRT (pip install tensorrt" in r.output
    r = CliRunner().invoke(main, ["--fp16", "--backend", "onnxruntime", "--engine", str(tiny_engine.root)])
    assert r.exit_code != 0 and "--backend openvino or auto" in r.output and "tensorrt" in r.output


def test_packages_import_without_tensorrt() -> None:
    import subprocess
    import sys

    code = ("import sys; import defectnet.calibration, defectnet.engine_build, defectnet.engine_build.cli, "
            "defectnet.runtime.backends.trt, defectnet.runtime.backends.trt.api; "
            "bad = [m for m in sys.modules if m == 'tensorrt' or m.startswith(('tensorrt.', 'onnxruntime'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert torch  # torch is imported by the package anyway
