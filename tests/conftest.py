"""Project-wide test hooks: tests marked ``tensorrt`` (TensorRT + a CUDA GPU) or ``gpu`` (a
CUDA GPU) are skipped cleanly on machines without them, with the reason in the report. Also
the tiny generated data set that the real-model training tests share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_fabric(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 synthetic fabric images at 128x64 (40 % normal), 7 train / 3 test."""
    from defectnet.data.synthetic import KINDS, SynthParams, generate

    root = tmp_path_factory.mktemp("tiny-fabric")
    generate(SynthParams("fabric", images=10, normal_share=0.4, seed=0, size=(128, 64), test_share=0.3),
             KINDS["fabric"], root)
    return root


def _cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def _tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    # the tensorrt type stubs install an empty 'tensorrt' namespace package: import succeeds
    return hasattr(tensorrt, "Builder")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = _cuda()
    trt = _tensorrt() if cuda else False
    for item in items:
        if "tensorrt" in item.keywords and not (cuda and trt):
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU (pip install tensorrt)"
                                              if cuda else "needs a CUDA GPU with TensorRT"))
        elif "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
