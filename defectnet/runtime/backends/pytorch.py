"""The PyTorch backend: the model an engine was exported from, run as is (the reference)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from defectnet.runtime.backends.base import Backend, RawDetections, select_rows
from defectnet.runtime.engine import Engine
from defectnet.runtime.types import BackendName

if TYPE_CHECKING:
    from defectnet.model import DefectNet, TwoModel


class TorchBackend(Backend):
    """The PyTorch model itself: a DefectNet (with or without gate) or a TwoModel."""

    name = BackendName.TORCH

    def __init__(self, model: DefectNet | TwoModel, device: str | torch.device = "cpu") -> None:
        from defectnet.model import TwoModel

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.two_model = isinstance(model, TwoModel)
        self.detector: DefectNet = model.detector if isinstance(model, TwoModel) else model  # type: ignore[assignment]
        self.max_detections = int(self.detector.config.detections_per_img)

    @classmethod
    def from_engine(cls, engine: Engine, device: str | torch.device = "cpu") -> TorchBackend:
        """The PyTorch model an engine was exported from (its manifest names the checkpoint;
        the weights' SHA-256 must still match)."""
        from defectnet.model_source import load_source_from_manifest

        model = load_source_from_manifest(engine.manifest, engine.root).model
        return cls(model, device)  # type: ignore[arg-type]  # ModelSource checks the type

    @torch.no_grad()
    def run_classifier(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        if not self.two_model:
            return super().run_classifier(images, image_sizes)
        p: Tensor = self.model.classifier.p_defective(  # type: ignore[union-attr,operator]
            images.to(self.device), image_sizes.to(self.device))
        return p.float().cpu()

    @torch.no_grad()
    def run_gate(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        p, feats = self.detector.features(images.to(self.device), image_sizes.to(self.device))
        return p.float().cpu(), feats

    def select(self, features: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        return select_rows(features, index)

    @torch.no_grad()
    def run_detector(self, features: dict[str, Tensor], image_sizes: Tensor) -> RawDetections:
        sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
        dets = self.detector.detect(features, sizes)
        m, b = self.max_detections, len(dets)
        boxes = torch.zeros(b, m, 4)
        scores = torch.zeros(b, m)
        labels = torch.zeros(b, m, dtype=torch.int64)
        count = torch.zeros(b, dtype=torch.int64)
        for i, d in enumerate(dets):
            n = min(int(d.scores.shape[0]), m)
            boxes[i, :n], scores[i, :n], labels[i, :n] = d.boxes[:n].cpu(), d.scores[:n].cpu(), d.labels[:n].cpu()
            count[i] = n
        return RawDetections(boxes, scores, labels, count)



__all__ = ["TorchBackend"]
