"""The metrics of one :class:`~defectnet.runtime.inspection.inspector.Inspector`, kept in its
own ``prometheus_client`` :class:`~prometheus_client.CollectorRegistry` (two inspectors in one
process never mix their series; nothing goes to the process-wide default registry).

Exported series (all prefixed ``defectnet_inspector_``)::

    frames_submitted_total                  counter   frames accepted by submit()/inspect()
    results_total{verdict=OK|NG|ERROR}      counter   result records delivered
    errors_total{reason=...}                counter   error records by reason code (every code, from 0)
    deadline_misses_total                   counter   records whose latency exceeded their deadline
    gate_images_total                       counter   images the gate looked at
    gate_passed_total                       counter   ... and sent to the detector
    gate_pass_rate                          gauge     gate_passed / gate_images (NaN before the first)
    detections_suppressed_total             counter   detections removed by the post-filter
    batch_size                              histogram frames per gate batch (_count = batches)
    latency_seconds                         histogram submit() -> result, per frame
    latency_recent_seconds{quantile=...}    summary   p50/p90/p99 over the last ``window`` frames
                                                      (_sum/_count: every frame, as latency_seconds)
    stage_seconds{stage=...}                histogram per-batch stage times (preprocess, gate, ...)
    review_images_total{kind=ng|borderline} counter   review images written
    review_dropped_total                    counter   review images skipped (writer busy or failed)
    callback_errors_total                   counter   exceptions raised by the result callback
    in_flight / queued_frames               gauge     frames inside the inspector / waiting for the gate
    gate_threshold                          gauge     the pipeline's P(defective) threshold

prometheus_client also exports a ``*_created`` timestamp per counter and histogram (its
default). :meth:`InspectorMetrics.snapshot` is the same state as a JSON-able dict.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from defectnet.errors import ConfigError
from defectnet.runtime.types import Verdict

PREFIX = "defectnet_inspector_"
#: Latency buckets in seconds: 1 ms .. 30 s (a CPU frame takes 10 ms to several seconds).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                      10.0, 30.0)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
VERDICTS: tuple[str, ...] = tuple(v.value for v in Verdict)
REVIEW_KINDS: tuple[str, ...] = ("ng", "borderline")

_Key = tuple[str, tuple[tuple[str, str], ...]]


def _samples(metric: Collector) -> dict[_Key, float]:
    """``(sample name, sorted labels) -> value`` of one metric (its public collect())."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in metric.collect() for s in family.samples}


