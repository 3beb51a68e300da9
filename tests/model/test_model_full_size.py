"""The recipe's model (ResNet-50, 256-channel FPN, 1024 FC) at fabric scale, on CPU."""

from __future__ import annotations

import pytest
import torch
from model_testing import noise_image, on_canvas, target

from defectnet.model import ModelConfig, build_model


@pytest.mark.slow
def test_resnet50_at_800x1344_infers_and_trains_one_step() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=14))
    h, w = 800, 1333
    images = on_canvas([noise_image(0, h, w, [(100, 200, 180, 900)])], 800, 1344)
    sizes = [(h, w)]
    model.eval()
    det = model.inference(images, sizes, gate_threshold=0.0)[0]
    assert det.ran_detector and 0 < det.boxes.shape[0] <= 100
    model.train()
    losses = model.losses(images, [target([(200, 100, 900, 180)], [3])], sizes, gate_weight=0.15)
    total = torch.stack(list(losses.values())).sum()
    assert torch.isfinite(total)
    total.backward()
    assert model.roi_heads.heads[0].cls_score.weight.grad is not None
