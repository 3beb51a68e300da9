"""Training configuration: the model variants of the seed's table and the recipe.

The recipe defaults are the original's (``docs/method.md``, "Recipe"): 12 epochs, SGD with lr
0.0025 for 2 images per batch (scaled linearly with the batch size), momentum 0.9, weight
decay 1e-4, linear warm-up of 500 iterations from 1/3, LR steps x0.1 at epochs 8 and 11,
gradient clipping at max-norm 35, train scale (1333, 800) keep-ratio, flip 0.5.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from defectnet.errors import ConfigError
from defectnet.model.config import MODEL_PRESETS
from defectnet.train.schedules import REFERENCE_EPOCHS, GateLossSchedule, Strategy

#: The original LR for ``REFERENCE_BATCH`` images per iteration.
REFERENCE_LR = 0.0025
REFERENCE_BATCH = 2


class Variant(StrEnum):
    """The rows of the seed's results table."""

    ONE_MODEL = "one-model"
    TWO_MODEL_SMALL = "two-model-small"
    TWO_MODEL_LARGE = "two-model-large"
    CONST = "const"
    LINEAR = "linear"
    INVERSE = "inverse"
    EXPONENTIAL = "exponential"

    @property
    def is_defectnet(self) -> bool:
        """A shared-backbone model with a gate trained with a loss schedule."""
        return self in (Variant.CONST, Variant.LINEAR, Variant.INVERSE, Variant.EXPONENTIAL)

    @property
    def is_two_model(self) -> bool:
        return self in (Variant.TWO_MODEL_SMALL, Variant.TWO_MODEL_LARGE)

    @property
    def table_name(self) -> str:
        """The name the seed README uses for this row (``defectnet_const``, ``two-model_small``)."""
        if self.is_defectnet:
            return f"defectnet_{self.value}"
        return self.value.replace("-small", "_small").replace("-large", "_large")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _nonneg_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint).

    variant: which model of the table to train. epochs/batch_size: per stage.
    lr: SGD LR; None = ``0.0025 * batch_size / 2``. warmup_iters, warmup_ratio: linear warm-up;
    capped at ``max_warmup_fraction`` of the run's iterations. grad_clip: max L2 norm (0 = off).
    scale: ``(long, short)`` keep-ratio train scale. gate_schedule: the gate-loss weight of a
    DefectNet variant (None = the original's for that strategy; must be None otherwise).
    classifier_epochs: epochs of a two-model's image classifier (None = ``epochs``; the
    original trained 52 for two-model-small and 12 for two-model-large).
    detector_run: a finished one-model run reused as a two-model's detector (None = train one
    inside the run folder). model_preset: the detector size (``paper`` = the original recipe,
    ``compact`` = scaled for CPU on reduced-size images; see ``defectnet.model.MODEL_PRESETS``).
    fpn_channels: overrides the preset's FPN width (None = the preset's).
    keep_checkpoints: how many epoch checkpoints to keep (0 = all).
    """

    variant: Variant
    epochs: int = 12
    batch_size: int = 2
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    max_warmup_fraction: float = 0.25
    grad_clip: float = 35.0
    scale: tuple[int, int] = (1333, 800)
    flip_prob: float = 0.5
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    backbone: str = "resnet50"
    backbone_weights: str | None = None
    init_from: str | None = None
    gate_schedule: GateLossSchedule | None = None
    gate_threshold: float = 0.5
    classifier_epochs: int | None = None
    detector_run: str | None = None
    model_preset: str = "paper"
    fpn_channels: int | None = None
    background_category_ids: tuple[int, ...] = (0,)
    keep_checkpoints: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "variant", Variant(self.variant))
        except ValueError:
            raise ConfigError(f"unknown model variant {self.variant!r}; use one of "
                              f"{[v.value for v in Variant]}") from None
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.fpn_channels is not None:
            _positive_int("fpn_channels", self.fpn_channels)
        if self.model_preset not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {self.model_preset!r}; use one of {sorted(MODEL_PRESETS)}")
        if self.lr is not None:
            _nonneg_float("lr", self.lr)
            if self.lr == 0:
                raise ConfigError("lr must be > 0; leave it out to use 0.0025 * batch_size / 2")
        for name in ("momentum", "weight_decay", "grad_clip", "warmup_ratio", "flip_prob",
                     "gate_threshold", "max_warmup_fraction"):
            _nonneg_float(name, getattr(self, name))
        if not 0 < self.warmup_ratio <= 1:
            raise ConfigError(f"warmup_ratio must be in (0, 1], got {self.warmup_ratio}")
        if not 0 < self.max_warmup_fraction <= 1:
            raise ConfigError(f"max_warmup_fraction must be in (0, 1], got {self.max_warmup_fraction}")
        if self.flip_prob > 1 or self.gate_threshold > 1:
            raise ConfigError(f"flip_prob and gate_threshold must be in [0, 1], got "
                              f"{self.flip_prob} and {self.gate_threshold}")
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int) or self.warmup_iters < 0:
            raise ConfigError(f"warmup_iters must be an integer >= 0, got {self.warmup_iters!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {self.workers!r}")
        if isinstance(self.keep_checkpoints, bool) or not isinstance(self.keep_checkpoints, int) \
                or self.keep_checkpoints < 0:
            raise ConfigError(f"keep_checkpoints must be an integer >= 0, got {self.keep_checkpoints!r}")
        if len(self.scale) != 2 or min(self.scale) < 32:
            raise ConfigError(f"scale must be (long, short) of at least 32 px, got {self.scale}; e.g. 1333x800")
        object.__setattr__(self, "scale", (int(max(self.scale)), int(min(self.scale))))
        object.__setattr__(self, "background_category_ids", tuple(int(i) for i in self.background_category_ids))
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.classifier_epochs is not None:
            _positive_int("classifier_epochs", self.classifier_epochs)
            if not self.variant.is_two_model:
                raise ConfigError("classifier_epochs only applies to two-model-small/two-model-large")
        if self.init_from is not None:
            if self.variant.is_two_model:
                raise ConfigError("init_from (--init) starts a one-model or DefectNet detector from a finished run; "
                                  "a two-model reuses a one-model run with --detector instead")
            if self.backbone_weights is not None:
                raise ConfigError("pass --init or --backbone-weights, not both: the --init run already holds the "
                                  "backbone")
        if self.detector_run is not None and not self.variant.is_two_model:
            raise ConfigError("detector_run (--detector) only applies to two-model-small/two-model-large")
        if self.variant.is_defectnet:
            if self.gate_schedule is None:
                object.__setattr__(self, "gate_schedule", GateLossSchedule.original(self.variant.value))
            elif isinstance(self.gate_schedule, dict):
                object.__setattr__(self, "gate_schedule", GateLossSchedule.from_dict(self.gate_schedule))
            assert self.gate_schedule is not None
            if self.gate_schedule.strategy.value != self.variant.value:
                raise ConfigError(f"variant {self.variant.value} needs a {self.variant.value} gate schedule, "
                                  f"got {self.gate_schedule.strategy.value}")
            negative = [n for n in range(self.epochs) if self.gate_schedule.weight(n) < 0]
            if negative:
                raise ConfigError(
                    f"the {self.gate_schedule.strategy.value} gate-loss weight is negative from epoch "
                    f"{negative[0]} on (w = {self.gate_schedule.weight(negative[0]):.4g}); a negative "
                    "weight would train the gate to be wrong. Stretch the schedule over the run with "
                    f"--gate-period {self.epochs / REFERENCE_EPOCHS:.4g} (epochs / the original's {REFERENCE_EPOCHS}), or "
                    "lower --gate-scale-factor or --epochs")
        elif self.gate_schedule is not None:
            raise ConfigError(f"variant {self.variant.value} has no gate; drop the gate-schedule options")

    @property
    def effective_lr(self) -> float:
        """The SGD LR: ``lr`` or the original 0.0025 scaled linearly by ``batch_size / 2``."""
        return self.lr if self.lr is not None else REFERENCE_LR * self.batch_size / REFERENCE_BATCH

    @property
    def gate_strategy(self) -> Strategy | None:
        return self.gate_schedule.strategy if self.gate_schedule is not None else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variant"] = self.variant.value
        d["scale"] = list(self.scale)
        d["background_category_ids"] = list(self.background_category_ids)
        d["gate_schedule"] = self.gate_schedule.to_dict() if self.gate_schedule is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown train-config fields {sorted(unknown)}; the run was written by "
                              "another version of defectnet")
        kw = dict(d)
        if "scale" in kw:
            kw["scale"] = tuple(kw["scale"])
        if "background_category_ids" in kw:
            kw["background_category_ids"] = tuple(kw["background_category_ids"])
        if kw.get("gate_schedule") is not None:
            kw["gate_schedule"] = GateLossSchedule.from_dict(kw["gate_schedule"])
        return cls(**kw)
