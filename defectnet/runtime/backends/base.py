"""The backend interface (Polygraphy-like) and the detector output every backend returns.

A backend runs the graphs of one model; the :class:`~defectnet.runtime.pipeline.Pipeline`
does everything else (preprocessing, gate decisions, sub-batch selection, box mapping),
so every backend gets exactly the same inputs::

    backend.load()                                  build sessions (idempotent)
    p = backend.run_classifier(images, sizes)       two-model engines only
    p, feats = backend.run_gate(images, sizes)      feats stay where the backend keeps them
    feats = backend.select(feats, index)            the gate-positive sub-batch
    raw = backend.run_detector(feats, sizes)        padded RawDetections on the host
    host = backend.features_to_host(feats)          numpy copies (to ship to another process)
    feats = backend.features_from_host(host)        back onto the backend's device

images: uint8 ``[B, 3, H, W]`` (preprocessed, padded); sizes: int64 ``[B, 2]`` (h, w);
index: int64 ``[K]``. ``feats`` is backend-specific and opaque to callers; only
:meth:`Backend.features_to_host` turns it into plain arrays (``{level: [K, C, h, w]}``, the
feature names c2..c5 and dtype the graphs use), e.g. for a gate and a detector that run in
different processes (``defectnet.serve``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from defectnet.errors import EngineError


@dataclass
class RawDetections:
    """Detector outputs on the host, padded: boxes float32 ``[B, M, 4]`` (model-input
    pixels), scores ``[B, M]``, labels int64 ``[B, M]`` (1..K, 0 = padding), count ``[B]``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    count: Tensor

    def __len__(self) -> int:
        return int(self.count.shape[0])

    def image(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """(boxes ``[n, 4]``, scores ``[n]``, labels ``[n]``) of image ``i``."""
        n = int(self.count[i])
        return self.boxes[i, :n], self.scores[i, :n], self.labels[i, :n]


class Backend(abc.ABC):
    """The interface every backend implements (see the module docstring)."""

    name: ClassVar[str]

    @property
    def label(self) -> str:
        """What runs the graphs, for tables and logs (a per-graph backend names each graph's)."""
        return str(self.name)

    def load(self) -> None:  # noqa: B027 - optional hook
        """Prepare sessions/devices; called once before the first run (idempotent)."""

    def run_classifier(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        raise EngineError(f"the {self.name} backend holds no classifier (only two-model engines have one)")

    @abc.abstractmethod
    def run_gate(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Any]:
        """-> (P(defective) float32 ``[B]`` on the host, opaque features)."""

    @abc.abstractmethod
    def select(self, features: Any, index: Tensor) -> Any:
        """Features of the images ``index`` (int64 ``[K]``, K >= 1), in that order."""

    @abc.abstractmethod
    def run_detector(self, features: Any, image_sizes: Tensor) -> RawDetections:
        """Detections of the images whose features are given."""

    def features_to_host(self, features: Any) -> dict[str, np.ndarray]:
        """Features (as :meth:`run_gate` / :meth:`select` return them) -> new host arrays
        ``{level: [K, C, h, w]}`` in the graphs' dtype, safe to pickle or put in an object
        store. This default is for backends whose features are ``{level: torch.Tensor}``."""
        return {name: value.detach().cpu().numpy().copy() for name, value in features.items()}

    def features_from_host(self, features: Mapping[str, np.ndarray]) -> Any:
        """The inverse of :meth:`features_to_host`: host arrays ``{level: [K, C, h, w]}`` ->
        features :meth:`run_detector` takes (on the backend's device). This default is for
        backends whose features are ``{level: torch.Tensor}`` on ``self.device``."""
        device = getattr(self, "device", "cpu")
        return {name: torch.from_numpy(np.ascontiguousarray(value)).to(device) for name, value in features.items()}

    def features_as_arrays(self, features: Any) -> dict[str, np.ndarray]:
        """Host arrays ``{level: [K, C, h, w]}`` of the features for *another backend in this
        process* (a per-graph engine: e.g. an ONNX Runtime gate handing C2..C5 to an OpenVINO
        detector). Unlike :meth:`features_to_host` they may share the features' memory (no
        copy on the CPU), so they are valid only while ``features`` lives and must not be
        written. This default copies (:meth:`features_to_host`)."""
        return self.features_to_host(features)

    def features_from_arrays(self, features: Mapping[str, np.ndarray]) -> Any:
        """Features :meth:`run_detector` takes, from :meth:`features_as_arrays` of another
        backend; may share the arrays' memory (keeping them referenced). This default is
        :meth:`features_from_host`."""
        return self.features_from_host(features)


def select_rows(features: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    """Rows ``index`` (int64 ``[K]``) of every ``[B, ...]`` tensor in ``features``, on the
    tensors' own device; the dict itself when ``index`` is ``0..B-1`` (no copy)."""
    n = next(iter(features.values())).shape[0]
    if index.numel() == n and bool((index.cpu() == torch.arange(n)).all()):
        return features
    idx = index.to(next(iter(features.values())).device)
    return {k: v.index_select(0, idx) for k, v in features.items()}


__all__ = ["Backend", "RawDetections", "select_rows"]
