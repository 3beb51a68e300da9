"""Counters and latency histograms of an :class:`~defectnet.runtime.inspection.inspector.Inspector`,
exported in the Prometheus text exposition format (version 0.0.4), with no dependency.

Exported series (all prefixed ``defectnet_inspector_``)::

    frames_submitted_total                  counter   frames accepted by submit()/inspect()
    results_total{verdict=OK|NG|ERROR}      counter   result records delivered
    errors_total{reason=...}                counter   error records by reason code
    deadline_misses_total                   counter   records whose latency exceeded their deadline
    gate_images_total                       counter   images the gate looked at
    gate_passed_total                       counter   ... and sent to the detector
    gate_pass_rate                          gauge     gate_passed / gate_images (NaN before the first)
    detections_suppressed_total             counter   detections removed by the post-filter
    batches_total / batch_size              histogram frames per gate batch
    latency_seconds                         histogram submit() -> result, per frame
    latency_recent_seconds{quantile=...}    summary   p50/p90/p99 over the last ``window`` frames
    stage_seconds{stage=...}                histogram per-batch stage times (preprocess, gate, ...)
    review_images_total{kind=ng|borderline} counter   review images written
    review_dropped_total                    counter   review images skipped (writer busy or failed)
    callback_errors_total                   counter   exceptions raised by the result callback
    in_flight / queued_frames               gauge     frames inside the inspector / waiting for the gate
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from defectnet.errors import ConfigError

PREFIX = "defectnet_inspector_"
#: Latency buckets in seconds: 1 ms .. 30 s (a CPU frame takes 10 ms to several seconds).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                      10.0, 30.0)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)


@dataclass
class Histogram:
    """A cumulative-bucket histogram (Prometheus semantics: ``le`` upper bounds)."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: Mapping[str, str] | None = None) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip((*self.buckets, math.inf), self.counts):
            cumulative += n
            out.append(f"{name}_bucket{_labels({**(labels or {}), 'le': _num(bound)})} {cumulative}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.total)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str] | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class InspectorMetrics:
    """Thread-safe counters of one inspector. ``window``: frames kept for the p50/p99."""

    def __init__(self, window: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.submitted = 0
        self.results: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.deadline_misses = 0
        self.gate_images = 0
        self.gate_passed = 0
        self.suppressed = 0
        self.review_images: Counter[str] = Counter()
        self.review_dropped = 0
        self.callback_errors = 0
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.stages: dict[str, Histogram] = {}
        self._recent: deque[float] = deque(maxlen=window)

    # -- recording (called by the inspector's threads) ----------------------------------------
    def count_submitted(self) -> None:
        with self._lock:
            self.submitted += 1

    def record_result(self, verdict: str, latency_s: float, *, reason: str | None, deadline_missed: bool,
                      suppressed: int = 0) -> None:
        with self._lock:
            self.results[verdict] += 1
            if reason is not None:
                self.errors[reason] += 1
            self.deadline_misses += deadline_missed
            self.suppressed += suppressed
            self.latency.observe(latency_s)
            self._recent.append(latency_s)

    def record_batch(self, size: int, passed: int) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.gate_images += size
            self.gate_passed += passed

    def record_stages(self, stage_ms: Mapping[str, float]) -> None:
        with self._lock:
            for stage, ms in stage_ms.items():
                self.stages.setdefault(stage, Histogram(LATENCY_BUCKETS)).observe(ms / 1e3)

    def count_review(self, kind: str) -> None:
        with self._lock:
            self.review_images[kind] += 1

    def count_review_dropped(self) -> None:
        with self._lock:
            self.review_dropped += 1

    def count_callback_error(self) -> None:
        with self._lock:
            self.callback_errors += 1

    # -- reading --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A JSON-able summary: counts, p50/p90/p99 latency (ms, recent window), pass rate."""
        with self._lock:
            recent = np.asarray(self._recent, dtype=np.float64)
            q = {f"p{int(x * 100)}_ms": (float(np.quantile(recent, x)) * 1e3 if recent.size else None)
                 for x in QUANTILES}
            return {
                "submitted": self.submitted, "results": sum(self.results.values()), "ok": self.results["OK"],
                "ng": self.results["NG"], "errors": sum(self.errors.values()), "errors_by_reason": dict(self.errors),
                "deadline_misses": self.deadline_misses, "gate_images": self.gate_images,
                "gate_passed": self.gate_passed,
                "gate_pass_rate": self.gate_passed / self.gate_images if self.gate_images else None,
                "detections_suppressed": self.suppressed, "batches": self.batch_size.count,
                "mean_batch_size": self.batch_size.total / self.batch_size.count if self.batch_size.count else None,
                "review_images": dict(self.review_images), "review_dropped": self.review_dropped,
                "callback_errors": self.callback_errors, **q,
            }

    def prometheus_text(self, gauges: Mapping[str, float] | None = None, reasons: Iterable[str] = ()) -> str:
        """The exposition text. gauges: extra ``name -> value`` gauges (queue depths);
        reasons: error reason codes to export even at 0 (so alerts can use rate())."""
        p = PREFIX
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {p}{name} {help_text}")
            out.append(f"# TYPE {p}{name} {kind}")

        with self._lock:
            family("frames_submitted_total", "counter", "Frames accepted by submit() or inspect().")
            out.append(f"{p}frames_submitted_total {self.submitted}")
            family("results_total", "counter", "Result records delivered, by verdict (ERROR = error record).")
            for verdict in ("OK", "NG", "ERROR"):
                out.append(f"{p}results_total{_labels({'verdict': verdict})} {self.results[verdict]}")
            family("errors_total", "counter", "Error records by reason code.")
            for reason in sorted(set(reasons) | set(self.errors)):
                out.append(f"{p}errors_total{_labels({'reason': reason})} {self.errors[reason]}")
            family("deadline_misses_total", "counter", "Records whose latency exceeded their deadline.")
            out.append(f"{p}deadline_misses_total {self.deadline_misses}")
            family("gate_images_total", "counter", "Images the gate (or classifier) evaluated.")
            out.append(f"{p}gate_images_total {self.gate_images}")
            family("gate_passed_total", "counter", "Images the gate sent to the detector.")
            out.append(f"{p}gate_passed_total {self.gate_passed}")
            family("gate_pass_rate", "gauge", "gate_passed_total / gate_images_total.")
            rate = self.gate_passed / self.gate_images if self.gate_images else math.nan
            out.append(f"{p}gate_pass_rate {_num(rate)}")
            family("detections_suppressed_total", "counter",
                   "Detections removed by the post-filter (class thresholds, minimum area).")
            out.append(f"{p}detections_suppressed_total {self.suppressed}")
            family("batch_size", "histogram", "Frames per gate batch.")
            out.extend(self.batch_size.lines(f"{p}batch_size"))
            family("latency_seconds", "histogram", "Per-frame latency from submit() to its result.")
            out.extend(self.latency.lines(f"{p}latency_seconds"))
            family("latency_recent_seconds", "summary", f"Latency quantiles over the last {self._recent.maxlen} "
                                                        "frames.")
            recent = np.asarray(self._recent, dtype=np.float64)
            for x in QUANTILES:
                value = float(np.quantile(recent, x)) if recent.size else math.nan
                out.append(f"{p}latency_recent_seconds{_labels({'quantile': _num(x)})} {_num(value)}")
            out.append(f"{p}latency_recent_seconds_sum {_num(self.latency.total)}")
            out.append(f"{p}latency_recent_seconds_count {self.latency.count}")
            family("stage_seconds", "histogram", "Per-batch time of each pipeline stage.")
            for stage in sorted(self.stages):
                out.extend(self.stages[stage].lines(f"{p}stage_seconds", {"stage": stage}))
            family("review_images_total", "counter", "Review images written, by kind.")
            for kind in ("ng", "borderline"):
                out.append(f"{p}review_images_total{_labels({'kind': kind})} {self.review_images[kind]}")
            family("review_dropped_total", "counter", "Review images not written (writer busy or failed).")
            out.append(f"{p}review_dropped_total {self.review_dropped}")
            family("callback_errors_total", "counter", "Exceptions raised by the result callback.")
            out.append(f"{p}callback_errors_total {self.callback_errors}")
        for name, value in (gauges or {}).items():
            family(name, "gauge", name.replace("_", " ").capitalize() + ".")
            out.append(f"{p}{name} {_num(float(value))}")
        return "\n".join(out) + "\n"


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (prometheus_client's WSGI server on a daemon
    thread). ``host``/``port``: where it listens (the real port when 0 was asked for);
    :meth:`shutdown` stops it and closes its socket (idempotent)."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._lock = threading.Lock()
        self._stopped = False
        address = server.server_address
        self.host, self.port = str(address[0]), int(address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def running(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    def shutdown(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()  # ends serve_forever (blocks until it has)
        self._server.server_close()
        self._thread.join(timeout=5.0)


def serve_registry(registry: Any, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` (a prometheus_client ``CollectorRegistry``) at
    ``http://host:port/metrics``. port 0 picks a free port (see :attr:`MetricsServer.port`)."""
    from prometheus_client import start_http_server

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"the metrics port must be an integer in 0..65535 (0 = any free port), got {port!r}")
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {host}:{port} ({e}); choose a free port (or 0 for any) "
                          "and a host address of this machine (127.0.0.1 for local scrapers only)") from None
    return MetricsServer(server, thread)


__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Histogram", "InspectorMetrics", "MetricsServer", "serve_registry"]
