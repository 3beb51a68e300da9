"""Tiny models, data and engines for the calibration / engine-build tests (a uniquely named
module: test files import it, not conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tiny_models

from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.model import DefectNet, ModelConfig

#: (long, short) preprocessing scale of the tiny engines; synthetic fabric images are 192x96.
SCALE = (192, 96)
IMAGE_SIZE = (192, 96)  # (width, height) of the generated images


def tiny_model(num_classes: int, seed: int = 0, **changes: Any) -> DefectNet:
    """ResNet-18, 16-channel FPN, few proposals; livelier heads so scores spread out."""
    cfg = ModelConfig.preset("compact", num_classes=num_classes, backbone="resnet18", fpn_channels=16,
                             representation_size=32, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                             detections_per_img=20)
    return tiny_models.tiny_model(cfg, seed, **changes)


def synthetic_data(root: Path, images: int = 16, seed: int = 0) -> Path:
    generate(SynthParams("fabric", images=images, normal_share=0.5, seed=seed, size=IMAGE_SIZE, test_share=0.25),
             KINDS["fabric"], root)
    return root


def gate_feeds(n: int, size: tuple[int, int] = (96, 192), seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    h, w = size
    return [{"images": rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8),
             "image_sizes": np.array([[h, w]], dtype=np.int64)} for _ in range(n)]


@dataclass
class Quantized:
    """One calibration of the tiny engine and both Q/DQ flavours written from it."""

    calibration: Any
    files: dict[str, dict[str, Path]]  # flavour -> graph -> path
