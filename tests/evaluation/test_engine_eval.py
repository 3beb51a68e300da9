"""An exported engine evaluated through the runtime gives the PyTorch model's metrics; the
eval CLI's JSON holds the command, the thread counts and per-image records that recompute it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from defectnet.data.coco import load_split
from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.evaluation.cli import main as eval_main
from defectnet.evaluation.evaluate import evaluate, evaluate_engine
from defectnet.evaluation.records import read_detections, recompute
from defectnet.export import export_engine
from defectnet.model import ModelConfig, build_model
from defectnet.model_source import ModelSource

SCALE = (192, 96)


@pytest.fixture(scope="module")
def engine_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, Any]:
    """(data folder, engine folder, the PyTorch model, the test split) of a tiny random model
    whose gate threshold sits between the test images' P(defective)."""
    tmp_path = tmp_path_factory.mktemp("engine-eval")
    data = tmp_path / "data"
    generate(SynthParams("fabric", images=12, normal_share=0.5, seed=0, size=SCALE, test_share=0.5),
             KINDS["fabric"], data)
    ds = load_split(data, "test", scale=SCALE)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("compact", num_classes=ds.num_classes, backbone="resnet18", fpn_channels=16,
                             representation_size=32)
    model = build_model(cfg).eval()
    # put the gate threshold between the images' P(defective) so both paths are exercised
    with torch.no_grad():
        p = torch.cat([model.features(ds[i].image[None].float(), [tuple(ds[i].image.shape[-2:])])[0]
                       for i in range(len(ds))])
    ps = p.sort().values
    midpoint = float(ps[len(ps) // 2 - 1] + ps[len(ps) // 2]) / 2  # no image sits on the threshold
    torch.manual_seed(0)  # the same weights again, with the new threshold
    model = build_model(cfg.replace(gate_threshold=midpoint)).eval()
    engine = tmp_path / "engine"
    export_engine(ModelSource(model, list(ds.class_names), variant="const", scale=SCALE), engine, verify=False)
    return data, engine, model, ds


@pytest.mark.slow
def test_onnxruntime_engine_metrics_equal_pytorch(engine_case: tuple[Path, Path, Any, Any]) -> None:
    data, engine, model, ds = engine_case
    ref = evaluate(model, ds, name="torch", warmup=1, progress=False)
    got = evaluate_engine(engine, data, warmup=1, progress=False)
    assert got.model == "defectnet_const [onnxruntime]"
    assert 0 < got.num_detector_runs < got.num_images
    assert (got.num_detector_runs, got.num_detections) == (ref.num_detector_runs, ref.num_detections)
    for field in ("mAP", "AP50", "F1", "gate_recall", "gate_precision", "gate_roc_auc", "gate_average_precision"):
        assert getattr(got, field) == pytest.approx(getattr(ref, field), abs=1e-3), field
    assert got.effective_gate_threshold == pytest.approx(model.config.gate_threshold)
    assert got.threads["backend"] == "onnxruntime" and "backend_threads" in got.threads
    # the graphs take any size: the same engine evaluated at another test scale
    bigger = evaluate_engine(engine, data, warmup=0, progress=False, scale=(256, 128))
    assert bigger.num_images == got.num_images and bigger.att_ms > 0


def test_eval_json_is_recomputable(engine_case: tuple[Path, Path, Any, Any], tmp_path: Path) -> None:
    """--out writes the command, threads, machine, libraries and per-image records; the
    detections go to FILE.detections.json, and the records give every accuracy number back."""
    data, engine, _, ds = engine_case
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(eval_main, ["--engine", str(engine), "--data", str(data), "--out", str(out),
                                            "--warmup", "1", "--threads", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "gate ROC AUC" in result.output
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("defectnet-eval --data ") and "--threads 1" in doc["command"]
    assert f"--engine {engine}" in doc["command"] and "--backend auto" in doc["command"]  # the default: as built
    assert doc["threads"]["requested"] == 1 and doc["threads"]["torch"] == 1
    assert doc["machine"]["cpu"] and doc["libraries"]["onnxruntime"]
    (row,) = doc["results"]
    assert row["threads"] == {"torch": 1, "torch_interop": torch.get_num_interop_threads(),
                              "backend": "onnxruntime", "backend_threads": 1}
    assert row["scale"] == list(SCALE) and row["warmup"] == 1
    assert "detections" not in row["per_image"] and len(row["per_image"]["p_defective"]) == row["num_images"]
    sidecar, _, key = row["detections_file"].partition("#")
    entry = read_detections(out.parent / sidecar)[key]
    assert entry["image_id"] == row["per_image"]["image_id"]
    again = recompute(row["per_image"], entry["detections"], ds.coco_gt(), sorted(ds.label_to_category_id.values()))
    assert (again.mAP, again.AP50, again.F1, again.gate_recall, again.detector_runs) == pytest.approx(
        (row["mAP"], row["AP50"], row["F1"], row["gate_recall"], row["num_detector_runs"]), abs=1e-6)
