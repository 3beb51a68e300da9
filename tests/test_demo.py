"""The README's main command, shrunk: every stage runs on the committed reference model and
prints its result; the summary is the bench's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from defectnet.bench.results import BenchResult
from defectnet.demo import gate_effects, main


@pytest.mark.slow
def test_demo_runs_every_stage_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--out", str(tmp_path), "--images", "24"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    for stage in ("0. the reference model", "1. synthetic", "2. data statistics", "3. train: DefectNet-const",
                  "4. export the reference", "5. build the fastest CPU engine", "6. gate threshold",
                  "7. defectnet-infer", "8. defectnet-bench", "9. summary"):
        assert stage in result.output, stage
    assert "weights SHA-256 checked" in result.output and "parity 256x640" in result.output
    run = json.loads((tmp_path / "runs" / "const-finetune" / "run.json").read_text())
    assert run["variant"] == "const"
    built = json.loads((tmp_path / "engines" / "reference-const-auto" / "manifest.json").read_text())
    assert built["gate_calibration"]["split"] == "train" and built["gate_calibration"]["target_recall"] == 0.95
    lines = (tmp_path / "infer" / "results.jsonl").read_text().splitlines()
    test_images = json.loads((tmp_path / "data" / "annotations" / "test.json").read_text())["images"]
    assert len(lines) == len(test_images)  # one record per input
    assert (tmp_path / "infer" / "contact_sheet.png").is_file()
    bench = BenchResult.from_dict(json.loads((tmp_path / "bench" / "results.json").read_text()))
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    effects = gate_effects(bench)
    assert {e.backend for e in effects} >= {"torch fp32", "onnxruntime fp32"}
    assert [b["backend"] for b in summary["backends"]] == [e.backend for e in effects]
    for b, e in zip(summary["backends"], effects, strict=True):
        assert b["att_gate_off_ms"] == e.att_gate_off_ms and b["gate_speedup"] == pytest.approx(e.speedup)
        assert f"{e.backend}" in result.output and f"gate on {e.att_gate_on_ms:.1f} ms" in result.output


def test_a_missing_reference_says_how_to_get_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--out", str(tmp_path), "--reference", str(tmp_path / "none")])
    assert result.exit_code != 0
    assert "git checkout -- models/" in result.output and "benchmarks/campaign.py" in result.output
