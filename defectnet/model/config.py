"""Model configurations: plain frozen dataclasses, validated on construction, JSON-able.

The defaults are the original DefectNet / mmdetection 1.x ``cascade_rcnn_r50_fpn_1x``
recipe (see ``docs/method.md``, "Recipe"). Every number the model uses is a field here, so a
saved config describes the model completely.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from defectnet.errors import ConfigError

#: ResNet depths the model knows, with their C2..C5 channel counts.
RESNET_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}

_T = TypeVar("_T")


def _check_backbone(name: str) -> None:
    if name not in RESNET_CHANNELS:
        raise ConfigError(f"backbone {name!r} is unknown; use one of {sorted(RESNET_CHANNELS)}")


def _check_fraction(name: str, value: float, *, low_open: bool = False) -> None:
    ok = (0.0 < value if low_open else 0.0 <= value) and value <= 1.0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
        bound = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must be in {bound}, got {value!r}")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _to_json(obj: Any) -> dict[str, Any]:
    """A dataclass as a dict of JSON types (tuples become lists)."""

    def conv(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return {f.name: conv(getattr(obj, f.name)) for f in fields(obj)}


def _from_json(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """Build dataclass ``cls`` from ``data``; lists become tuples; unknown keys are an error."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)} "
            "(was the file written by another version of defectnet?)"
        )

    def conv(v: Any) -> Any:
        if isinstance(v, list):
            return tuple(conv(x) for x in v)
        return v

    try:
        return cls(**{k: conv(v) for k, v in data.items()})
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"cannot build {cls.__name__} from {dict(data)!r}: {err}") from err


