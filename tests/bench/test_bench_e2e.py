"""defectnet-bench end to end on tiny exported models (CPU, --quick), and agreement of its
accuracy numbers with defectnet-eval's functions on the same images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


CASES = ["one-model | torch fp32", "one-model | onnxruntime fp32", "defectnet_const (gate off) | torch fp32",
         "defectnet_const | torch fp32", "defectnet_const (gate off) | onnxruntime fp32",
         "defectnet_const | onnxruntime fp32", "defectnet_const (gate off) | onnxruntime int8",
         "defectnet_const | onnxruntime int8"]


def _cases(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["row"] + " | " + c["label"]: c for c in data["cases"]}


def test_quick_bench_outputs(quick_run: tuple[Path, str]) -> None:
    out, output = quick_run
    assert "## ATT side by side" in output and "| defectnet_const | " in output
    assert "## Gate on vs gate off" in output and "## What each step buys" in output
    data = json.loads((out / "results.json").read_text())
    assert [c["row"] + " | " + c["label"] for c in data["cases"]] == CASES
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
        # the thread counts it really ran with: torch's and the backend's own; the test scale
        assert case["threads"]["torch"] == 1 and case["threads"]["backend_threads"] == 1
        assert m["scale"] == [192, 96] and m["warmup"] == 1
    cases = _cases(data)
    assert cases["one-model | torch fp32"]["speedup_att"] == pytest.approx(1.0)
    assert cases["one-model | torch fp32"]["metrics"]["gate_recall"] is None
    assert cases["defectnet_const | torch fp32"]["metrics"]["gate_recall"] is not None
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + len(CASES) and lines[0].startswith("row,backend,precision,label")
    plots = sorted(p.name for p in (out / "plots").rglob("*.png"))
    assert len(plots) == 1 + 1 + 3 + len(CASES) and {"att_stages.png", "speed_recall.png"} <= set(plots)
    assert all(p.stat().st_size > 0 for p in (out / "plots").rglob("*.png"))


def test_gate_off_twins(quick_run: tuple[Path, str]) -> None:
    """Every gated case has a gate-off twin on its backend: the same graphs with the detector on
    every image; the gate-on case records what the gate buys against it."""
    data = json.loads((quick_run[0] / "results.json").read_text())
    cases = _cases(data)
    for label in ("torch fp32", "onnxruntime fp32", "onnxruntime int8"):
        on, off = cases[f"defectnet_const | {label}"], cases[f"defectnet_const (gate off) | {label}"]
        assert off["gate_off"] and not on["gate_off"] and off["model_row"] == on["model_row"] == "defectnet_const"
        assert off["metrics"]["num_detector_runs"] == off["metrics"]["num_images"] == 6
        assert off["metrics"]["effective_gate_threshold"] == 0.0 and off["normal_skipped"] == 0.0
        assert off["engine_dir"] == on["engine_dir"]                        # the same graphs
        assert on["gate_off_key"] == f"defectnet_const (gate off) | {label}"
        assert on["speedup_gate"] == pytest.approx(off["metrics"]["att_ms"] / on["metrics"]["att_ms"])
        assert on["per_image"]["p_defective"] == off["per_image"]["p_defective"]
        assert {"gate_ms", "select_ms", "detector_ms"} <= set(off["per_image"])
        curve = off["speed_recall"]
        assert curve[0]["threshold"] == 0.0 and curve[0]["gate_recall"] == 1.0 and curve[0]["normal_skipped"] == 0.0
    one = cases["one-model | onnxruntime fp32"]
    assert not one["gate_off"] and one["gate_off_key"] is None and one["speedup_gate"] is None


def test_records_recompute_every_accuracy_number(quick_run: tuple[Path, str], bench_data: Path) -> None:
    """results.json + detections.json alone give back every case's mAP, AP50, F1 and gate
    numbers (the measured image set is rebuilt from the recorded selection)."""
    from defectnet.evaluation.records import read_detections, recompute

    out = quick_run[0]
    data = json.loads((out / "results.json").read_text())
    sel, settings = data["images"], data["settings"]
    images = build_image_set(sel["data"], sel["split"], normal_share=settings["normal_share"],
                             max_images=settings["max_images"], seed=settings["seed"])
    assert [images.source_image_id(k) for k in range(len(images))] == data["cases"][0]["per_image"]["image_id"]
    gt = images.coco_gt()
    for case in data["cases"]:
        sidecar, _, key = case["detections_file"].partition("#")
        entry = read_detections(out / sidecar)[key]
        again = recompute(case["per_image"], entry["detections"], gt, sorted(images.label_to_category_id.values()),
                          result_ids=entry["result_id"])
        m = case["metrics"]
        assert (again.mAP, again.AP50, again.F1) == pytest.approx((m["mAP"], m["AP50"], m["F1"]), abs=1e-6)
        assert again.detector_runs == m["num_detector_runs"]
        assert again.gate_recall == pytest.approx(m["gate_recall"] if m["has_gate"] else again.gate_recall)


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


def test_gate_threshold_and_scale_apply_to_every_case(bench_runs: Path, bench_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "thr"
    result = CliRunner().invoke(main, ["--runs-dir", str(bench_runs), "--data", str(bench_data), "--out", str(out),
                                       "--quick", "--threads", "1", "--batch", "1", "--backends", "torch,onnxruntime",
                                       "--gate-threshold", "1.0", "--scale", "224x128", "--no-plots", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["gate_threshold"] == 1.0 and "--gate-threshold 1.0" in data["command"]
    assert "--scale 224x128" in data["command"]
    for case in data["cases"]:
        m = case["metrics"]
        assert m["scale"] == [224, 128]  # the test scale every case resized to (trained at 192x96)
        if case["row"] == "one-model":  # no gate: the override does not apply
            assert m["gate_threshold"] is None and m["num_detector_runs"] == m["num_images"]
        elif case["gate_off"]:  # the twin: detector on every image whatever the threshold
            assert m["effective_gate_threshold"] == 0.0 and m["num_detector_runs"] == m["num_images"]
        else:  # P(defective) < 1 for every image: nothing reaches the detector, on every backend
            assert m["gate_threshold"] == 1.0 and m["num_detector_runs"] == 0


def test_gate_threshold_must_be_a_probability(bench_runs: Path, bench_data: Path) -> None:
    result = CliRunner().invoke(main, ["--runs-dir", str(bench_runs), "--data", str(bench_data), "--quick",
                                       "--gate-threshold", "1.5", "--no-progress"])
    assert result.exit_code == 1 and "--gate-threshold is a probability" in result.output
    result = CliRunner().invoke(main, ["--runs-dir", str(bench_runs), "--data", str(bench_data), "--quick",
                                       "--scale", "640x16", "--no-progress"])
    assert result.exit_code == 1 and "--scale is LONGxSHORT" in result.output


def test_one_engine_alone_shows_what_the_gate_buys(bench_runs: Path, bench_data: Path, tmp_path: Path) -> None:
    """--engine E alone (no one-model row): gate on vs gate off per backend, speed-ups from
    the gate, and a note that says so instead of "no speed-ups"."""
    out = tmp_path / "alone"
    result = CliRunner().invoke(main, ["--engine", str(bench_runs / "const" / "engine"), "--data", str(bench_data),
                                       "--out", str(out), "--quick", "--threads", "1", "--batch", "1",
                                       "--backends", "onnxruntime", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((out / "results.json").read_text())
    assert data["baseline"] is None
    assert [c["row"] + " | " + c["label"] for c in data["cases"]] == CASES[4:]
    for case in data["cases"]:
        if not case["gate_off"]:
            assert case["speedup_gate"] is not None and case["speedup_att"] is None
    assert any("the gate-off rows show what the gate buys" in n for n in data["notes"])
    assert not any("so there are no speed-ups" in n for n in data["notes"])
    assert "## Gate on vs gate off" in result.output and "| defectnet_const | onnxruntime int8 | off |" in result.output
    assert (out / "plots" / "speed_recall.png").stat().st_size > 1000


def test_target_recall_picks_each_threshold_on_the_validation_split(bench_runs: Path, bench_data: Path,
                                                                     tmp_path: Path) -> None:
    """--target-recall R --val-split train: each gated case runs at the threshold that
    threshold_for_recall gives on the train images' P from its own gate graph (INT8 its own);
    the gate-on records equal the gate-off records re-gated there (same graphs); the headline
    table and the speed-recall plot are written."""
    from defectnet.engine_build.gate_calibration import gate_probabilities, threshold_for_recall
    from defectnet.evaluation.records import read_detections, recompute

    out = tmp_path / "op"
    result = CliRunner().invoke(main, ["--runs-dir", str(bench_runs), "--data", str(bench_data), "--out", str(out),
                                       "--quick", "--threads", "1", "--batch", "1", "--backends", "onnxruntime",
                                       "--target-recall", "0.5", "--val-split", "train", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((out / "results.json").read_text())
    assert "--target-recall 0.5 --val-split train" in data["command"]
    assert "## At the validated operating point (gate recall >= 0.5" in result.output
    cases = _cases(data)
    images = build_image_set(bench_data, "test")
    gt, cats = images.coco_gt(), sorted(images.label_to_category_id.values())
    for folder, label in (("engine", "onnxruntime fp32"), ("engine-int8", "onnxruntime int8")):
        p, truth, _ = gate_probabilities(bench_runs / "const" / folder, bench_data, split="train", progress=False)
        expected = threshold_for_recall(p, truth, 0.5)
        on, off = cases[f"defectnet_const | {label}"], cases[f"defectnet_const (gate off) | {label}"]
        assert on["operating_point"]["threshold"] == pytest.approx(expected.threshold, abs=1e-6)
        assert on["operating_point"]["recall"] >= 0.5 and on["operating_point"]["validation"]["split"] == "train"
        assert on["metrics"]["effective_gate_threshold"] == pytest.approx(expected.threshold, abs=1e-6)
        assert off["operating_point"] is None and off["metrics"]["effective_gate_threshold"] == 0.0
        thr = on["metrics"]["effective_gate_threshold"]
        assert on["per_image"]["ran_detector"] == [x >= thr for x in on["per_image"]["p_defective"]]
        assert 0 < on["metrics"]["num_detector_runs"] < len(images)       # the threshold really gates here
        dets = read_detections(out / "detections.json")
        regated = recompute(off["per_image"], dets[off["detections_file"].partition("#")[2]]["detections"], gt, cats,
                            result_ids=list(range(1, len(images) + 1)), threshold=thr)
        m = on["metrics"]
        assert (regated.mAP, regated.F1, regated.gate_recall, regated.detector_runs) == pytest.approx(
            (m["mAP"], m["F1"], m["gate_recall"], m["num_detector_runs"]), abs=1e-6)
    assert (out / "plots" / "speed_recall.png").stat().st_size > 1000


@pytest.mark.parametrize(("extra", "message"), [
    (["--target-recall", "0.9"], "--target-recall needs the validation images"),
    (["--target-recall", "0.9", "--val-split", "test"], "is the split being measured"),
    (["--target-recall", "0.9", "--val-split", "train", "--gate-threshold", "0.5"], "give one"),
    (["--val-split", "train"], "only apply with --target-recall"),
    (["--target-recall", "1.5", "--val-split", "train"], "recall in (0, 1]"),
])
def test_target_recall_needs_validation_images(bench_runs: Path, bench_data: Path, extra: list[str],
                                               message: str) -> None:
    result = CliRunner().invoke(main, ["--runs-dir", str(bench_runs), "--data", str(bench_data), "--quick",
                                       "--no-progress", *extra])
    assert result.exit_code == 1 and message in result.output
