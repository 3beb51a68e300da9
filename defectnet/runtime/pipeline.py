"""The conditional inference pipeline: gate the batch, detect on the positives only.

::

    images (uint8 [3, H_i, W_i]) --Preprocessor--> padded batch
        --gate graph (or the two-model's classifier)--> P(defective) per image
        --P >= threshold--> sub-batch --detector graph--> boxes in model-input pixels
        --/ scale factor--> boxes in original pixels, per image

Preprocessing is :class:`defectnet.data.transforms.Preprocessor` for every backend (the
same code as training). Images the gate calls normal never reach the detector graph.
Verdict: ``NG`` when the image has at least one detection (score above the model's test
threshold), else ``OK`` -- the image-level rule of the seed's F1 score.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from defectnet.data.transforms import Preprocessor, boxes_to_original
from defectnet.errors import ConfigError
from defectnet.runtime.backends import Backend, BackendOptions, RawDetections, make_backend
from defectnet.runtime.engine import Engine, load_engine
from defectnet.runtime.types import BackendName, EngineKind, Verdict
from defectnet.structures import Detections, ImageBatch

#: Stages timed per batch (milliseconds). ``model`` = everything but preprocessing: the
#: part the seed's ATT measured.
STAGES = ("preprocess", "classifier", "gate", "select", "detector", "postprocess")


@dataclass
class ImageResult:
    """One image's result. Boxes are xyxy pixels of the *original* image.

    timings_ms: the batch's per-stage times (the batch shares them; ``batch_size`` says
    how many images did).
    """

    verdict: Verdict
    p_defective: float
    ran_detector: bool
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str]
    original_size: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "p_defective": round(self.p_defective, 6), "ran_detector": self.ran_detector,
            "detections": [
                {"box": [round(float(v), 2) for v in box], "score": round(float(s), 5), "label": int(lab),
                 "class_name": name}
                for box, s, lab, name in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(),
                                             self.class_names)
            ],
            "original_size": list(self.original_size),
            "batch_size": self.batch_size,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def __call__(self, stage: str) -> _Timer:
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.ms[self._stage] = self.ms.get(self._stage, 0.0) + (time.perf_counter() - self._t0) * 1e3


@dataclass
class _Gated:
    """Gate output of one batch: P ``[B]``, positive positions ``[K]``, their features
    (backend-specific; None when K == 0) and sizes ``[K, 2]``."""

    p: Tensor
    index: Tensor
    features: Any
    sizes: Tensor


@dataclass
class GatedBatch:
    """What :meth:`Pipeline.gate_stage` hands to :meth:`Pipeline.detect_stage`.

    batch: the preprocessed images; gate: P(defective) and the positives' features (which
    stay on the backend's device); p_defective: ``[B]`` float32 on the host.
    """

    batch: ImageBatch
    gate: _Gated
    timer: _Timer

    @property
    def p_defective(self) -> Tensor:
        return self.gate.p

    @property
    def ran_detector(self) -> Tensor:
        """bool ``[B]``: which images go to the detector."""
        out = torch.zeros(int(self.gate.p.shape[0]), dtype=torch.bool)
        out[self.gate.index] = True
        return out


@dataclass
class HostGated:
    """:meth:`Pipeline.gate_to_host`: the gate's output for a batch of B images with the K
    gate-positive images' features copied to the host as plain arrays, so that the detector
    can run in another process (``defectnet.serve`` ships them through Ray's object store).

    p_defective: float32 ``[B]``; index: int64 ``[K]``, the positions of the gate-positive
    images; features: ``{level: [K, C, h, w]}`` numpy arrays (c2..c5 in the graphs' dtype),
    None when K == 0; image_sizes: int64 ``[K, 2]``, the positives' model-input ``(h, w)``;
    scale_factors / original_sizes: per image of the batch (B entries); timings_ms: the
    batch's stages so far (preprocess, gate, select: ``select`` includes the host copy).
    """

    p_defective: Tensor
    index: Tensor
    features: dict[str, np.ndarray] | None
    image_sizes: Tensor
    scale_factors: list[tuple[float, float]]
    original_sizes: list[tuple[int, int]]
    timings_ms: dict[str, float]

    def __len__(self) -> int:
        return int(self.p_defective.shape[0])

    @property
    def ran_detector(self) -> Tensor:
        """bool ``[B]``: which images go to the detector."""
        out = torch.zeros(len(self), dtype=torch.bool)
        out[self.index] = True
        return out

    def positive_features(self, k: int) -> dict[str, np.ndarray]:
        """The features of the k-th positive (``0 <= k < K``) as ``{level: [1, C, h, w]}``
        copies (not views of the batch's arrays, so each can be shipped on its own)."""
        if self.features is None or not 0 <= k < int(self.index.numel()):
            raise IndexError(f"positive {k} of {int(self.index.numel())}")
        return {name: value[k:k + 1].copy() for name, value in self.features.items()}


class Pipeline:
    """Preprocess -> gate -> detector on the gate-positive sub-batch -> original coordinates.

    backend: any :class:`~defectnet.runtime.backends.Backend`. kind: the engine kind
    (``defectnet``, ``one-model``, ``two-model``). gate_threshold: P(defective) at or above
    which the detector runs (ignored by one-model engines, which always detect).
    """

    def __init__(self, backend: Backend, *, kind: EngineKind | str, class_names: list[str] | tuple[str, ...],
                 gate_threshold: float, preprocessor: Preprocessor | None = None) -> None:
        if not gate_threshold >= 0.0:  # also rejects NaN; a value above 1 runs no detector
            raise ConfigError(f"gate_threshold must be a probability (>= 0), got {gate_threshold!r}")
        if kind not in set(EngineKind):
            raise ConfigError(f"unknown engine kind {kind!r}; use one of {', '.join(EngineKind)}")
        self.backend = backend
        self.kind = EngineKind(kind)
        self.class_names = list(class_names)
        self.gate_threshold = float(gate_threshold)
        self.preprocessor = preprocessor or Preprocessor()
        self.backend.load()

    @classmethod
    def from_engine(cls, engine: Engine | str | os.PathLike[str], backend: BackendName | str = BackendName.AUTO, *,
                    backend_options: BackendOptions | None = None, gate_threshold: float | None = None
                    ) -> Pipeline:
        """A pipeline over an engine folder (validated) with the named backend, built by
        :func:`~defectnet.runtime.backends.make_backend` with ``backend_options`` (threads,
        device, providers; default: CPU)."""
        eng = engine if isinstance(engine, Engine) else load_engine(engine)
        threshold = eng.gate_threshold if gate_threshold is None else gate_threshold
        return cls(make_backend(eng, backend, backend_options), kind=eng.kind,
                   class_names=eng.class_names, gate_threshold=threshold, preprocessor=eng.preprocessor)

    def _names(self, labels: Tensor) -> list[str]:
        return [self.class_names[int(i) - 1] if 1 <= int(i) <= len(self.class_names) else str(int(i))
                for i in labels.tolist()]

    def __call__(self, images: list[Tensor]) -> list[ImageResult]:
        return self.run(images)

    def run(self, images: list[Tensor]) -> list[ImageResult]:
        """Results for uint8 ``[3, H, W]`` RGB images, in order."""
        if not images:
            return []
        return self.detect_stage(self.gate_stage(images))

    def gate_stage(self, images: list[Tensor]) -> GatedBatch:
        """The first half of :meth:`run`: preprocess, gate, select the gate-positive features.

        ``run(x) == detect_stage(gate_stage(x))``; the two halves may run on different threads
        (the :class:`~defectnet.runtime.inspection.inspector.Inspector` overlaps batch k+1's gate with
        batch k's detector).
        """
        if not images:
            raise ConfigError("gate_stage needs at least one image")
        timer = _Timer()
        with timer("preprocess"):
            batch = self.preprocessor(images)
        return GatedBatch(batch, self._gate_part(batch.images, batch.image_sizes, self.gate_threshold, timer), timer)

    def detect_stage(self, gated: GatedBatch) -> list[ImageResult]:
        """The second half of :meth:`run`: detector on the positives, boxes to original pixels."""
        batch, timer = gated.batch, gated.timer
        dets = self._detector_part(gated.gate, timer)
        with timer("postprocess"):
            results = [self.image_result(d.p_defective, d.ran_detector, d.boxes, d.scores, d.labels,
                                         batch.scale_factors[i], batch.original_sizes[i], len(batch))
                       for i, d in enumerate(dets)]
        for r in results:
            r.timings_ms = dict(timer.ms)
        return results

    def gate_to_host(self, images: list[Tensor]) -> HostGated:
        """Gate -> (P, host features of the positives): :meth:`gate_stage` with the selected
        features copied to plain host arrays (:class:`HostGated`), for a detector in another
        process. ``detect_on_host`` on them gives the boxes :meth:`run` gives."""
        gated = self.gate_stage(images)
        gate, timer = gated.gate, gated.timer
        features = None
        if gate.features is not None:
            with timer("select"):
                features = self.backend.features_to_host(gate.features)
        batch = gated.batch
        return HostGated(gate.p, gate.index, features, gate.sizes, list(batch.scale_factors),
                         list(batch.original_sizes), dict(timer.ms))

    def detect_on_host(self, features: Mapping[str, np.ndarray], image_sizes: Tensor) -> RawDetections:
        """The detector on given host features: ``{level: [K, C, h, w]}`` (as
        :meth:`gate_to_host` makes them; images padded alike) and their model-input sizes
        int64 ``[K, 2]``. Returns the padded detections in model-input pixels;
        :meth:`image_result` maps one image's to its original pixels."""
        if int(image_sizes.shape[0]) < 1:
            raise ConfigError("detect_on_host needs the features of at least one image")
        return self.backend.run_detector(self.backend.features_from_host(features), image_sizes.to(torch.int64))

    def image_result(self, p_defective: float, ran_detector: bool, boxes: Tensor, scores: Tensor, labels: Tensor,
                     scale_factor: tuple[float, float], original_size: tuple[int, int], batch_size: int,
                     timings_ms: dict[str, float] | None = None) -> ImageResult:
        """One image's result from its detections in model-input pixels (boxes ``[N, 4]``,
        scores ``[N]``, labels ``[N]``): boxes mapped to the original image, class names,
        verdict (``NG`` iff a detection)."""
        return ImageResult(
            verdict=Verdict.NG if len(scores) else Verdict.OK, p_defective=float(p_defective),
            ran_detector=bool(ran_detector), boxes=boxes_to_original(boxes.clone(), scale_factor, original_size),
            scores=scores, labels=labels, class_names=self._names(labels), original_size=original_size,
            timings_ms=dict(timings_ms or {}), batch_size=batch_size)

    def inference(self, images: Tensor, image_sizes: list[tuple[int, int]],
                  gate_threshold: float | None = None) -> list[Detections]:
        """The model part on an already preprocessed batch, like ``DefectNet.inference``.

        images: ``[B, 3, H, W]`` 0..255 (uint8 or float holding integers), padded;
        image_sizes: ``(h, w)`` before padding. Boxes are in model-input pixels. This is what
        evaluation times (the seed's ATT excludes decode and resize/pad).
        """
        threshold = self.gate_threshold if gate_threshold is None else float(gate_threshold)
        return self._gate_and_detect(images.to(torch.uint8) if images.is_floating_point() else images,
                            image_sizes, threshold, _Timer())

    def _gate_and_detect(self, images: Tensor, image_sizes: list[tuple[int, int]], threshold: float,
                timer: _Timer) -> list[Detections]:
        """Gate the batch, run the detector on the positive sub-batch only."""
        return self._detector_part(self._gate_part(images, image_sizes, threshold, timer), timer)

    def _gate_part(self, images: Tensor, image_sizes: list[tuple[int, int]], threshold: float,
                   timer: _Timer) -> _Gated:
        """P(defective) of the batch and the features of its gate-positive images."""
        n = int(images.shape[0])
        sizes = torch.tensor(image_sizes, dtype=torch.int64)
        with timer("gate" if self.kind != EngineKind.TWO_MODEL else "classifier"):
            if self.kind == EngineKind.TWO_MODEL:
                p = self.backend.run_classifier(images, sizes)
                feats = None
            else:
                p, feats = self.backend.run_gate(images, sizes)
        run = torch.ones(n, dtype=torch.bool) if self.kind == EngineKind.ONE_MODEL else p >= threshold
        index = torch.where(run)[0]
        if index.numel():
            if self.kind == EngineKind.TWO_MODEL:
                with timer("gate"):
                    _, feats = self.backend.run_gate(images.index_select(0, index), sizes[index])
            else:
                with timer("select"):
                    feats = self.backend.select(feats, index)
        else:
            feats = None  # nothing reaches the detector: drop the batch's features now
        return _Gated(p, index, feats, sizes[index])

    def _detector_part(self, gated: _Gated, timer: _Timer) -> list[Detections]:
        """Detections for every image of the batch (empty for the gate-negative ones)."""
        p, index = gated.p, gated.index
        raw: RawDetections | None = None
        if index.numel():
            with timer("detector"):
                raw = self.backend.run_detector(gated.features, gated.sizes)
        slot = {int(i): k for k, i in enumerate(index.tolist())}
        dets = []
        for i in range(int(p.shape[0])):
            if i in slot and raw is not None:
                boxes, scores, labels = raw.image(slot[i])
                dets.append(Detections(boxes, scores, labels, p_defective=float(p[i]), ran_detector=True))
            else:
                dets.append(Detections.empty(p_defective=float(p[i]), ran_detector=False))
        return dets
