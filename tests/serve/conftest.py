"""Fixtures of the defectnet.serve tests: a tiny exported engine.

The loopback environment of Ray is set here, when pytest imports this file, i.e. before any
test module imports ``ray`` (Ray reads it at import time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from serve_helpers import CLASSES, SCALE

from defectnet.serve.local import LOOPBACK_ENV

os.environ.update(LOOPBACK_ENV)


@pytest.fixture(scope="session")
def serve_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DefectNet (ResNet-18, 32-channel FPN) exported to an ONNX engine folder."""
    import tiny_models

    from defectnet.export import export_engine
    from defectnet.model import ModelConfig
    from defectnet.model_source import ModelSource

    torch.set_num_threads(2)
    cfg = ModelConfig(num_classes=2, backbone="resnet18", fpn_channels=32, representation_size=64,
                      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=300, detections_per_img=50)
    out = tmp_path_factory.mktemp("serve") / "engine"
    export_engine(ModelSource(tiny_models.tiny_model(cfg, 0), CLASSES, scale=SCALE), out, verify=False)
    return out
