"""Per-image timing (ATT) exactly as the seed measured it (``docs/method.md``, "Metrics").

ATT is the mean per-image time at batch size 1, measured between device synchronisations
around the model call. Included: the host-to-device copy of the already preprocessed
tensor, the model (backbone, gate, FPN, RPN, heads, NMS) and copying the result back.
Excluded: file decode, resize, pad. Warm-up calls are run before timing and not recorded.
ATT_normal / ATT_defective split the same times by the **ground-truth** label.

ATT_ideal = ATT_one * (1 - alpha * (1 - beta)), alpha = share of normal images, beta =
ATT_normal / ATT_defective of the method: the mean time the gate gives at this normal share
if the full path costs ATT_one. ATT_one should come from a one-model row measured in the
same session; when the caller has none, the method's own ATT_defective stands in for the
full-path time and ``att_one_source`` says so.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")
Clock = Callable[[], float]
Sync = Callable[[], None]

ATT_ONE_GIVEN = "given"
ATT_ONE_OWN_DEFECTIVE = "own_att_defective"


def device_sync(device: torch.device | str) -> Sync:
    """A function that waits for all queued work on ``device`` (no-op on CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


class LatencyTimer:
    """Times calls between device synchronisations; ``warmup`` first calls are not recorded.

    clock: seconds (``time.perf_counter``; tests inject a fake). sync: see :func:`device_sync`.
    ``times`` holds the recorded seconds, in call order.
    """

    def __init__(self, sync: Sync, clock: Clock = time.perf_counter, warmup: int = 0) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.sync, self.clock, self.warmup = sync, clock, warmup
        self.calls = 0
        self.times: list[float] = []

    def __call__(self, fn: Callable[[], T]) -> tuple[T, float | None]:
        """Run ``fn()``; return its result and the elapsed seconds (None for a warm-up call)."""
        self.sync()
        start = self.clock()
        out = fn()
        self.sync()
        elapsed = self.clock() - start
        self.calls += 1
        if self.calls <= self.warmup:
            return out, None
        self.times.append(elapsed)
        return out, elapsed


def thread_counts(backend: Any = None) -> dict[str, Any]:
    """The thread counts a timing runs with, for the results file.

    ``torch`` / ``torch_interop``: torch's process-wide intra-op and inter-op pools (they
    time a PyTorch model, and torch ops around any backend). With a runtime ``backend``
    (a wrapper's ``inner`` is followed): ``backend`` (its name) and ``backend_threads``, its
    own intra-op setting (ONNX Runtime ``intra_op_num_threads``, OpenVINO
    ``INFERENCE_NUM_THREADS``; 0 = the library's default, which is one thread per physical
    core for ONNX Runtime and all cores for OpenVINO; for the torch backend torch's count).
    """
    out: dict[str, Any] = {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}
    if backend is None:
        return out
    inner = backend
    while hasattr(inner, "inner"):
        inner = inner.inner
    out["backend"] = str(getattr(inner, "name", type(inner).__name__))
    if out["backend"] == "torch":
        out["backend_threads"] = out["torch"]
    else:
        for attr in ("intra_op_threads", "threads"):
            value = getattr(inner, attr, None)
            if isinstance(value, int):
                out["backend_threads"] = value
                break
    return out


def att_ideal(att_one: float, alpha: float, beta: float) -> float:
    """``att_one * (1 - alpha * (1 - beta))``."""
    return att_one * (1 - alpha * (1 - beta))


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default)."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class TimingSummary:
    """Milliseconds. att: mean over all timed images; att_normal / att_defective: by ground
    truth (None without such images); att_ideal: see module doc (None when undefined);
    att_one / att_one_source: the full-path time used and where it came from; alpha: share of
    normal images; beta: att_normal / att_defective; p50 / p99: latency percentiles."""

    att_ms: float
    att_normal_ms: float | None
    att_defective_ms: float | None
    att_ideal_ms: float | None
    att_one_ms: float | None
    att_one_source: str | None
    alpha: float
    beta: float | None
    p50_ms: float
    p99_ms: float
    num_timed: int
    num_normal: int
    num_defective: int


def summarize_times(times_s: Sequence[float], truth_defective: Sequence[bool],
                    att_one_ms: float | None = None) -> TimingSummary:
    """Summarise per-image seconds ``times_s`` (one per image, ground truth in
    ``truth_defective``) into ATT figures in milliseconds."""
    if len(times_s) != len(truth_defective):
        raise ValueError(f"{len(times_s)} times for {len(truth_defective)} images")
    if not times_s:
        raise ValueError("summarize_times needs at least one timed image")
    ms = [t * 1000.0 for t in times_s]
    normal = [t for t, d in zip(ms, truth_defective) if not d]
    defective = [t for t, d in zip(ms, truth_defective) if d]
    att_n, att_d = _mean(normal), _mean(defective)
    alpha = len(normal) / len(ms)
    beta = att_n / att_d if att_n is not None and att_d else None
    if att_one_ms is not None:
        one, source = float(att_one_ms), ATT_ONE_GIVEN
    elif att_d is not None:
        one, source = att_d, ATT_ONE_OWN_DEFECTIVE
    else:
        one, source = None, None
    if one is None:
        ideal = None
    elif alpha == 0:
        ideal = one
    else:
        ideal = att_ideal(one, alpha, beta) if beta is not None else None
    return TimingSummary(
        att_ms=statistics.fmean(ms), att_normal_ms=att_n, att_defective_ms=att_d, att_ideal_ms=ideal,
        att_one_ms=one, att_one_source=source, alpha=alpha, beta=beta,
        p50_ms=percentile(ms, 50) or 0.0, p99_ms=percentile(ms, 99) or 0.0,
        num_timed=len(ms), num_normal=len(normal), num_defective=len(defective))
