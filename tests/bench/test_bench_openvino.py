"""defectnet-bench with OpenVINO and per-graph engines: an ``openvino`` column per precision
built (one-model and const rows, so quantization's speed-up and the gate's are separate
columns of the same table) and an ``auto`` column naming each graph's choice, end to end
(--quick) on tiny models. Skipped where openvino is not installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from defectnet.bench.cli import main
from defectnet.bench.scenario import discover_rows, plan_cases
from defectnet.engine_build import BuildOptions, Tolerances, build_engine
from defectnet.runtime.backends.openvino import openvino_available

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
LOOSE = Tolerances(1.0, 1.0, 1.0, 1.0)
CANDIDATES = ["onnxruntime fp32", "openvino fp32", "onnxruntime int8", "openvino int8 (onnxruntime Q/DQ)",
              "openvino int8 (tensorrt Q/DQ)"]


def _timings(fast: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    return {g: {n: [1.0 if n == fast[g] else 9.0 if "fp32" in n else 5.0] for n in CANDIDATES} for g in fast}


@pytest.fixture(scope="module")
def ov_runs(bench_runs: Path, bench_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bench runs plus OpenVINO INT8 engines of both rows, an OpenVINO fp32 const engine and
    a mixed (ONNX Runtime INT8 gate, OpenVINO INT8 detector) const engine."""
    runs = tmp_path_factory.mktemp("bench-ov") / "runs"
    shutil.copytree(bench_runs, runs)
    common = {"data_dir": bench_data, "calib_size": 6, "threads": 1, "tolerances": LOOSE, "log": lambda _: None,
              "cache_dir": runs.parent / "calibration-cache"}  # const's two INT8 builds share one calibration
    for run in ("one-model", "const"):
        build_engine(runs / run / "engine", runs / run / "engine-int8-openvino",
                     BuildOptions(precision="int8", backend="openvino", **common))  # type: ignore[arg-type]
    build_engine(runs / "const" / "engine", runs / "const" / "engine-fp32-openvino",
                 BuildOptions(precision="fp32", backend="openvino", **common))  # type: ignore[arg-type]
    build_engine(runs / "const" / "engine", runs / "const" / "engine-int8-auto",
                 BuildOptions(precision="int8", backend="auto", **common,  # type: ignore[arg-type]
                              timings=_timings({"gate": "onnxruntime int8",
                                                "detector": "openvino int8 (onnxruntime Q/DQ)"})))
    return runs


def test_cases_per_backend_and_precision(ov_runs: Path) -> None:
    rows = discover_rows(runs_dir=ov_runs)
    cases, skips = plan_cases(rows, ["torch", "onnxruntime", "openvino", "auto"])
    assert [c.key for c in cases] == [
        "one-model | torch fp32", "one-model | onnxruntime fp32", "one-model | openvino int8",
        "defectnet_const | torch fp32", "defectnet_const | onnxruntime fp32", "defectnet_const | onnxruntime int8",
        "defectnet_const | openvino fp32", "defectnet_const | openvino int8",
        "defectnet_const | auto: gate onnxruntime int8, detector openvino int8"]
    assert sorted(s.reason for s in skips) == [
        "engine-fp32-openvino was built for openvino (manifest 'backend')",
        "engine-int8-auto was built for auto (manifest 'backend')",
        "engine-int8-openvino was built for openvino (manifest 'backend')",
        "engine-int8-openvino was built for openvino (manifest 'backend')"]


def test_quick_bench_times_openvino_and_mixed_engines(ov_runs: Path, bench_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    r = CliRunner().invoke(main, ["--runs-dir", str(ov_runs), "--data", str(bench_data), "--out", str(out), "--quick",
                                  "--threads", "1", "--batch", "1", "--no-progress", "--no-plots",
                                  "--backends", "torch,onnxruntime,openvino,auto"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    data = json.loads((out / "results.json").read_text())
    got = {(c["row"], c["label"]): c for c in data["cases"]}
    for key in [("one-model", "openvino int8"), ("defectnet_const", "openvino int8"),
                ("defectnet_const", "openvino fp32"),
                ("defectnet_const", "auto: gate onnxruntime int8, detector openvino int8")]:
        case = got[key]
        assert case["metrics"]["att_ms"] > 0 and case["stages_ms"]["gate"] > 0, key
    # every column has its own one-model row where one was built: quantization and gating apart
    assert "openvino int8" in r.output and "auto: gate onnxruntime int8" in r.output
