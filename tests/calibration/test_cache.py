"""The calibration cache hits only for the same graphs, images and settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from calibration_helpers import SCALE
from PIL import Image

from defectnet.calibration import (
    CalibrationCache,
    CalibrationSettings,
    calibrate_engine,
    onnxruntime_flavour,
    select_calibration_set,
    tensorrt_flavour,
)
from defectnet.calibration.calibrate import cache_key
from defectnet.runtime import Engine

FLAVOURS = [tensorrt_flavour(), onnxruntime_flavour()]


def _sources(engine: Engine, graphs: dict[str, Path]) -> dict[str, str]:
    return {g: engine.manifest.graphs[g].sha256 for g in graphs}


def test_cache_hit_reuses_identical_ranges_and_misses_on_changes(tiny_engine: Engine, tiny_data: Path,
                                                                 prepared: dict[str, Path], tmp_path: Path) -> None:
    cache = CalibrationCache(tmp_path / "cache")
    calib = select_calibration_set(tiny_data, 4, scale=SCALE)
    settings = CalibrationSettings()
    kwargs = {"gate_threshold": tiny_engine.gate_threshold, "cache": cache, "workdir": tmp_path, "threads": 2}
    first = calibrate_engine(prepared, _sources(tiny_engine, prepared), calib, settings, FLAVOURS, **kwargs)
    again = calibrate_engine(prepared, _sources(tiny_engine, prepared), calib, settings, FLAVOURS, **kwargs)
    assert (first.cache_hit, again.cache_hit) == (False, True)
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    def dump(r: dict) -> str:
        return json.dumps(r, cls=CalibrationCacheEncoder, sort_keys=True)

    assert dump(first.ranges) == dump(again.ranges)
    assert again.provenance["detector_images"] == first.provenance["detector_images"]

    base = cache_key(prepared, _sources(tiny_engine, prepared), calib, settings, FLAVOURS, tiny_engine.gate_threshold)
    assert cache.load(base) is not None

    # a changed model (another graph file) never reuses the ranges
    changed = dict(prepared)
    other = tmp_path / "gate.changed.onnx"
    import onnx

    m = onnx.load(str(prepared["gate"]))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    onnx.save(m, str(other))
    changed["gate"] = other
    assert cache.load(cache_key(changed, _sources(tiny_engine, prepared), calib, settings, FLAVOURS,
                                tiny_engine.gate_threshold)) is None
    # changed data: same file names, one image's pixels differ
    data2 = tmp_path / "data2"
    shutil.copytree(tiny_data, data2)
    calib2 = select_calibration_set(data2, 4, scale=SCALE)
    assert cache.load(cache_key(prepared, _sources(tiny_engine, prepared), calib2, settings, FLAVOURS,
                                tiny_engine.gate_threshold)) is not None  # a byte-identical copy still hits
    path = data2 / "images" / calib2.images[0].file_name
    Image.fromarray(np.zeros((96, 192, 3), np.uint8)).save(path)
    calib3 = select_calibration_set(data2, 4, scale=SCALE)
    assert cache.load(cache_key(prepared, _sources(tiny_engine, prepared), calib3, settings, FLAVOURS,
                                tiny_engine.gate_threshold)) is None
    # changed settings
    for changed_settings in (CalibrationSettings(method="percentile"), CalibrationSettings(chunk_size=3)):
        assert cache.load(cache_key(prepared, _sources(tiny_engine, prepared), calib, changed_settings, FLAVOURS,
                                    tiny_engine.gate_threshold)) is None
    assert cache.load(cache_key(prepared, _sources(tiny_engine, prepared), calib, settings, FLAVOURS[:1],
                                tiny_engine.gate_threshold)) is None
    assert cache.load(cache_key(prepared, _sources(tiny_engine, prepared), calib, settings, FLAVOURS, 0.9)) is None


def test_tampered_entry_is_not_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from defectnet.calibration import CacheKey

    cache = CalibrationCache(tmp_path)
    key = CacheKey({"graph": "a"})
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    ranges = {"gate": TensorsData(CalibrationMethod.MinMax, {"x": (np.float32(-1), np.float32(2))})}
    path = cache.save(key, ranges, {"note": 1})
    assert path is not None
    loaded = cache.load(key)
    assert loaded is not None and loaded[1] == {"note": 1}
    assert float(loaded[0]["gate"]["x"].range_value[1]) == 2.0
    stored = json.loads(path.read_text())
    stored["material"] = {"graph": "b"}  # e.g. an entry copied from another model under this name
    path.write_text(json.dumps(stored))
    assert cache.load(key) is None
    assert "does not hold the expected key material" in caplog.text
    assert CalibrationCache(None).load(key) is None and CalibrationCache(None).save(key, ranges) is None
