"""Training schedules: the gate-loss weight w(n) and the learning rate.

Gate-loss weight (``docs/method.md``, "Loss balancing"). With ``w0 = init_weight``,
``k = scale_factor``, ``T = period``, ``a = base`` and ``n`` the **0-based epoch index**
(constant within an epoch):

============ ================================ =========================================
strategy     w(n)                             defaults of the original configs
============ ================================ =========================================
const        ``w0``                           w0 = 0.15
linear       ``-k * (n / T) + w0``            T = 1, k = 1/12, w0 = 1   -> 1 - n/12
inverse      ``k * w0 / (n / T + 1)``         T = 1, k = 1, w0 = 1      -> 1/(n+1)
exponential  ``k * w0 / max(a**(n/T), 1e-6)`` T = 1, k = 1, w0 = 1, a = 2 -> 2**-n
============ ================================ =========================================

The formulas are applied exactly; nothing is clamped. (``linear`` turns negative after
``n > w0*T/k`` epochs — 12 with the defaults; :class:`defectnet.train.config.TrainConfig`
refuses a run whose schedule would go negative.)

Learning rate (the original mmdetection 1.x recipe): linear warm-up over the first
``warmup_iters`` global iterations from ``warmup_ratio * lr`` (mmdetection's
``lr * (1 - (1 - i/W) * (1 - r))``), then ``lr * gamma ** (number of step epochs <= epoch)``
with 0-based epochs, i.e. steps at epochs 8 and 11 of 12 leave epochs 0..7 at ``lr``,
8..10 at ``0.1 lr`` and 11 at ``0.01 lr``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from enum import StrEnum

from defectnet.errors import ConfigError

#: Floor of the exponential schedule's denominator (the original's ``max(a**(n/T), 1e-6)``).
EXPONENTIAL_FLOOR = 1e-6


class Strategy(StrEnum):
    """A gate-loss weighting strategy."""

    CONST = "const"
    LINEAR = "linear"
    INVERSE = "inverse"
    EXPONENTIAL = "exponential"


#: The original configs' parameters per strategy: (init_weight, scale_factor, period, base).
ORIGINAL_DEFAULTS: dict[Strategy, tuple[float, float, float, float]] = {
    Strategy.CONST: (0.15, 1.0, 1.0, 2.0),
    Strategy.LINEAR: (1.0, 1.0 / 12.0, 1.0, 2.0),
    Strategy.INVERSE: (1.0, 1.0, 1.0, 2.0),
    Strategy.EXPONENTIAL: (1.0, 1.0, 1.0, 2.0),
}


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GateLossSchedule:
    """The weight w(n) of the gate's cross-entropy in epoch ``n`` (0-based).

    strategy: const | linear | inverse | exponential. init_weight: w0. scale_factor: k
    (unused by const). period: T > 0 (unused by const). base: a > 0 (exponential only).
    Use :meth:`original` for the original configs' parameters.
    """

    strategy: Strategy
    init_weight: float
    scale_factor: float = 1.0
    period: float = 1.0
    base: float = 2.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "strategy", Strategy(self.strategy))
        except ValueError:
            raise ConfigError(
                f"unknown gate-loss strategy {self.strategy!r}; use one of "
                f"{[s.value for s in Strategy]}") from None
        for name in ("init_weight", "scale_factor", "period", "base"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        if self.period <= 0:
            raise ConfigError(f"period T must be > 0, got {self.period}")
        if self.base <= 0:
            raise ConfigError(f"base a must be > 0, got {self.base}")

    @classmethod
    def original(cls, strategy: Strategy | str) -> GateLossSchedule:
        """The schedule with the original DefectNet configs' parameters."""
        try:
            s = Strategy(strategy)
        except ValueError:
            raise ConfigError(
                f"unknown gate-loss strategy {strategy!r}; use one of {[x.value for x in Strategy]}"
            ) from None
        w0, k, t, a = ORIGINAL_DEFAULTS[s]
        return cls(s, w0, k, t, a)

    def weight(self, epoch: int) -> float:
        """w(n) for the 0-based epoch index ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be a 0-based non-negative int, got {epoch!r}")
        n, w0, k, t, a = epoch, self.init_weight, self.scale_factor, self.period, self.base
        if self.strategy is Strategy.CONST:
            return w0
        if self.strategy is Strategy.LINEAR:
            return -k * (n / t) + w0
        if self.strategy is Strategy.INVERSE:
            return k * w0 / (n / t + 1)
        # exponential; a**(n/T) may overflow for huge n: the weight is then 0.
        try:
            denom = a ** (n / t)
        except OverflowError:
            return 0.0
        return k * w0 / max(denom, EXPONENTIAL_FLOOR)

    def to_dict(self) -> dict[str, object]:
        return {"strategy": self.strategy.value, "init_weight": self.init_weight,
                "scale_factor": self.scale_factor, "period": self.period, "base": self.base}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> GateLossSchedule:
        try:
            return cls(**d)  # type: ignore[arg-type]
        except TypeError as e:
            raise ConfigError(f"bad gate-loss schedule {d!r}: {e}") from None


# -------------------------------------------------------------------------------------------
# Learning rate
# -------------------------------------------------------------------------------------------

#: The original recipe: 12 epochs with LR steps at epochs 8 and 11.
REFERENCE_EPOCHS = 12
REFERENCE_STEPS: tuple[int, ...] = (8, 11)


def scaled_steps(epochs: int, reference_steps: tuple[int, ...] = REFERENCE_STEPS,
                 reference_epochs: int = REFERENCE_EPOCHS) -> tuple[int, ...]:
    """Step epochs scaled proportionally to a run of ``epochs`` epochs (round half up):
    12 -> (8, 11), 24 -> (16, 22), 6 -> (4, 6) (a step at ``epochs`` never fires), 1 -> (1, 1)."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    return tuple(int(math.floor(s * epochs / reference_epochs + 0.5)) for s in reference_steps)


