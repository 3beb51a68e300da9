"""The two-model baseline: a separate image classifier gates a one-model detector.

Time = classifier + detector on the images it calls defective (the seed's
two-model_small / two-model_large rows).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from defectnet.errors import ConfigError
from defectnet.model.classifier import ImageClassifier
from defectnet.model.defectnet import DefectNet, check_image_batch
from defectnet.structures import Detections


class TwoModel(nn.Module):
    """Classifier gate -> one-model DefectNet (``with_gate=False``) on the positives only.

    ``inference`` has the signature and return type of :meth:`DefectNet.inference`;
    ``p_defective`` of each result is the classifier's.
    """

    def __init__(self, classifier: ImageClassifier, detector: DefectNet, gate_threshold: float = 0.5) -> None:
        super().__init__()
        if detector.config.with_gate:
            raise ConfigError("TwoModel needs a one-model detector: build it with ModelConfig(with_gate=False, ...)")
        if not 0.0 <= gate_threshold <= 1.0:
            raise ConfigError(f"gate_threshold must be in [0, 1], got {gate_threshold!r}")
        self.classifier = classifier
        self.detector = detector
        self.gate_threshold = gate_threshold

    @torch.no_grad()
    def inference(self, images: Tensor, image_sizes: list[tuple[int, int]],
                  gate_threshold: float | None = None) -> list[Detections]:
        """Classify the batch; detect on the sub-batch with P(defective) >= threshold."""
        check_image_batch(images, image_sizes)
        p = self.classifier.p_defective(images, image_sizes)
        threshold = self.gate_threshold if gate_threshold is None else gate_threshold
        selected = torch.where(p >= threshold)[0]
        p_host = p.tolist()
        results = [Detections.empty(p_host[i], ran_detector=False, device=images.device) for i in range(len(p_host))]
        if len(selected):
            chosen = selected.tolist()
            dets = self.detector.inference(images[selected], [image_sizes[i] for i in chosen])
            for i, det in zip(chosen, dets):
                results[i] = dataclasses.replace(det, p_defective=p_host[i])
        return results

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]],
                gate_threshold: float | None = None) -> list[Detections]:
        return self.inference(images, image_sizes, gate_threshold)
