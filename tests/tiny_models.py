"""The tiny randomly initialised DefectNet that the export, runtime and calibration tests
build (a uniquely named module: test helpers import it, not conftest).

Random heads put every class score near 1/(K+1) and P(defective) near 0.5 for every image;
:func:`tiny_model` widens the class and gate weights so that scores and gate decisions vary
from image to image, which the tests need to exercise thresholds, padding and routing.
"""

from __future__ import annotations

from typing import Any

import torch

from defectnet.model import DefectNet, ModelConfig, build_model


def tiny_model(config: ModelConfig, seed: int = 0, box_std: float | None = None, **changes: Any) -> DefectNet:
    """``build_model(config.replace(**changes))`` in eval mode, seeded, with livelier heads:
    class-score weights ~ N(0, 0.3), gate weights ~ N(0, 0.01) and, with ``box_std``, box
    regression weights ~ N(0, box_std) (so boxes move away from their proposals)."""
    torch.manual_seed(seed)
    model = build_model(config.replace(**changes)).eval()
    with torch.no_grad():
        for head in model.roi_heads.heads:
            head.cls_score.weight.normal_(0, 0.3)
            if box_std is not None:
                head.bbox_pred.weight.normal_(0, box_std)
        if model.gate is not None:
            model.gate.fc.weight.normal_(0, 0.01)
    return model
