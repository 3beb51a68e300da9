"""benchmarks/gate_study.py: a gated eval's operating point at its threshold and the ceiling at
a target recall, from per-image records."""

from __future__ import annotations

import json
from pathlib import Path

import benchmark_scripts
import pytest

gate_study = benchmark_scripts.load("gate_study")


def _eval(path: Path, p: list[float], defective: list[bool], threshold: float) -> Path:
    ran = [x >= threshold for x in p]
    result = {"model": "defectnet_const", "has_gate": True, "effective_gate_threshold": threshold, "mAP": 0.5,
              "F1": 0.8, "per_image": {"p_defective": p, "defective": defective, "ran_detector": ran}}
    path.write_text(json.dumps({"command": "defectnet-eval ...", "results": [
        {"model": "one-model", "has_gate": False}, result]}))
    return path


def test_operating_point_and_ceiling(tmp_path: Path) -> None:
    # 4 defective (P 0.9, 0.8, 0.3, 0.05), 4 normal (P 0.6, 0.2, 0.1, 0.01)
    p = [0.9, 0.8, 0.3, 0.05, 0.6, 0.2, 0.1, 0.01]
    d = [True] * 4 + [False] * 4
    row = gate_study.study("m", _eval(tmp_path / "e.json", p, d, threshold=0.25), target_recall=0.75)
    assert row.recall == pytest.approx(0.75) and row.normal_skipped == pytest.approx(0.75)
    # recall >= 0.75 needs the 3 highest defectives (down to P 0.3): normals below 0.3 are skipped
    assert row.ceiling_recall == pytest.approx(0.75) and row.ceiling_normal_skipped == pytest.approx(0.75)
    # all 4 defective: the threshold must reach 0.05, so only the 0.01 normal is skipped
    full = gate_study.study("m", tmp_path / "e.json", target_recall=1.0)
    assert full.ceiling_recall == 1.0 and full.ceiling_normal_skipped == pytest.approx(0.25)
    assert 0.5 < row.roc_auc < 1.0
    assert "| m | 0.2500 | 0.750 | 75.0% |" in gate_study.markdown([row], 0.75)


def test_writes_json_with_command_and_rejects_ungated(tmp_path: Path) -> None:
    e = _eval(tmp_path / "e.json", [0.9, 0.1], [True, False], 0.5)
    gate_study.main([f"a={e}", "--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "s.md")])
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["command"].startswith("python benchmarks/gate_study.py") and written["rows"][0]["name"] == "a"
    with pytest.raises(SystemExit, match="no gated result"):
        gate_study.main([f"a={e}#one-model"])
    with pytest.raises(SystemExit, match="NAME=FILE"):
        gate_study.main([str(e)])
