"""Gate-loss and LR schedules against docs/method.md, "Loss balancing"."""

from __future__ import annotations

import math

import pytest

from defectnet.errors import ConfigError
from defectnet.train.config import TrainConfig, Variant
from defectnet.train.schedules import GateLossSchedule, LrSchedule, Strategy, scaled_steps

EPOCHS = range(12)


def test_original_defaults() -> None:
    const = GateLossSchedule.original("const")
    lin = GateLossSchedule.original("linear")
    inv = GateLossSchedule.original("inverse")
    exp = GateLossSchedule.original("exponential")
    for n in EPOCHS:
        assert const.weight(n) == pytest.approx(0.15)
        assert lin.weight(n) == pytest.approx(1 - n / 12)
        assert inv.weight(n) == pytest.approx(1 / (n + 1))
        assert exp.weight(n) == pytest.approx(2.0 ** -n)
    assert (lin.init_weight, lin.scale_factor, lin.period) == (1.0, pytest.approx(1 / 12), 1.0)
    assert (exp.base, exp.scale_factor) == (2.0, 1.0)


@pytest.mark.parametrize("w0,k,t,a", [(0.3, 0.2, 2.0, 3.0), (2.0, 0.5, 3.0, 1.5), (1.0, 1.0, 0.5, 10.0)])
def test_non_default_parameters(w0: float, k: float, t: float, a: float) -> None:
    for n in range(8):
        assert GateLossSchedule(Strategy.CONST, w0, k, t, a).weight(n) == pytest.approx(w0)
        assert GateLossSchedule(Strategy.LINEAR, w0, k, t, a).weight(n) == pytest.approx(-k * (n / t) + w0)
        assert GateLossSchedule(Strategy.INVERSE, w0, k, t, a).weight(n) == pytest.approx(k * w0 / (n / t + 1))
        assert GateLossSchedule(Strategy.EXPONENTIAL, w0, k, t, a).weight(n) == pytest.approx(
            k * w0 / max(a ** (n / t), 1e-6))


def test_exponential_floor_and_overflow() -> None:
    s = GateLossSchedule("exponential", 1.0, 2.0, 1.0, 0.01)  # a < 1: a**n shrinks below 1e-6
    assert s.weight(0) == pytest.approx(2.0)
    assert s.weight(5) == pytest.approx(2.0 / 1e-6)
    assert GateLossSchedule("exponential", 1.0, 1.0, 0.001, 10.0).weight(10) == 0.0  # 10**10000 overflows


def test_linear_is_not_clamped() -> None:
    assert GateLossSchedule.original("linear").weight(13) == pytest.approx(-1 / 12)


def test_validation() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        GateLossSchedule("cosine", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="period"):
        GateLossSchedule("linear", 1.0, 1.0, 0.0)
    with pytest.raises(ConfigError, match="base"):
        GateLossSchedule("exponential", 1.0, 1.0, 1.0, -2.0)
    with pytest.raises(ConfigError, match="finite"):
        GateLossSchedule("const", math.nan)
    with pytest.raises(ConfigError, match="epoch"):
        GateLossSchedule.original("const").weight(-1)
    assert GateLossSchedule.from_dict(GateLossSchedule.original("inverse").to_dict()) == \
        GateLossSchedule.original("inverse")


def test_train_config_schedule_rules() -> None:
    assert TrainConfig(Variant.CONST).gate_schedule == GateLossSchedule.original("const")
    assert TrainConfig(Variant.ONE_MODEL).gate_schedule is None
    with pytest.raises(ConfigError, match="negative"):
        TrainConfig(Variant.LINEAR, epochs=14)  # 1 - 13/12 < 0
    with pytest.raises(ConfigError, match=r"--gate-period 2\.667"):  # the fix the error names ...
        TrainConfig(Variant.LINEAR, epochs=32)
    stretched = GateLossSchedule(Strategy.LINEAR, 1.0, 1 / 12, 32 / 12)  # ... works: 1 -> 1 - 31/32
    assert TrainConfig(Variant.LINEAR, epochs=32, gate_schedule=stretched).gate_schedule.weight(31) > 0
    TrainConfig(Variant.LINEAR, epochs=13)  # w(12) = 0 is allowed
    with pytest.raises(ConfigError, match="no gate"):
        TrainConfig(Variant.ONE_MODEL, gate_schedule=GateLossSchedule.original("const"))
    with pytest.raises(ConfigError, match="needs a inverse"):
        TrainConfig(Variant.INVERSE, gate_schedule=GateLossSchedule.original("const"))
    with pytest.raises(ConfigError, match="variant"):
        TrainConfig("bogus")  # type: ignore[arg-type]
    cfg = TrainConfig(Variant.EXPONENTIAL, batch_size=4, scale=(800, 1333))
    assert cfg.effective_lr == pytest.approx(0.005)
    assert cfg.scale == (1333, 800)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_lr_warmup_and_steps() -> None:
    s = LrSchedule(0.0025)
    assert s.lr(0, 0) == pytest.approx(0.0025 / 3)
    assert s.lr(250, 0) == pytest.approx(0.0025 * (1 - 0.5 * (2 / 3)))
    assert s.lr(499, 0) == pytest.approx(0.0025 * (1 - (1 / 500) * (2 / 3)))
    assert s.lr(500, 0) == pytest.approx(0.0025)
    assert [s.lr(10_000, e) / 0.0025 for e in range(12)] == pytest.approx([1.0] * 8 + [0.1] * 3 + [0.01])
    # warm-up scales the stepped LR (mmdetection computes it from the regular LR)
    assert s.lr(0, 8) == pytest.approx(0.00025 / 3)


def test_lr_for_run_scales_steps_and_caps_warmup() -> None:
    assert scaled_steps(12) == (8, 11)
    assert scaled_steps(24) == (16, 22)
    assert scaled_steps(6) == (4, 6)
    assert scaled_steps(1) == (1, 1)
    full = LrSchedule.for_run(0.0025, 12, 3330)
    assert (full.warmup_iters, full.steps, full.notes) == (500, (8, 11), ())
    short = LrSchedule.for_run(0.01, 2, 10)
    assert short.warmup_iters == 5 and short.steps == (1, 2)
    assert any("capped" in n for n in short.notes) and any("scaled" in n for n in short.notes)
    assert short.lr(0, 0) == pytest.approx(0.01 / 3)
    assert short.lr(5, 0) == pytest.approx(0.01)
    assert short.lr(12, 1) == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="empty"):
        LrSchedule.for_run(0.01, 2, 0)
