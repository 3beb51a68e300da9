"""What the inspection runtime returns: :class:`InspectionResult` (one record per frame) and
the :class:`PostFilter` applied to the detector's boxes before the verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from defectnet.errors import ConfigError
from defectnet.runtime.types import Verdict


@dataclass(frozen=True)
class PostFilter:
    """Detections kept for the verdict. class_thresholds: class name -> minimum score;
    default_score: minimum score of the other classes (0 keeps what the model returns, which
    already drops scores below its test threshold, 0.05); min_area: minimum box area in
    original-image pixels (0: off)."""

    class_thresholds: Mapping[str, float] = field(default_factory=dict)
    default_score: float = 0.0
    min_area: float = 0.0

    def check(self, class_names: tuple[str, ...] | list[str]) -> None:
        unknown = sorted(set(self.class_thresholds) - set(class_names))
        if unknown:
            raise ConfigError(f"class thresholds name unknown classes {unknown}; the engine detects "
                              f"{list(class_names)}")
        for name, value in [*self.class_thresholds.items(), ("default_score", self.default_score)]:
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"score threshold {name}={value!r} must be in [0, 1]")
        if not self.min_area >= 0.0:
            raise ConfigError(f"min_area must be >= 0 pixels, got {self.min_area!r}")

    @property
    def active(self) -> bool:
        return bool(self.class_thresholds) or self.default_score > 0 or self.min_area > 0

    def keep(self, boxes: Tensor, scores: Tensor, class_names: list[str]) -> Tensor:
        """bool ``[N]``: the detections that pass."""
        thresholds = torch.tensor([float(self.class_thresholds.get(n, self.default_score)) for n in class_names],
                                  dtype=scores.dtype)
        area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
        return (scores >= thresholds) & (area >= self.min_area)


@dataclass
class InspectionResult:
    """The record of one frame. verdict: ``OK`` | ``NG`` | ``ERROR``; for ``ERROR``,
    ``reason`` (a :class:`Reason` code) and ``message`` say what was wrong. Boxes are xyxy in
    original-image pixels, after the post-filter (``suppressed`` = detections it removed).
    latency_ms: from the start of submit() to the result; timings_ms: the batch's stages.
    annotated: the annotated JPEG ``defectnet-infer --save-images`` wrote for it. image: the
    decoded frame, uint8 ``[3, H, W]``, only when the Inspector was asked to keep it
    (``keep_images``; None for error records); never part of :meth:`to_json`.

    :meth:`to_json` is the record ``defectnet-infer`` writes; ``docs/record.schema.json``
    is its JSON Schema."""

    key: Any
    source: str
    sequence: int
    verdict: Verdict
    p_defective: float | None = None
    ran_detector: bool = False
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    scores: Tensor = field(default_factory=lambda: torch.zeros(0))
    labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    class_names: list[str] = field(default_factory=list)
    original_size: tuple[int, int] | None = None
    reason: str | None = None
    message: str | None = None
    latency_ms: float = 0.0
    deadline_ms: float | None = None
    deadline_missed: bool = False
    batch_size: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    suppressed: int = 0
    review_image: str | None = None
    annotated: str | None = None
    image: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True unless this is an error record."""
        return self.verdict != Verdict.ERROR

    def to_json(self) -> dict[str, Any]:
        key = self.key if isinstance(self.key, str | int | float | bool) or self.key is None else str(self.key)
        out: dict[str, Any] = {"key": key, "image": self.source, "verdict": self.verdict}
        if self.verdict == Verdict.ERROR:
            out["error"] = {"reason": self.reason, "message": self.message}
        else:
            out.update({
                "p_defective": round(float(self.p_defective or 0.0), 6), "ran_detector": self.ran_detector,
                "detections": [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 5),
                                "label": int(lab), "class_name": name}
                               for box, s, lab, name in zip(self.boxes.tolist(), self.scores.tolist(),
                                                            self.labels.tolist(), self.class_names)],
                "suppressed": self.suppressed,
                "original_size": list(self.original_size or ()), "batch_size": self.batch_size,
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            })
            if self.review_image:
                out["review_image"] = self.review_image
            if self.annotated:
                out["annotated"] = self.annotated
        out.update({"latency_ms": round(self.latency_ms, 3), "deadline_ms": self.deadline_ms,
                    "deadline_missed": self.deadline_missed})
        return out


__all__ = ["InspectionResult", "PostFilter"]
