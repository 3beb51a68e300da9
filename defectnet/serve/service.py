"""The HTTP API of ``defectnet.serve`` (what the Ingress deployment runs), free of Ray so it
can be tested on its own; the model part is a callable (:data:`InferFn`).

``POST /v1/inspect`` -- body: the encoded image (JPEG, PNG, BMP, TIFF, ...); query: optional
``key`` (copied into the record), ``deadline_ms`` and ``name`` (what the record and its
messages call the image, e.g. its path on the client; default ``<N bytes>``). The answer is always one record,
:meth:`InspectionResult.to_json` (``docs/record.schema.json``), the record ``defectnet-infer``
and the Inspector write, with the same input rule (:func:`~defectnet.runtime.inspection.validation.to_image`)::

    200  a verdict record (OK / NG)
    400  an error record (unsupported_input): a bad query parameter
    413  an error record (too_large): the body is over max_body_bytes (not read past the limit)
    422  an error record: the body is not an image the input rule accepts (its reason code)
    500  an error record (backend_error / internal_error): the model failed on this image
    503  an error record (overloaded / unavailable) + Retry-After: queues full, or a
         deployment down; send it again later (the client does)
    504  an error record (timeout): not done within deadline_ms or the server's request timeout

Nothing hangs: every request ends by ``min(deadline_ms, request_timeout_s)`` after its body
was read.

``GET /healthz`` -- 200 ``{"ready": true, ...}`` when every deployment of the application
has a running replica, else 503. ``GET /metrics`` -- Prometheus text (:mod:`.metrics`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from torch import Tensor

from defectnet.runtime.inspection.records import InspectionResult
from defectnet.runtime.inspection.validation import InputError, InputLimits, Reason, to_image
from defectnet.runtime.pipeline import ImageResult
from defectnet.runtime.types import Verdict
from defectnet.serve.metrics import ServeMetrics
from defectnet.serve.options import ServeOptions

INSPECT_PATH = "/v1/inspect"
#: HTTP status of each error reason (input reasons not listed here are 422).
STATUS = {Reason.TOO_LARGE: 413, Reason.TIMEOUT: 504, Reason.BACKEND_ERROR: 500, Reason.INTERNAL_ERROR: 500,
          Reason.OVERLOADED: 503, Reason.UNAVAILABLE: 503, Reason.UNSUPPORTED_INPUT: 400}


@dataclass
class Outcome:
    """What the model part made of one image: its :class:`ImageResult`, or an error
    (``reason`` and a message that says what was wrong)."""

    result: ImageResult | None = None
    reason: Reason | None = None
    message: str = ""


#: ``infer(image, expires_at)``: uint8 ``[3, H, W]`` and the ``time.time()`` by which the
#: answer is due -> :class:`Outcome`. The service cancels it at that time.
InferFn = Callable[[Tensor, float], Awaitable[Outcome]]
#: ``health()`` -> (every deployment up, details for the JSON answer).
HealthFn = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class InspectService:
    """The HTTP layer (module docstring): request parsing, the body limit, the input rule,
    deadlines, status codes, the record and the metrics. ``infer`` runs the model part."""

    def __init__(self, options: ServeOptions, infer: InferFn, health: HealthFn, metrics: ServeMetrics,
                 limits: InputLimits | None = None) -> None:
        self.options = options
        self.infer = infer
        self.health = health
        self.metrics = metrics
        self.limits = limits or InputLimits()

    async def __call__(self, request: Request) -> Response:
        path, root = request.scope.get("path", "/"), request.scope.get("root_path", "")
        if root and path.startswith(root):  # an application under a route prefix (serve.run route_prefix)
            path = path[len(root):]
        path, method = path.rstrip("/") or "/", request.method
        routes: dict[str, tuple[str, Callable[[Request], Awaitable[Response]]]] = {
            INSPECT_PATH: ("POST", self.inspect), "/healthz": ("GET", self.healthz), "/metrics": ("GET", self.scrape)}
        if path not in routes:
            return JSONResponse({"detail": f"no route {path}; use POST {INSPECT_PATH}, GET /healthz or GET /metrics"},
                                status_code=404)
        allowed, handler = routes[path]
        if method != allowed:
            return JSONResponse({"detail": f"{path} takes {allowed}, not {method}"}, status_code=405,
                                headers={"Allow": allowed})
        return await handler(request)

    async def healthz(self, request: Request) -> Response:
        try:
            ready, details = await asyncio.wait_for(self.health(), timeout=10.0)
        except Exception as e:  # noqa: BLE001 - the controller may be unreachable: not ready
            ready, details = False, {"error": f"{type(e).__name__}: {e}"}
        return JSONResponse({"ready": ready, **details}, status_code=200 if ready else 503)

    async def scrape(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def inspect(self, request: Request) -> Response:
        t0 = time.perf_counter()
        self.metrics.enter()
        try:
            return await self._inspect(request, t0)
        finally:
            self.metrics.leave()

    async def _inspect(self, request: Request, t0: float) -> Response:
        key = request.query_params.get("key")
        name = request.query_params.get("name")
        raw_deadline = request.query_params.get("deadline_ms")
        deadline_ms: float | None = None
        if raw_deadline is not None:
            try:
                deadline_ms = float(raw_deadline)
            except ValueError:
                deadline_ms = math.nan
            if not (math.isfinite(deadline_ms) and deadline_ms > 0):
                return self._answer(key, name or "<request>", Outcome(
                    reason=Reason.UNSUPPORTED_INPUT,
                    message=f"deadline_ms={raw_deadline!r}: must be a positive number of milliseconds"), t0, None)
        body, size = await self._read_body(request)
        source = name or size
        if body is None:
            return self._answer(key, source, Outcome(
                reason=Reason.TOO_LARGE, message=f"{source}: the request body is over the service's limit of "
                f"{self.options.max_body_bytes:,} bytes; send a smaller (downscaled or compressed) image"),
                t0, deadline_ms)
        budget_s = min(self.options.request_timeout_s, deadline_ms / 1e3 if deadline_ms else math.inf)
        remaining = budget_s - (time.perf_counter() - t0)
        try:
            image = await asyncio.get_running_loop().run_in_executor(None, to_image, body, self.limits, source)
        except InputError as e:
            return self._answer(key, source, Outcome(reason=e.reason, message=str(e)), t0, deadline_ms)
        remaining = budget_s - (time.perf_counter() - t0)
        try:
            outcome = await asyncio.wait_for(self.infer(image, time.time() + remaining), timeout=max(remaining, 0.0))
        except TimeoutError:
            why = f"its {deadline_ms:g} ms deadline" if deadline_ms and deadline_ms / 1e3 <= budget_s else \
                f"the service's {self.options.request_timeout_s:g} s request timeout"
            outcome = Outcome(reason=Reason.TIMEOUT, message=f"{source}: not inspected within {why}; the service "
                              "is busy or the deadline is too short -- send it again later or raise the deadline")
        except Exception as e:  # noqa: BLE001 - a bug must still give a record
            outcome = Outcome(reason=Reason.INTERNAL_ERROR, message=f"{source}: {type(e).__name__}: {e}")
        return self._answer(key, source, outcome, t0, deadline_ms)

    async def _read_body(self, request: Request) -> tuple[bytes | None, str]:
        """(the body, its description) or (None, ...) when it is over the limit."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None, f"<{int(declared)} bytes>"
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None, f"<over {limit} bytes>"
            chunks.append(chunk)
        return b"".join(chunks), f"<{size} bytes>"

    def _answer(self, key: Any, source: str, outcome: Outcome, t0: float, deadline_ms: float | None) -> Response:
        latency_ms = (time.perf_counter() - t0) * 1e3
        r = outcome.result
        if r is not None:
            record = InspectionResult(
                key=key, source=source, sequence=0, verdict=r.verdict, p_defective=r.p_defective,
                ran_detector=r.ran_detector, boxes=r.boxes, scores=r.scores, labels=r.labels,
                class_names=list(r.class_names), original_size=r.original_size, batch_size=r.batch_size,
                timings_ms=dict(r.timings_ms))
            status = 200
        else:
            reason = outcome.reason or Reason.INTERNAL_ERROR
            record = InspectionResult(key=key, source=source, sequence=0, verdict=Verdict.ERROR,
                                      reason=reason.value, message=outcome.message or reason.value)
            status = STATUS.get(reason, 422)
        record.latency_ms = latency_ms
        record.deadline_ms = deadline_ms
        record.deadline_missed = deadline_ms is not None and (latency_ms > deadline_ms or record.reason == Reason.TIMEOUT)
        self.metrics.record_answer(status, record.verdict, record.reason, latency_ms / 1e3, record.deadline_missed)
        headers = {}
        if status == 503:
            headers["Retry-After"] = str(max(1, math.ceil(self.options.retry_after_s)))
        return JSONResponse(record.to_json(), status_code=status, headers=headers)


__all__ = ["INSPECT_PATH", "STATUS", "HealthFn", "InferFn", "InspectService", "Outcome"]
