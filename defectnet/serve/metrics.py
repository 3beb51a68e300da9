"""The Prometheus metrics of a ``defectnet.serve`` Ingress replica (``GET /metrics``), in its
own ``prometheus_client`` registry.

The Ingress sees every request and every reply of the model deployments (each reply carries
the size of the batch it ran in and that batch's compute time), so one registry holds the
service's whole picture. Series (all prefixed ``defectnet_serve_``)::

    requests_total{code=...}                        counter   HTTP answers to POST /v1/inspect by status
    results_total{verdict=OK|NG|ERROR}              counter   records returned
    errors_total{reason=...}                        counter   error records by reason code (every code, from 0)
    deadline_misses_total                           counter   records later than their deadline
    gate_images_total / gate_passed_total           counter   images the gate saw / sent to the detector
    gate_pass_rate                                  gauge     gate_passed / gate_images (NaN before the first)
    latency_seconds                                 histogram request body read -> record, per request
    in_flight                                       gauge     requests inside this Ingress replica
    deployment_latency_seconds{deployment=...}      histogram a call to Gate/Detector/Fused as the Ingress
                                                              saw it (queue + batch forming + compute + transfer)
    deployment_batch_size{deployment=...}           histogram the size of the batch each request ran in
    deployment_busy_seconds_total{deployment=...}   counter   compute time of the deployment's batches (each
                                                              request books batch time / batch size)
    deployment_wait_seconds_total{deployment=...}   counter   call latency minus the compute time of the batch the
                                                              request ran in: queueing, batch forming, transfer
    deployment_retries_total{deployment=...}        counter   calls retried after a replica died

With several Ingress replicas, each serves its own registry (a scrape through the HTTP proxy
reaches one of them): run one Ingress replica, or scrape Ray's own metrics on a cluster.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from defectnet.runtime.inspection.metrics import BATCH_BUCKETS, LATENCY_BUCKETS
from defectnet.runtime.types import Verdict

PREFIX = "defectnet_serve_"


class ServeMetrics:
    """Thread-safe counters of one Ingress replica (module docstring). deployments: the model
    deployments' names; reasons: error reason codes exported from 0."""

    def __init__(self, deployments: Iterable[str], reasons: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._images = self._passed = 0
        r, p = self.registry, PREFIX
        self.requests = Counter(f"{p}requests", "HTTP answers to POST /v1/inspect, by status code.", ["code"],
                                registry=r)
        self.results = Counter(f"{p}results", "Records returned, by verdict (ERROR = error record).", ["verdict"],
                               registry=r)
        self.errors = Counter(f"{p}errors", "Error records by reason code.", ["reason"], registry=r)
        self.deadline_misses = Counter(f"{p}deadline_misses", "Records later than their deadline.", registry=r)
        self.gate_images = Counter(f"{p}gate_images", "Images the gate evaluated.", registry=r)
        self.gate_passed = Counter(f"{p}gate_passed", "Images the gate sent to the detector.", registry=r)
        Gauge(f"{p}gate_pass_rate", "gate_passed_total / gate_images_total.", registry=r).set_function(self._pass_rate)
        self.latency = Histogram(f"{p}latency_seconds", "Per-request latency in the Ingress (body read to record).",
                                 buckets=LATENCY_BUCKETS, registry=r)
        Gauge(f"{p}in_flight", "Requests inside this Ingress replica.", registry=r).set_function(
            lambda: self._in_flight)
        self.stage_latency = Histogram(f"{p}deployment_latency_seconds",
                                       "A call to a model deployment as the Ingress saw it (queue, batch forming, "
                                       "compute, transfer).", ["deployment"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{p}deployment_batch_size", "Size of the batch each request ran in.",
                                    ["deployment"], buckets=BATCH_BUCKETS, registry=r)
        self.busy = Counter(f"{p}deployment_busy_seconds", "Compute time of the deployment's batches (batch time / "
                            "batch size per request).", ["deployment"], registry=r)
        self.wait = Counter(f"{p}deployment_wait_seconds", "Call latency minus its batch's compute time (queue, "
                            "batch forming, transfer).", ["deployment"], registry=r)
        self.retries = Counter(f"{p}deployment_retries", "Calls retried after a replica died or was unreachable.",
                               ["deployment"], registry=r)
        for verdict in Verdict:
            self.results.labels(verdict=verdict.value)
        for reason in reasons:
            self.errors.labels(reason=str(reason))
        for name in deployments:
            for metric in (self.stage_latency, self.batch_size, self.busy, self.wait, self.retries):
                metric.labels(deployment=name)

    def _pass_rate(self) -> float:
        with self._lock:
            return self._passed / self._images if self._images else math.nan

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def record_gate(self, passed: bool) -> None:
        with self._lock:
            self._images += 1
            self._passed += int(passed)
            self.gate_images.inc()
            self.gate_passed.inc(int(passed))

    def record_call(self, deployment: str, latency_s: float, batch_size: int, batch_ms: float) -> None:
        """One reply of a model deployment: the call's latency and the batch it ran in."""
        self.stage_latency.labels(deployment=deployment).observe(latency_s)
        if batch_size > 0:
            self.batch_size.labels(deployment=deployment).observe(batch_size)
            self.busy.labels(deployment=deployment).inc(batch_ms / 1e3 / batch_size)
            self.wait.labels(deployment=deployment).inc(max(0.0, latency_s - batch_ms / 1e3))

    def record_retry(self, deployment: str) -> None:
        self.retries.labels(deployment=deployment).inc()

    def record_answer(self, code: int, verdict: str, reason: str | None, latency_s: float,
                      deadline_missed: bool) -> None:
        self.requests.labels(code=str(code)).inc()
        self.results.labels(verdict=str(verdict)).inc()
        if reason is not None:
            self.errors.labels(reason=str(reason)).inc()
        if deadline_missed:
            self.deadline_misses.inc()
        self.latency.observe(latency_s)

    def text(self) -> str:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry).decode("utf-8")


__all__ = ["PREFIX", "ServeMetrics"]
