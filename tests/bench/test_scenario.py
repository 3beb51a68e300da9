"""Rows and cases: discovery of run and engine folders, backends, precisions, skips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from defectnet.bench.scenario import discover_rows, parse_backends, plan_cases
from defectnet.errors import ConfigError


def test_discover_from_runs_dir(bench_runs: Path) -> None:
    rows = discover_rows(runs_dir=bench_runs)
    assert [r.name for r in rows] == ["one-model", "defectnet_const"]     # the seed's order
    assert [r.kind for r in rows] == ["one-model", "defectnet"]
    assert [(e.path.name, e.precision) for e in rows[1].engines] == [("engine", "fp32"), ("engine-int8", "int8")]


def test_discover_from_engine_and_checkpoint(bench_runs: Path) -> None:
    rows = discover_rows(engines=[bench_runs / "const" / "engine"], checkpoints=[bench_runs / "one-model"])
    assert [r.name for r in rows] == ["one-model", "defectnet_const"]
    assert rows[1].run_dir == bench_runs / "const"                          # the engine's run folder
    assert {e.path.name for e in rows[1].engines} == {"engine", "engine-int8"}  # sibling found
    # the same engine twice (direct + via the run) is one row with one entry per folder
    again = discover_rows(engines=[bench_runs / "const" / "engine-int8"], checkpoints=[bench_runs / "const"])
    assert len(again) == 1 and len(again[0].engines) == 2


def test_plan_cases_and_skips(bench_runs: Path) -> None:
    rows = discover_rows(runs_dir=bench_runs)
    cases, skips = plan_cases(rows, ["torch", "onnxruntime", "tensorrt"], tensorrt_unavailable="no GPU here")
    assert [c.key for c in cases] == ["one-model | torch fp32", "one-model | onnxruntime fp32",
                                      "defectnet_const | torch fp32", "defectnet_const | onnxruntime fp32",
                                      "defectnet_const | onnxruntime int8"]
    assert [(s.row, s.backend, s.reason) for s in skips] == [("(all rows)", "tensorrt", "no GPU here")]
    cases, skips = plan_cases(rows, ["tensorrt"])  # TensorRT "available" but no plans in the manifests
    assert not cases and all("no TensorRT plans" in s.reason for s in skips) and len(skips) == 2


def test_tensorrt_folder(bench_runs: Path, tmp_path: Path) -> None:
    run = tmp_path / "const"
    shutil.copytree(bench_runs / "const", run)
    trt = run / "engine-fp16-tensorrt"
    shutil.copytree(run / "engine", trt)
    manifest = json.loads((trt / "manifest.json").read_text())
    manifest.update(precision="fp16", backend="tensorrt", tensorrt={"engines": {"gate": {"file": "gate.plan"}}})
    (trt / "manifest.json").write_text(json.dumps(manifest))
    rows = discover_rows(checkpoints=[run])
    cases, skips = plan_cases(rows, ["onnxruntime", "tensorrt"])
    assert [c.label for c in cases] == ["onnxruntime fp32", "onnxruntime int8", "tensorrt fp16"]
    assert [s.reason for s in skips] == ["engine-fp16-tensorrt was built for tensorrt (manifest 'backend')"]


def test_engine_only_row_without_source(bench_runs: Path, tmp_path: Path) -> None:
    engine = tmp_path / "loose"
    shutil.copytree(bench_runs / "const" / "engine", engine)
    manifest = json.loads((engine / "manifest.json").read_text())
    manifest["source"] = {"checkpoint": None}
    (engine / "manifest.json").write_text(json.dumps(manifest))
    rows = discover_rows(engines=[engine])
    assert rows[0].name == "defectnet_const" and rows[0].run_dir is None
    cases, skips = plan_cases(rows, ["torch", "onnxruntime"])
    assert [c.label for c in cases] == ["onnxruntime fp32"]
    assert skips[0].backend == "torch" and "no PyTorch model" in skips[0].reason


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to benchmark"):
        discover_rows()
    with pytest.raises(ConfigError, match="not an engine folder"):
        discover_rows(engines=[tmp_path])
    with pytest.raises(ConfigError, match="unknown backend"):
        parse_backends("torch,tflite")
    assert parse_backends(" ONNXRuntime,torch,onnxruntime") == ["onnxruntime", "torch"]
