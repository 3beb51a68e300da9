"""The two-model baseline: ImageClassifier + TwoModel."""

from __future__ import annotations

import pytest
import torch
from model_testing import noise_image, on_canvas, tiny_config

from defectnet.errors import ConfigError
from defectnet.model import ClassifierConfig, DefectNet, ImageClassifier, TwoModel, build_two_model
from defectnet.model.classifier import resize_valid_regions


def test_resize_valid_regions_ignores_padding() -> None:
    img = noise_image(0, 96, 160)
    canvas = on_canvas([img], 128, 192)
    canvas[0, :, 96:, :] = 1e4  # padding content must not leak in
    canvas[0, :, :, 160:] = -1e4
    out = resize_valid_regions(canvas, torch.tensor([[96, 160]]), 32)
    assert out.shape == (1, 3, 32, 32)
    assert float(out.max()) <= 255 and float(out.min()) >= 0
    ref = torch.nn.functional.interpolate(img[None], size=(32, 32), mode="area")
    assert float((out - ref).abs().mean()) < 5.0  # an area-like downscale


@pytest.mark.parametrize("input_size", [64, None])
def test_classifier_outputs(input_size: int | None) -> None:
    torch.manual_seed(0)
    clf = ImageClassifier(ClassifierConfig(backbone="resnet18", input_size=input_size))
    images = on_canvas([noise_image(0), noise_image(1, 96, 128)])
    sizes = [(128, 192), (96, 128)]
    logits = clf(images, sizes)
    assert logits.shape == (2, 2)
    p = clf.p_defective(images, sizes)
    assert p.shape == (2,) and bool(((p >= 0) & (p <= 1)).all())


def test_two_model_gates_the_detector() -> None:
    torch.manual_seed(0)
    model = build_two_model(ClassifierConfig(backbone="resnet18", input_size=64), tiny_config(with_gate=False))
    model.eval()
    images = on_canvas([noise_image(0, boxes=[(20, 20, 60, 50)]), noise_image(1, 96, 128)])
    sizes = [(128, 192), (96, 128)]
    calls: list[int] = []
    model.detector.fpn.register_forward_hook(lambda _m, i, _o: calls.append(int(i[0]["c2"].shape[0])))
    none = model.inference(images, sizes, gate_threshold=1.01)
    assert calls == [] and all(not r.ran_detector for r in none)
    both = model.inference(images, sizes, gate_threshold=0.0)
    assert calls == [2] and all(r.ran_detector for r in both)
    p = model.classifier.p_defective(images, sizes)
    assert [r.p_defective for r in both] == pytest.approx(p.tolist())
    alone = model.detector.inference(images, sizes)
    torch.testing.assert_close(both[1].boxes, alone[1].boxes)


def test_two_model_needs_a_one_model_detector() -> None:
    with pytest.raises(ConfigError, match="with_gate=False"):
        build_two_model(ClassifierConfig(backbone="resnet18"), tiny_config())
    with pytest.raises(ConfigError, match="with_gate=False"):
        TwoModel(ImageClassifier(ClassifierConfig(backbone="resnet18")), DefectNet(tiny_config()))
