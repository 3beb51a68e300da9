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
        assert e.skip_ceiling is not None and 0.0 <= e.skip_ceiling <= 1.0
        if e.gate_recall is not None and e.gate_recall >= 0.95 and e.normal_skipped is not None:
            assert e.normal_skipped <= e.skip_ceiling + 1e-9  # no threshold at that recall skips more


def test_skip_ceiling_is_the_best_threshold_at_the_target_recall() -> None:
    from defectnet.demo import _skip_ceiling

    # 20 defective images (P 0.50..0.97), 4 normal (P 0.1, 0.3, 0.6, 0.9): recall >= 0.95 keeps
    # 19 of 20, so the threshold sits between the two lowest defective P (0.50, 0.525)
    defective_p = [0.5 + 0.025 * k for k in range(20)]
    per_image = {"p_defective": defective_p + [0.1, 0.3, 0.6, 0.9], "defective": [True] * 20 + [False] * 4}
    assert _skip_ceiling(per_image) == pytest.approx(0.5)
    assert _skip_ceiling({"defective": [True]}) is None


def test_a_missing_reference_says_how_to_get_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--out", str(tmp_path), "--reference", str(tmp_path / "none")])
    assert result.exit_code != 0
    assert "git checkout -- models/" in result.output and "benchmarks/campaign.py" in result.output
