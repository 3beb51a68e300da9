"""Gate-off twins: the same loaded graphs with the detector forced on every image."""

from __future__ import annotations

import pytest
from bench_helpers import FakeClock, FakePipeline, fake_case, loaded

from defectnet.bench.gating import GATE_OFF_SUFFIX, gate_off_twin, with_gate_off
from defectnet.errors import ConfigError


def test_gate_off_twin_shares_the_graphs() -> None:
    pipe = FakePipeline(FakeClock())
    on = loaded(pipe, fake_case(), {1: 1})
    off = gate_off_twin(on)
    assert off.gate_off and not on.gate_off
    assert off.case.row.name == "defectnet_const" + GATE_OFF_SUFFIX and on.case.row.name == "defectnet_const"
    assert off.case.key == "defectnet_const (gate off) | torch fp32" and off.case.label == on.case.label
    assert off.pipeline is not pipe and off.pipeline.gate_threshold == 0.0 and pipe.gate_threshold == 0.5
    assert off.pipeline.clock is pipe.clock and off.stages is on.stages  # the same backend, nothing reloaded
    assert off.remark.endswith(", gate off") and off.has_gate


def test_with_gate_off_puts_each_twin_before_its_case() -> None:
    clock = FakeClock()
    one = loaded(FakePipeline(clock), fake_case("one-model", "one-model"), {1: 1})
    const = loaded(FakePipeline(clock), fake_case(), {1: 1})
    out = with_gate_off([one, const])
    assert [lc.case.key for lc in out] == ["one-model | torch fp32", "defectnet_const (gate off) | torch fp32",
                                           "defectnet_const | torch fp32"]
    assert with_gate_off(out) == out  # a twin gets no twin
    with pytest.raises(ConfigError, match="no gate"):
        gate_off_twin(one)
