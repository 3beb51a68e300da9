"""Tiny models for the export tests (a uniquely named module: test files import it, not conftest)."""

from __future__ import annotations

from typing import Any

import tiny_models
import torch

from defectnet.model import ClassifierConfig, DefectNet, ModelConfig, TwoModel, build_classifier

SCALE = (320, 256)  # verification runs at this scale and at 0.6 of it (192x154)
CLASSES = ["hole", "stain"]


def tiny_config(**changes: Any) -> ModelConfig:
    """ResNet-18, 32-channel FPN, fewer proposals: every code path, a fraction of the cost."""
    base = ModelConfig(num_classes=2, backbone="resnet18", fpn_channels=32, representation_size=64,
                       rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=300, detections_per_img=50)
    return base.replace(**changes)


def tiny_model(seed: int = 0, **changes: Any) -> DefectNet:
    """:func:`tiny_config` with livelier heads, boxes included (export parity compares them)."""
    return tiny_models.tiny_model(tiny_config(**changes), seed, box_std=0.05)


def tiny_two_model(seed: int = 0) -> TwoModel:
    torch.manual_seed(seed)
    classifier = build_classifier(ClassifierConfig(backbone="resnet18", input_size=64)).eval()
    return TwoModel(classifier, tiny_model(seed, with_gate=False), gate_threshold=0.5).eval()
