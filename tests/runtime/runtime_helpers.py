"""Tiny models and images for the runtime tests (a uniquely named module: test files import
it, not conftest)."""

from __future__ import annotations

from typing import Any

import tiny_models
import torch
from torch import Tensor

from defectnet.model import DefectNet, ModelConfig

CLASSES = ["hole", "stain"]
SCALE = (320, 256)


def tiny_model(seed: int = 0, **changes: Any) -> DefectNet:
    """ResNet-18, 32-channel FPN, fewer proposals; livelier class and gate heads."""
    cfg = ModelConfig(num_classes=2, backbone="resnet18", fpn_channels=32, representation_size=64,
                      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=300, detections_per_img=50)
    return tiny_models.tiny_model(cfg, seed, **changes)


def images(n: int, seed: int = 0) -> list[Tensor]:
    """uint8 ``[3, h, w]`` images of different sizes (the pipeline resizes them)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(180, 300), (240, 320), (200, 260), (256, 256), (150, 330)]
    return [torch.randint(0, 256, (3, *sizes[i % len(sizes)]), generator=g, dtype=torch.uint8) for i in range(n)]
