"""Fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from model_testing import tiny_config

from defectnet.model import DefectNet, build_model


@pytest.fixture
def make_model() -> Callable[..., DefectNet]:
    def make(seed: int = 0, **changes: object) -> DefectNet:
        torch.manual_seed(seed)
        return build_model(tiny_config(**changes))

    return make