class _RecentLatency(Collector):
    """``latency_recent_seconds``: quantiles of the last ``window`` latencies (a summary;
    its _sum/_count cover every frame, like a client-side Prometheus summary)."""

    def __init__(self, metrics: InspectorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        quantiles, count, total = self._metrics.recent_latency()
        family = SummaryMetricFamily(f"{PREFIX}latency_recent_seconds",
                                     f"Latency quantiles over the last {self._metrics.window} frames.",
                                     count_value=int(count), sum_value=total)
        for q, value in quantiles.items():
            family.samples.append(Sample(family.name, {"quantile": repr(q)}, value))
        yield family


class InspectorMetrics:
    """Thread-safe metrics of one inspector in their own registry (:attr:`registry`).

    window: frames kept for the recent p50/p90/p99; reasons: error reason codes exported
    from 0 (so alerts can use ``rate()`` before the first error).
    """

    def __init__(self, window: int = 10_000, reasons: Iterable[str] = ()) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"metrics_window must be a positive number of frames, got {window!r}")
        self.window = window
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=window)
        r, p = self.registry, PREFIX
        self.submitted = Counter(f"{p}frames_submitted", "Frames accepted by submit() or inspect().", registry=r)
        self.results = Counter(f"{p}results", "Result records delivered, by verdict (ERROR = error record).",
                               ["verdict"], registry=r)
        self.errors = Counter(f"{p}errors", "Error records by reason code.", ["reason"], registry=r)
        self.deadline_misses = Counter(f"{p}deadline_misses", "Records whose latency exceeded their deadline.",
                                       registry=r)
        self.gate_images = Counter(f"{p}gate_images", "Images the gate (or classifier) evaluated.", registry=r)
        self.gate_passed = Counter(f"{p}gate_passed", "Images the gate sent to the detector.", registry=r)
        self.gate_pass_rate = Gauge(f"{p}gate_pass_rate", "gate_passed_total / gate_images_total.", registry=r)
        self.gate_pass_rate.set_function(self._pass_rate_or_nan)
        self.suppressed = Counter(f"{p}detections_suppressed",
                                  "Detections removed by the post-filter (class thresholds, minimum area).",
                                  registry=r)
        self.batch_size = Histogram(f"{p}batch_size", "Frames per gate batch.", buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram(f"{p}latency_seconds", "Per-frame latency from submit() to its result.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.registry.register(_RecentLatency(self))
        self.stages = Histogram(f"{p}stage_seconds", "Per-batch time of each pipeline stage.", ["stage"],
                                buckets=LATENCY_BUCKETS, registry=r)
        self.review_images = Counter(f"{p}review_images", "Review images written, by kind.", ["kind"], registry=r)
        self.review_dropped = Counter(f"{p}review_dropped", "Review images not written (writer busy or failed).",
                                      registry=r)
        self.callback_errors = Counter(f"{p}callback_errors", "Exceptions raised by the result callback.",
                                       registry=r)
        for verdict in VERDICTS:  # every labelled series exists from 0
            self.results.labels(verdict=verdict)
        for reason in reasons:
            self.errors.labels(reason=str(reason))
        for kind in REVIEW_KINDS:
            self.review_images.labels(kind=kind)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Export ``PREFIX + name`` as a gauge whose value is ``read()`` at scrape time."""
        Gauge(f"{PREFIX}{name}", documentation, registry=self.registry).set_function(read)

    # -- recording (called by the inspector's threads) ----------------------------------------
    def count_submitted(self) -> None:
        self.submitted.inc()

    def record_result(self, verdict: str, latency_s: float, *, reason: str | None, deadline_missed: bool,
                      suppressed: int = 0) -> None:
        self.results.labels(verdict=str(verdict)).inc()
        if reason is not None:
            self.errors.labels(reason=str(reason)).inc()
        if deadline_missed:
            self.deadline_misses.inc()
        if suppressed:
            self.suppressed.inc(suppressed)
        self.latency.observe(latency_s)
        with self._lock:
            self._recent.append(latency_s)

    def record_batch(self, size: int, passed: int) -> None:
        with self._lock:  # images and passed move together (the pass rate reads both)
            self.batch_size.observe(size)
            self.gate_images.inc(size)
            self.gate_passed.inc(passed)

    def record_stages(self, stage_ms: Mapping[str, float]) -> None:
        for stage, ms in stage_ms.items():
            self.stages.labels(stage=stage).observe(ms / 1e3)

    def count_review(self, kind: str) -> None:
        self.review_images.labels(kind=kind).inc()

    def count_review_dropped(self) -> None:
        self.review_dropped.inc()

    def count_callback_error(self) -> None:
        self.callback_errors.inc()

    # -- reading --------------------------------------------------------------------------------
    def _pass_rate(self) -> float | None:
        with self._lock:
            images = _samples(self.gate_images)[(f"{PREFIX}gate_images_total", ())]
            passed = _samples(self.gate_passed)[(f"{PREFIX}gate_passed_total", ())]
        return passed / images if images else None

    def _pass_rate_or_nan(self) -> float:
        rate = self._pass_rate()
        return math.nan if rate is None else rate

    def recent_latency(self) -> tuple[dict[float, float], float, float]:
        """({quantile: seconds} over the window (NaN when empty), frames, total seconds)."""
        with self._lock:
            recent = np.asarray(self._recent, dtype=np.float64)
        quantiles = {q: float(np.quantile(recent, q)) if recent.size else math.nan for q in QUANTILES}
        latency = _samples(self.latency)
        return (quantiles, latency[(f"{PREFIX}latency_seconds_count", ())],
                latency[(f"{PREFIX}latency_seconds_sum", ())])

    def text(self) -> str:
        """The registry in the Prometheus text exposition format (``generate_latest``)."""
        return generate_latest(self.registry).decode("utf-8")

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able summary: counts, p50/p90/p99 latency (ms, recent window), pass rate."""
        p = PREFIX

        def total(metric: Collector, name: str) -> int:
            return int(_samples(metric)[(f"{p}{name}_total", ())])

        def by_label(metric: Collector, name: str, label: str) -> dict[str, int]:
            return {dict(labels)[label]: int(v) for (sample, labels), v in _samples(metric).items()
                    if sample == f"{p}{name}_total"}

        results = by_label(self.results, "results", "verdict")
        errors = {k: v for k, v in by_label(self.errors, "errors", "reason").items() if v}
        review = {k: v for k, v in by_label(self.review_images, "review_images", "kind").items() if v}
        batches = _samples(self.batch_size)
        n_batches, batch_sum = int(batches[(f"{p}batch_size_count", ())]), batches[(f"{p}batch_size_sum", ())]
        quantiles, _, _ = self.recent_latency()
        q = {f"p{int(x * 100)}_ms": (None if math.isnan(v) else v * 1e3) for x, v in quantiles.items()}
        with self._lock:
            gate_images, gate_passed = total(self.gate_images, "gate_images"), total(self.gate_passed, "gate_passed")
        return {
            "submitted": total(self.submitted, "frames_submitted"), "results": sum(results.values()),
            "ok": results.get(Verdict.OK, 0), "ng": results.get(Verdict.NG, 0), "errors": sum(errors.values()),
            "errors_by_reason": errors, "deadline_misses": total(self.deadline_misses, "deadline_misses"),
            "gate_images": gate_images, "gate_passed": gate_passed,
            "gate_pass_rate": gate_passed / gate_images if gate_images else None,
            "detections_suppressed": total(self.suppressed, "detections_suppressed"), "batches": n_batches,
            "mean_batch_size": batch_sum / n_batches if n_batches else None,
            "review_images": review, "review_dropped": total(self.review_dropped, "review_dropped"),
            "callback_errors": total(self.callback_errors, "callback_errors"), **q,
        }


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


__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "QUANTILES", "InspectorMetrics", "MetricsServer", "serve_registry"]
