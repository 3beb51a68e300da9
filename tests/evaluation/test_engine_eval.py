"""An exported engine evaluated through the runtime gives the PyTorch model's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defectnet.data.coco import load_split
from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.evaluation.evaluate import evaluate, evaluate_engine
from defectnet.export import export_engine
from defectnet.model import ModelConfig, build_model
from defectnet.model_source import ModelSource

SCALE = (192, 96)


@pytest.mark.slow
def test_onnxruntime_engine_metrics_equal_pytorch(tmp_path: Path) -> None:
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

    ref = evaluate(model, ds, name="torch", warmup=1, progress=False)
    got = evaluate_engine(engine, data, warmup=1, progress=False)
    assert got.model == "defectnet_const [onnxruntime]"
    assert 0 < got.num_detector_runs < got.num_images
    assert (got.num_detector_runs, got.num_detections) == (ref.num_detector_runs, ref.num_detections)
    for field in ("mAP", "AP50", "F1", "gate_recall", "gate_precision"):
        assert getattr(got, field) == pytest.approx(getattr(ref, field), abs=1e-3), field
    # the graphs take any size: the same engine evaluated at another test scale
    bigger = evaluate_engine(engine, data, warmup=0, progress=False, scale=(256, 128))
    assert bigger.num_images == got.num_images and bigger.att_ms > 0