#: Named detector sizes; a preset fills ModelConfig fields (explicit fields override it).
#: ``paper``: the original recipe (``docs/method.md``, "Recipe"). ``compact``: the same architecture
#: scaled for CPU training on reduced-size images (e.g. synthetic fabric at 612x250): a
#: narrower FPN and box head, anchors of scale 4 instead of 8 (sizes 16..256 on strides
#: 4..64, since defects are ~4x smaller at 1/4 size), and fewer proposals and sampled RoIs.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "compact": {
        "fpn_channels": 64, "representation_size": 256, "anchor_sizes": (16, 32, 64, 128, 256),
        "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
        "roi_batch_size_per_image": 128,
    },
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a DefectNet (or one-model Cascade R-CNN) model.

    Labels are ``1..num_classes``; 0 is background. Boxes and sizes are pixels of the
    model input (resized, unpadded image).
    """

    num_classes: int
    backbone: str = "resnet50"
    #: Local path to a torchvision ImageNet ResNet state_dict (``.pth`` or ``.safetensors``).
    #: ``None`` = random initialisation. Nothing is ever downloaded.
    backbone_weights: str | None = None
    #: False = the one-model baseline (plain Cascade R-CNN, no gate).
    with_gate: bool = True
    #: The detector runs for an image iff P(defective) >= gate_threshold (0.5 == argmax rule).
    gate_threshold: float = 0.5
    #: Stem + ``frozen_stages`` ResNet stages get no gradient (mmdetection ``frozen_stages``);
    #: -1 freezes nothing, not even the stem (for training from random initialisation).
    frozen_stages: int = 1
    #: BatchNorm frozen (the original: BN in eval mode with pretrained statistics). False =
    #: ordinary trainable BatchNorm, which a randomly initialised backbone needs.
    frozen_bn: bool = True
    fpn_channels: int = 256
    representation_size: int = 1024

    # --- RPN: anchor scale 8 on strides 4..64, three ratios (h/w) -----------------------
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    #: Proposals kept per FPN level before NMS / per image after NMS, training.
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    #: The same at test time.
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7

    # --- Cascade RoI heads ---------------------------------------------------------------
    stage_iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    stage_target_stds: tuple[tuple[float, float, float, float], ...] = (
        (0.1, 0.1, 0.2, 0.2),
        (0.05, 0.05, 0.1, 0.1),
        (0.033, 0.033, 0.067, 0.067),
    )
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2

    # --- Test-time post-processing ---------------------------------------------------------
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    def __post_init__(self) -> None:
        _check_positive_int("num_classes", self.num_classes)
        _check_backbone(self.backbone)
        if self.backbone_weights is not None and not isinstance(self.backbone_weights, str):
            raise ConfigError(f"backbone_weights must be a file path or None, got {self.backbone_weights!r}")
        _check_fraction("gate_threshold", self.gate_threshold)
        if not -1 <= self.frozen_stages <= 4:
            raise ConfigError(f"frozen_stages must be in -1..4 (-1 = nothing frozen), got {self.frozen_stages}")
        for name in ("fpn_channels", "representation_size", "rpn_batch_size_per_image",
                     "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                     "rpn_post_nms_top_n_test", "roi_batch_size_per_image", "roi_output_size",
                     "roi_sampling_ratio", "detections_per_img"):
            _check_positive_int(name, getattr(self, name))
        if tuple(self.anchor_strides) != (4, 8, 16, 32, 64):
            raise ConfigError(
                f"anchor_strides must be (4, 8, 16, 32, 64) (the FPN levels P2..P6), got {self.anchor_strides}"
            )
        if len(self.anchor_sizes) != len(self.anchor_strides) or min(self.anchor_sizes) <= 0:
            raise ConfigError(
                f"anchor_sizes needs one positive size per FPN level (5), got {self.anchor_sizes}; "
                "the original is scale 8 x strides = (32, 64, 128, 256, 512)"
            )
        if not self.anchor_ratios or min(self.anchor_ratios) <= 0:
            raise ConfigError(f"anchor_ratios must be positive h/w ratios, got {self.anchor_ratios}")
        if not self.rpn_bg_iou_thresh <= self.rpn_fg_iou_thresh:
            raise ConfigError(
                f"rpn_bg_iou_thresh ({self.rpn_bg_iou_thresh}) must not exceed "
                f"rpn_fg_iou_thresh ({self.rpn_fg_iou_thresh})"
            )
        for name in ("rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_nms_thresh", "nms_thresh", "score_thresh"):
            _check_fraction(name, getattr(self, name))
        _check_fraction("rpn_positive_fraction", self.rpn_positive_fraction, low_open=True)
        _check_fraction("roi_positive_fraction", self.roi_positive_fraction, low_open=True)
        n = len(self.stage_iou_thresholds)
        if n == 0 or len(self.stage_loss_weights) != n or len(self.stage_target_stds) != n:
            raise ConfigError(
                "stage_iou_thresholds, stage_loss_weights and stage_target_stds need one entry per "
                f"cascade stage; got {len(self.stage_iou_thresholds)}, {len(self.stage_loss_weights)} "
                f"and {len(self.stage_target_stds)}"
            )
        for iou in self.stage_iou_thresholds:
            _check_fraction("stage_iou_thresholds", iou, low_open=True)
        if min(self.stage_loss_weights) < 0:
            raise ConfigError(f"stage_loss_weights must be >= 0, got {self.stage_loss_weights}")
        for stds in self.stage_target_stds:
            if len(stds) != 4 or min(stds) <= 0:
                raise ConfigError(f"each stage_target_stds entry must be 4 positive numbers, got {stds}")

    @property
    def num_stages(self) -> int:
        return len(self.stage_iou_thresholds)

    @classmethod
    def preset(cls, name: str, num_classes: int, **fields: Any) -> ModelConfig:
        """The config of a named preset (:data:`MODEL_PRESETS`), ``fields`` overriding it."""
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; use one of {sorted(MODEL_PRESETS)}")
        return cls(num_classes=num_classes, **{**MODEL_PRESETS[name], **fields})

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        return _from_json(cls, data)


@dataclass(frozen=True)
class ClassifierConfig:
    """The two-model baseline's image classifier (normal vs defective).

    input_size: the classifier sees each image's valid region resized to
    ``input_size x input_size`` ("two-model_small", 224); ``None`` = the full padded
    detector input with a masked average pool ("two-model_large").
    frozen_bn: BatchNorm as :class:`torchvision.ops.FrozenBatchNorm2d` (statistics and
    affine frozen, as the detector) or ordinary trainable BatchNorm (default: a classifier
    is trained with batches large enough for BN, as the original 52-epoch run).
    """

    backbone: str = "resnet50"
    input_size: int | None = 224
    backbone_weights: str | None = None
    frozen_bn: bool = False

    def __post_init__(self) -> None:
        _check_backbone(self.backbone)
        if self.input_size is not None:
            _check_positive_int("input_size", self.input_size)
            if self.input_size < 32:
                raise ConfigError(f"input_size must be >= 32 (or None for full size), got {self.input_size}")

    def to_dict(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        return _from_json(cls, data)
