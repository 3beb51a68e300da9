"""ModelConfig / ClassifierConfig validation and JSON round trips; backbone weight files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from defectnet.errors import CheckpointError, ConfigError
from defectnet.model import ClassifierConfig, ModelConfig
from defectnet.model.backbone import ResNetBody


def test_defaults_are_the_original_recipe() -> None:
    c = ModelConfig(num_classes=10)
    assert c.backbone == "resnet50" and c.with_gate and c.gate_threshold == 0.5 and c.frozen_stages == 1
    assert c.anchor_sizes == (32, 64, 128, 256, 512) and c.anchor_ratios == (0.5, 1.0, 2.0)
    assert c.rpn_post_nms_top_n_test == 1000 and c.rpn_nms_thresh == 0.7
    assert c.stage_iou_thresholds == (0.5, 0.6, 0.7) and c.stage_loss_weights == (1.0, 0.5, 0.25)
    assert c.stage_target_stds[2] == (0.033, 0.033, 0.067, 0.067)
    assert (c.roi_batch_size_per_image, c.roi_positive_fraction) == (512, 0.25)
    assert (c.score_thresh, c.nms_thresh, c.detections_per_img) == (0.05, 0.5, 100)


def test_json_round_trip() -> None:
    c = ModelConfig(num_classes=3, backbone="resnet18", with_gate=False, gate_threshold=0.3)
    data = json.loads(json.dumps(c.to_dict()))
    assert ModelConfig.from_dict(data) == c
    k = ClassifierConfig(input_size=None)
    assert ClassifierConfig.from_dict(json.loads(json.dumps(k.to_dict()))) == k


@pytest.mark.parametrize("changes, match", [
    ({"num_classes": 0}, "num_classes"),
    ({"backbone": "vgg16"}, "resnet18"),
    ({"gate_threshold": 1.5}, "gate_threshold"),
    ({"stage_loss_weights": (1.0, 0.5)}, "one entry per"),
    ({"anchor_sizes": (32, 64)}, "anchor_sizes"),
    ({"rpn_bg_iou_thresh": 0.8}, "rpn_bg_iou_thresh"),
    ({"stage_target_stds": ((0.1, 0.1, 0.2),) * 3}, "4 positive"),
    ({"detections_per_img": 0}, "detections_per_img"),
])
def test_invalid_values_raise_config_error(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(num_classes=2).replace(**changes)


def test_unknown_keys_raise() -> None:
    with pytest.raises(ConfigError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"num_classes": 2, "num_clases": 3})
    with pytest.raises(ConfigError, match="input_size"):
        ClassifierConfig(input_size=8)


def test_backbone_weights_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    body = ResNetBody("resnet18", str(path))
    torch.testing.assert_close(body.body.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(body.body.bn1.running_var, reference.bn1.running_var)

    with pytest.raises(CheckpointError, match="does not exist"):
        ResNetBody("resnet18", str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        ResNetBody("resnet18", str(bad))
    with pytest.raises(CheckpointError, match="do not fit resnet34"):
        ResNetBody("resnet34", str(path))


def test_presets_fill_fields_and_explicit_fields_win() -> None:
    from defectnet.model.config import MODEL_PRESETS

    paper = ModelConfig.preset("paper", num_classes=3)
    assert paper == ModelConfig(num_classes=3)
    compact = ModelConfig.preset("compact", num_classes=3, fpn_channels=32)
    assert compact.fpn_channels == 32
    assert compact.representation_size == MODEL_PRESETS["compact"]["representation_size"]
    assert compact.anchor_sizes == (16, 32, 64, 128, 256)
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge", num_classes=3)


def test_scratch_backbone_trains_everything_and_frozen_one_does_not() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    scratch = ResNetBody("resnet18", frozen_stages=-1, frozen_bn=False)
    assert all(p.requires_grad for p in scratch.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in scratch.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in scratch.modules())
    frozen = ResNetBody("resnet18", frozen_stages=1)
    assert not any(p.requires_grad for p in frozen.body.conv1.parameters())
    assert not any(p.requires_grad for p in frozen.body.layer1.parameters())
    assert all(p.requires_grad for p in frozen.body.layer2.parameters())
    with pytest.raises(ConfigError, match="frozen_stages"):
        ModelConfig(num_classes=2, frozen_stages=-2)