@dataclass(frozen=True)
class LrSchedule:
    """Step learning rate with linear warm-up.

    base_lr: the LR after warm-up, before any step. warmup_iters: length of the warm-up in
    global iterations (0 = none). warmup_ratio: LR factor at iteration 0. steps: 0-based
    epochs at which the LR is multiplied by ``gamma`` (sorted).
    """

    base_lr: float
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    steps: tuple[int, ...] = REFERENCE_STEPS
    gamma: float = 0.1
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if _finite("base_lr", self.base_lr) <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.base_lr}")
        if self.warmup_iters < 0:
            raise ConfigError(f"warmup_iters must be >= 0, got {self.warmup_iters}")
        if not 0 < _finite("warmup_ratio", self.warmup_ratio) <= 1:
            raise ConfigError(f"warmup_ratio must be in (0, 1], got {self.warmup_ratio}")
        if not 0 < _finite("gamma", self.gamma) <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if list(self.steps) != sorted(self.steps) or any(s < 0 for s in self.steps):
            raise ConfigError(f"steps must be sorted non-negative epochs, got {self.steps}")

    @classmethod
    def for_run(cls, base_lr: float, epochs: int, iters_per_epoch: int, *, warmup_iters: int = 500,
                warmup_ratio: float = 1.0 / 3.0, max_warmup_fraction: float = 0.25) -> LrSchedule:
        """The original recipe adapted to a run: step epochs scaled by ``epochs / 12``
        (:func:`scaled_steps`) and the warm-up capped at ``max_warmup_fraction`` of all
        iterations (a 500-iteration warm-up would swallow a short run; the cap is recorded
        in ``notes``)."""
        if iters_per_epoch < 1:
            raise ConfigError(f"an epoch must have at least one iteration, got {iters_per_epoch}; "
                              "is the training set empty?")
        if not 0 < max_warmup_fraction <= 1:
            raise ConfigError(f"max_warmup_fraction must be in (0, 1], got {max_warmup_fraction}")
        total = epochs * iters_per_epoch
        cap = int(math.floor(max_warmup_fraction * total))
        notes: list[str] = []
        effective = warmup_iters
        if warmup_iters > cap:
            effective = cap
            notes.append(f"warm-up capped at {cap} iterations ({max_warmup_fraction:.0%} of the run's "
                         f"{total} iterations) instead of {warmup_iters}")
        steps = scaled_steps(epochs)
        if epochs != REFERENCE_EPOCHS:
            notes.append(f"LR step epochs scaled from {REFERENCE_STEPS} of {REFERENCE_EPOCHS} to "
                         f"{steps} of {epochs}")
        return cls(base_lr, effective, warmup_ratio, steps, notes=tuple(notes))

    def lr(self, iteration: int, epoch: int) -> float:
        """LR at the 0-based global ``iteration`` inside the 0-based ``epoch``."""
        regular = self.base_lr * self.gamma ** bisect.bisect_right(self.steps, epoch)
        if iteration < self.warmup_iters:
            k = (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
            return regular * (1 - k)
        return regular

    def to_dict(self) -> dict[str, object]:
        return {"base_lr": self.base_lr, "warmup_iters": self.warmup_iters,
                "warmup_ratio": self.warmup_ratio, "steps": list(self.steps), "gamma": self.gamma,
                "notes": list(self.notes)}
