"""benchmarks/seed_compare.py: the seed's seven rows beside ours, as ratios to each table's
one-model row, with every seed row printed (a row without a run says why)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import benchmark_scripts
import pytest

seed_compare = benchmark_scripts.load("seed_compare")


def _result(model: str, m: float, f1: float, att: float, **extra: Any) -> dict[str, Any]:
    return {"model": model, "mAP": m, "F1": f1, "att_ms": att, "att_normal_ms": att * 0.8,
            "att_defective_ms": att * 1.1, "remark": "r", **extra}


def test_ratios_follow_the_seed_definition_and_every_row_is_printed(tmp_path: Path) -> None:
    argmax = [_result("one-model", 0.5, 0.80, 100.0), _result("defectnet_const", 0.55, 0.90, 80.0, gate_recall=0.9)]
    at_recall = [_result("defectnet_const", 0.52, 0.88, 90.0, gate_recall=0.96, effective_gate_threshold=0.02,
                         per_image={"defective": [True, False, False, False, True],
                                    "ran_detector": [True, False, True, False, True]})]
    rows = seed_compare.build_rows("fabric", argmax, at_recall, missing={"defectnet_linear": "still training"})
    assert [r.model for r in rows] == list(seed_compare.ROWS)
    const = next(r for r in rows if r.model == "defectnet_const")
    assert const.ours.mAP_ratio == pytest.approx(1.1) and const.ours.F1_diff == pytest.approx(0.1)
    assert const.ours.ATT_ratio == pytest.approx(0.8)
    # the seed's own: const 0.214 / 0.198, 0.931 - 0.859, 47.979 / 67.768
    assert const.seed.mAP_ratio == pytest.approx(0.214 / 0.198)
    assert const.seed.F1_diff == pytest.approx(0.931 - 0.859)
    assert const.seed.ATT_ratio == pytest.approx(47.979 / 67.768)
    op = const.operating_point
    assert op is not None and op["normal_skipped"] == pytest.approx(2 / 3) and op["ratios"]["ATT_ratio"] == 0.9
    linear = next(r for r in rows if r.model == "defectnet_linear")
    assert linear.missing == "still training" and linear.mAP is None
    assert next(r for r in rows if r.model == "two-model_small").missing == "no run in the inputs"
    text = seed_compare.markdown("fabric", rows)
    assert "| defectnet_linear | still training |" in text and "| 66.7 % |" in text
    assert "| defectnet_const | 0.550 | 0.900 | 80.0 |" in text


def test_cli_writes_markdown_and_json_with_its_command(tmp_path: Path) -> None:
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"results": [_result("one-model", 0.4, 0.8, 50.0)]}))
    out, js = tmp_path / "t.md", tmp_path / "t.json"
    seed_compare.main(["--dataset", "bottle", "--eval", str(ev), "--out", str(out), "--json", str(js),
                       "--missing", "defectnet_const=not trained"])
    data = json.loads(js.read_text())
    assert data["command"].startswith("python benchmarks/seed_compare.py --dataset bottle")
    assert len(data["rows"]) == 7 and "not trained" in out.read_text()
    with pytest.raises(SystemExit):  # a row name the seed has not
        seed_compare.build_rows("fabric", [_result("bogus", 0.1, 0.1, 1.0)])
    with pytest.raises(SystemExit):
        seed_compare.main(["--dataset", "fabric", "--eval", str(ev), "--missing", "nope"])


def test_bench_gives_pytorch_ratio_and_fastest_engine(tmp_path: Path) -> None:
    def case(label: str, model: str, att: float, gate_off: bool = False, recall: float | None = None,
             skipped: float = 0.0) -> dict[str, Any]:
        return {"label": label, "gate_off": gate_off, "normal_skipped": skipped,
                "metrics": {"model": model, "att_ms": att, "gate_recall": recall}}

    cases = [case("torch fp32", "one-model", 100.0), case("openvino int8", "one-model", 40.0),
             case("torch fp32", "defectnet_const (gate off)", 101.0, gate_off=True),
             case("torch fp32", "defectnet_const", 80.0, recall=0.97, skipped=0.4),
             case("openvino int8", "defectnet_const (gate off)", 20.0, gate_off=True),
             case("openvino int8", "defectnet_const", 30.0, recall=0.96, skipped=0.5),
             case("onnxruntime int8", "defectnet_const", 35.0, recall=0.99, skipped=0.3)]
    (tmp_path / "results.json").write_text(json.dumps({"cases": cases}))
    bench = seed_compare._bench_att(tmp_path)
    const = bench["defectnet_const"]
    assert const["torch_att_ratio"] == pytest.approx(0.8) and const["fastest"] == "openvino int8"
    assert const["fastest_speedup"] == pytest.approx(100 / 30) and const["gate_recall"] == 0.96  # the gate-off twin is not a row
    assert const["normal_skipped"] == 0.5 and bench["one-model"]["normal_skipped"] is None
    rows = seed_compare.build_rows("fabric", [_result("one-model", 0.5, 0.8, 100.0),
                                              _result("defectnet_const", 0.5, 0.9, 80.0)], bench=bench)
    text = seed_compare.markdown("fabric", rows)
    assert "| defectnet_const | 80.0 | 0.80 | openvino int8 | 30.0 | 3.33x | 0.960 | 50.0 % |" in text
