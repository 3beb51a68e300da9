"""What the gate saves: compute and time of the normal-image path vs the full path.

The normal path is backbone + gate (``DefectNet.features``); the full path adds FPN, RPN,
the cascade heads and NMS (``DefectNet.inference`` with the detector forced on). FLOPs are
counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
products; RoIAlign and NMS are not counted, so the full path is slightly under-counted).
The seed reports 63.5 GFLOPs (normal) vs 149.3 GFLOPs (full) at fabric scale.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from defectnet.model import DefectNet


@dataclass(frozen=True)
class PathCost:
    """Per-image cost at batch 1. gflops_*: giga floating-point operations (2 x MACs);
    ms_*: median wall time; share_*: normal path / full path."""

    input_size: tuple[int, int]
    gflops_normal: float
    gflops_full: float
    ms_normal: float
    ms_full: float

    @property
    def share_flops(self) -> float:
        return self.gflops_normal / self.gflops_full

    @property
    def share_time(self) -> float:
        return self.ms_normal / self.ms_full

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "share_flops": self.share_flops, "share_time": self.share_time}


def _gflops(fn: object) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()  # type: ignore[operator]
    return counter.get_total_flops() / 1e9


def path_cost(model: DefectNet, image: Tensor, image_size: tuple[int, int], *, repeats: int = 10,
              warmup: int = 3) -> PathCost:
    """Cost of one padded image ``[1, 3, H, W]`` (0..255) through both paths of ``model``.

    Times are medians of ``repeats`` calls per path on the CPU, the two paths interleaved
    (normal, full, normal, ...) after ``warmup`` untimed rounds, so that a machine that
    speeds up or slows down during the measurement shifts both paths alike.
    """
    model.eval()
    sizes = [image_size]
    with torch.no_grad():
        def normal() -> object:
            return model.features(image, sizes)

        def full() -> object:
            return model.inference(image, sizes, gate_threshold=0.0)

        g_normal, g_full = _gflops(normal), _gflops(full)
        times: dict[str, list[float]] = {"normal": [], "full": []}
        for round_ in range(warmup + repeats):
            for fn, key in ((normal, "normal"), (full, "full")):
                t0 = time.perf_counter()
                fn()
                if round_ >= warmup:
                    times[key].append((time.perf_counter() - t0) * 1e3)
    return PathCost((int(image.shape[-2]), int(image.shape[-1])), g_normal, g_full,
                    statistics.median(times["normal"]), statistics.median(times["full"]))
