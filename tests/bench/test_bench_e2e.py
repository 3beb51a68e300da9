"""defectnet-bench end to end on tiny exported models (CPU, --quick), and agreement of its
accuracy numbers with defectnet-eval's functions on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from defectnet.bench.cli import main
from defectnet.bench.imageset import build_image_set
from defectnet.evaluation.evaluate import evaluate_engine


@pytest.fixture(scope="module")
def quick_run(bench_runs: Path, bench_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench-out") / "quick"
    result = CliRunner().invoke(main, ["--runs-dir", str(bench_runs), "--data", str(bench_data), "--out", str(out),
                                       "--quick", "--threads", "1", "--batch", "2", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_quick_bench_outputs(quick_run: tuple[Path, str]) -> None:
    out, output = quick_run
    assert "## ATT side by side" in output and "| defectnet_const | " in output
    data = json.loads((out / "results.json").read_text())
    assert [c["row"] + " | " + c["label"] for c in data["cases"]] == [
        "one-model | torch fp32", "one-model | onnxruntime fp32", "defectnet_const | torch fp32",
        "defectnet_const | onnxruntime fp32", "defectnet_const | onnxruntime int8"]
    assert data["baseline"] == "one-model | torch fp32"
    assert data["settings"]["repeat"] == 1 and data["settings"]["warmup"] == 1 and data["settings"]["quick"]
    assert data["machine"]["cpu"] and data["libraries"]["onnxruntime"]
    assert data["command"].startswith("defectnet-bench --runs-dir")
    assert any(s["backend"] == "tensorrt" for s in data["skipped"])          # no TensorRT here: a note
    for case in data["cases"]:
        m = case["metrics"]
        assert (m["num_images"], m["num_normal"], m["num_defective"]) == (6, 2, 4)
        # one repetition: ATT is exactly the ground-truth-weighted mean of the split
        assert m["att_ms"] == pytest.approx((2 * m["att_normal_ms"] + 4 * m["att_defective_ms"]) / 6)
        assert case["e2e_ms"] > m["att_ms"] > 0 and case["throughput_b1"] > 0 and case["throughput_batch"] > 0
        assert case["stages_ms"]["gate"] > 0 and case["stages_ms"]["decode"] > 0
        assert len(case["curve"]) == 21 and len(case["per_image"]["model_ms"]) == 6
    assert data["cases"][0]["speedup_att"] == pytest.approx(1.0)
    assert data["cases"][0]["metrics"]["gate_recall"] is None and data["cases"][2]["metrics"]["gate_recall"] is not None
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 6 and lines[0].startswith("row,backend,precision,label")
    plots = sorted(p.name for p in (out / "plots").rglob("*.png"))
    assert len(plots) == 1 + 3 + 5 and "att_stages.png" in plots
    assert all(p.stat().st_size > 0 for p in (out / "plots").rglob("*.png"))


def test_accuracy_matches_evaluate_engine(quick_run: tuple[Path, str], bench_runs: Path, bench_data: Path) -> None:
    out, _ = quick_run
    data = json.loads((out / "results.json").read_text())
    bench = next(c for c in data["cases"] if c["row"] == "defectnet_const" and c["label"] == "onnxruntime fp32")
    ref = evaluate_engine(bench_runs / "const" / "engine", bench_data, warmup=0, progress=False)
    m = bench["metrics"]
    assert (m["mAP"], m["AP50"], m["F1"]) == pytest.approx((ref.mAP, ref.AP50, ref.F1))
    assert (m["gate_recall"], m["num_detector_runs"], m["num_detections"]) == (
        ref.gate_recall, ref.num_detector_runs, ref.num_detections)


def test_int8_case_runs_the_quantized_graphs(quick_run: tuple[Path, str], bench_runs: Path, bench_data: Path) -> None:
    """The INT8 row is a real Q/DQ engine: its graphs hold QuantizeLinear nodes, and the bench's
    accuracy for it is what defectnet-eval measures on that engine (not the float32 one's)."""
    import onnx

    int8_dir = bench_runs / "const" / "engine-int8"
    ops = {n.op_type for n in onnx.load(str(int8_dir / "gate.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    data = json.loads((quick_run[0] / "results.json").read_text())
    bench = next(c for c in data["cases"] if c["label"] == "onnxruntime int8")
    ref = evaluate_engine(int8_dir, bench_data, warmup=0, progress=False)
    m = bench["metrics"]
    assert (m["mAP"], m["F1"], m["gate_recall"], m["num_detector_runs"], m["num_detections"]) == pytest.approx(
        (ref.mAP, ref.F1, ref.gate_recall, ref.num_detector_runs, ref.num_detections))


def test_normal_share_image_set(bench_data: Path) -> None:
    images = build_image_set(bench_data, "test", normal_share=0.5, seed=0)  # 2 normal of 6 -> 3 needed
    assert len(images) == 6 and images.num_normal == 3
    assert images.selection["with_replacement"] == ["normal"]
    gt = images.coco_gt()
    assert sorted(gt.getImgIds()) == list(range(1, 7))
    per_image = [len(gt.getAnnIds(imgIds=[k + 1])) for k in range(6)]
    assert [n > 0 for n in per_image] == images.truth
    again = build_image_set(bench_data, "test", normal_share=0.5, seed=0)
    assert again.indices == images.indices
    capped = build_image_set(bench_data, "test", max_images=3, seed=0)
    assert len(capped) == 3 and capped.num_normal == 1


def test_gate_threshold_applies_to_every_gated_case(bench_runs: Path, bench_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "thr"
    result = CliRunner().invoke(main, ["--runs-dir", str(bench_runs), "--data", str(bench_data), "--out", str(out),
                                       "--quick", "--threads", "1", "--batch", "1", "--backends", "torch,onnxruntime",
                                       "--gate-threshold", "1.0", "--no-plots", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["gate_threshold"] == 1.0 and "--gate-threshold 1.0" in data["command"]
    for case in data["cases"]:
        m = case["metrics"]
        if case["row"] == "one-model":  # no gate: the override does not apply
            assert m["gate_threshold"] is None and m["num_detector_runs"] == m["num_images"]
        else:  # P(defective) < 1 for every image: nothing reaches the detector, on every backend
            assert m["gate_threshold"] == 1.0 and m["num_detector_runs"] == 0


def test_gate_threshold_must_be_a_probability(bench_runs: Path, bench_data: Path) -> None:
    result = CliRunner().invoke(main, ["--runs-dir", str(bench_runs), "--data", str(bench_data), "--quick",
                                       "--gate-threshold", "1.5", "--no-progress"])
    assert result.exit_code == 1 and "--gate-threshold is a probability" in result.output
