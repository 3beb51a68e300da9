"""The README's main command, shrunk: every stage runs and prints its result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from defectnet.demo import main


@pytest.mark.slow
def test_demo_runs_every_stage_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--out", str(tmp_path), "--images", "24", "--epochs", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    for stage in ("1. synthetic", "2. data statistics", "3. train const", "3. train one-model", "4. export const",
                  "4. export one-model", "5. INT8 engine", "6. defectnet-infer", "7. defectnet-bench"):
        assert stage in result.output
    assert "|defectnet_const|" in result.output and "|one-model|" in result.output
    assert "onnxruntime fp32" in result.output and "torch fp32" in result.output
    assert "onnxruntime int8" in result.output
    for metric in ("mAP", "AP50", "F1", "gate recall"):  # the build's INT8-vs-float32 comparison
        assert re.search(rf"\n +{metric} \d\.\d{{4}} vs \d\.\d{{4}} \(drop [+-]\d\.\d{{4}}", result.output), metric
    int8 = json.loads((tmp_path / "runs" / "const" / "engine-int8" / "manifest.json").read_text())
    assert int8["precision"] == "int8" and int8["accuracy"]["num_images"] > 0
    for run in ("const", "one-model"):
        assert (tmp_path / "runs" / run / "engine" / "manifest.json").is_file()
    assert (tmp_path / "bench" / "results.json").is_file()
    lines = (tmp_path / "infer" / "results.jsonl").read_text().splitlines()
    test_images = json.loads((tmp_path / "data" / "annotations" / "test.json").read_text())["images"]
    assert len(lines) == len(test_images)  # one record per input
