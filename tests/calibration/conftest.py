"""Session fixtures of the calibration tests: tiny synthetic data, one exported tiny engine,
its ORT-optimised float32 graphs, one MinMax calibration and both Q/DQ flavours."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from calibration_helpers import SCALE, Quantized, synthetic_data, tiny_model

from defectnet.calibration import (
    CalibrationCache,
    CalibrationSettings,
    calibrate_engine,
    onnxruntime_flavour,
    optimize_basic,
    quantize_graph,
    select_calibration_set,
    tensorrt_flavour,
)
from defectnet.data.coco import load_split
from defectnet.export import export_engine
from defectnet.model_source import ModelSource
from defectnet.runtime import Engine, load_engine


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_data(tmp_path_factory.mktemp("calib-data") / "fabric", images=16)


@pytest.fixture(scope="session")
def tiny_engine(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    torch.set_num_threads(2)
    ds = load_split(tiny_data, "train", scale=SCALE)
    out = tmp_path_factory.mktemp("calib-engine") / "engine"
    export_engine(ModelSource(tiny_model(ds.num_classes), list(ds.class_names), variant="const", scale=SCALE), out,
                  verify=False)
    return load_engine(out)


@pytest.fixture(scope="session")
def prepared(tiny_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("prepared")
    return {g: optimize_basic(p, tmp / f"{g}.fp32.onnx") for g, p in tiny_engine.graphs.items()}


@pytest.fixture(scope="session")
def quantized(tiny_engine: Engine, tiny_data: Path, prepared: dict[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    tmp = tmp_path_factory.mktemp("qdq")
    calib = select_calibration_set(tiny_data, 8, scale=SCALE)
    flavours = [tensorrt_flavour(), onnxruntime_flavour()]
    sources = {g: tiny_engine.manifest.graphs[g].sha256 for g in prepared}
    cal = calibrate_engine(prepared, sources, calib, CalibrationSettings(), flavours,
                           gate_threshold=tiny_engine.gate_threshold, cache=CalibrationCache(None), workdir=tmp,
                           threads=2)
    files: dict[str, dict[str, Path]] = {}
    for flav in flavours:
        files[flav.name] = {g: quantize_graph(p, cal.ranges[g], flav, tmp / f"{g}.{flav.name}.onnx", graph=g).path
                            for g, p in prepared.items()}
    return Quantized(cal, files)
