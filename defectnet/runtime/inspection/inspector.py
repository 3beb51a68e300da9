"""The inspection-line runtime: a stream of frames in, exactly one record per frame out.

::

    with Inspector.from_engine("runs/const/engine", batch_size=4, deadline_ms=200) as insp:
        record = insp.inspect("frame_0001.png")             # one image, synchronous
        for frame_id, frame in camera:
            insp.submit(frame, key=frame_id)                 # a stream (blocks when full)
        ...                                                  # records: insp.results() / on_result
    print(insp.metrics_text())                               # Prometheus text format

Threads and queues::

    submit() --validate/decode (caller's thread)--> inbox --[gate thread: batch, preprocess,
    gate, select]--> handoff (2 batches) --[detector thread: detector, post-filter]--> outbox
    --[delivery thread: submission order]--> futures, on_result callback, results()

* **Batching**: the gate thread takes the first waiting frame, then more until
  ``batch_size`` frames or ``max_wait_ms`` after the first, whichever comes first.
* **Pipelining**: the gate of batch k+1 runs while the detector works on batch k
  (:meth:`Pipeline.gate_stage` / :meth:`Pipeline.detect_stage`, the two halves of
  :meth:`Pipeline.run`, so the logic exists once).
* **Back-pressure**: at most ``max_in_flight`` frames are inside the inspector (submitted,
  not yet delivered). ``submit`` blocks until one leaves; with ``timeout`` it raises
  :class:`InspectorBusyError` instead and the frame is *not* accepted (the exception is its
  answer). A slow ``on_result`` callback therefore slows ``submit`` down too.
* **Exactly one record per accepted frame**, in submission order: a verdict (``OK``/``NG``
  with boxes) or ``ERROR`` with a :class:`~defectnet.runtime.inspection.validation.Reason` code and a
  message (bad input, backend exception, deadline under the ``skip`` policy). A batch
  whose backend call raises is retried one frame at a time, so one poisonous frame does
  not take its batch-mates down.
* **Deadlines** (``deadline_ms``, per inspector or per frame, measured from the start of
  ``submit``): policy ``report`` (default) processes every frame and marks the record
  ``deadline_missed`` when it is late; policy ``skip`` gives frames already past their
  deadline when their batch forms an ``ERROR``/``timeout`` record instead of running the
  model (a line that must keep up). Misses are counted in both cases.
* **Post-filter** (:class:`PostFilter`): per-class score thresholds and a minimum box area,
  applied to the detector's boxes *before* the verdict: ``NG`` iff a box survives. The gate
  is not affected (it uses the engine's calibrated ``gate_threshold``).
* **Thread-safe**: any number of threads may call ``submit``/``inspect`` on one inspector.
  ``close()`` stops intake, processes everything accepted and delivers it; the context
  manager calls it.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from defectnet.errors import ConfigError, DefectNetError
from defectnet.runtime.backends import BackendOptions
from defectnet.runtime.engine import Engine
from defectnet.runtime.inspection.metrics import InspectorMetrics, MetricsServer, serve_registry
from defectnet.runtime.inspection.records import InspectionResult, PostFilter
from defectnet.runtime.inspection.review import ReviewConfig, ReviewWriter
from defectnet.runtime.inspection.validation import InputError, InputLimits, Reason, describe, to_image
from defectnet.runtime.pipeline import GatedBatch, ImageResult, Pipeline
from defectnet.runtime.types import BackendName, Verdict

log = logging.getLogger(__name__)
DeadlinePolicy = Literal["report", "skip"]


class InspectorBusyError(DefectNetError):
    """submit() timed out waiting for room: the frame was not accepted."""


class InspectorClosedError(DefectNetError):
    """submit() after close(): the frame was not accepted."""


@dataclass(eq=False)
class _Frame:
    seq: int
    key: Any
    source: str
    t0: float
    deadline_ms: float | None
    stream: bool
    future: Future[InspectionResult]
    image: Tensor | None = None
    result: InspectionResult | None = None

    def expired(self, now: float) -> bool:
        return self.deadline_ms is not None and (now - self.t0) * 1e3 > self.deadline_ms


_STOP = object()
_UNSET: Any = object()


class Inspector:
    """See the module docstring. pipeline: a :class:`Pipeline` (its backend, preprocessor and
    gate threshold are used). batch_size / max_wait_ms: batching. max_in_flight: the
    back-pressure bound (default ``8 * batch_size``). deadline_ms / deadline_policy:
    deadlines. post_filter: see :class:`PostFilter`. limits: input size rules
    (:class:`InputLimits`). review: save NG / borderline frames (:class:`ReviewConfig`).
    on_result: called with every streamed record, in submission order, on the delivery
    thread (its exceptions are logged and counted; it must not call close() or block on
    submit()). keep_results: queue streamed records for
    :meth:`results` (default: when there is no callback; unconsumed records accumulate).
    keep_images: records with a verdict carry the decoded frame as ``record.image`` (uint8
    ``[3, H, W]``, e.g. to annotate it in ``on_result``; it stays in memory while the record
    does, so drop it there).
    """

    def __init__(self, pipeline: Pipeline, *, batch_size: int = 4, max_wait_ms: float = 10.0,
                 max_in_flight: int | None = None, deadline_ms: float | None = None,
                 deadline_policy: DeadlinePolicy = "report", post_filter: PostFilter | None = None,
                 limits: InputLimits | None = None, review: ReviewConfig | None = None,
                 on_result: Callable[[InspectionResult], Any] | None = None, keep_results: bool | None = None,
                 metrics_window: int = 10_000, keep_images: bool = False) -> None:
        if batch_size < 1 or not max_wait_ms >= 0:
            raise ConfigError(f"batch_size must be >= 1 and max_wait_ms >= 0, got {batch_size}, {max_wait_ms}")
        if deadline_policy not in ("report", "skip"):
            raise ConfigError(f"deadline_policy must be 'report' or 'skip', got {deadline_policy!r}")
        _check_deadline(deadline_ms)
        self.pipeline = pipeline
        self.batch_size = int(batch_size)
        self.max_wait_s = float(max_wait_ms) / 1e3
        self.max_in_flight = int(max_in_flight or 8 * batch_size)
        if self.max_in_flight < batch_size:
            raise ConfigError(f"max_in_flight ({self.max_in_flight}) must be >= batch_size ({batch_size})")
        self.deadline_ms = deadline_ms
        self.deadline_policy = deadline_policy
        self.post_filter = post_filter or PostFilter()
        self.post_filter.check(pipeline.class_names)
        self.limits = limits or InputLimits()
        self.metrics = InspectorMetrics(metrics_window, reasons=[r.value for r in Reason])
        self.metrics.gauge("in_flight", "Frames inside the inspector (submitted, not yet delivered).",
                           lambda: self._in_flight)
        self.metrics.gauge("queued_frames", "Frames waiting for the gate thread.", lambda: self._inbox.qsize())
        self.metrics.gauge("gate_threshold", "P(defective) at or above which the detector runs.",
                           lambda: self.pipeline.gate_threshold)
        self.on_result = on_result
        self.keep_results = on_result is None if keep_results is None else bool(keep_results)
        self.keep_images = bool(keep_images)
        self.review = ReviewWriter(review, self.metrics) if review is not None else None
        self.registry = self.metrics.registry  # this inspector's series only
        self._servers: list[MetricsServer] = []

        self._slots = threading.Semaphore(self.max_in_flight)
        self._lock = threading.Lock()
        self._seq = 0
        self._stream_seq = 0
        self._in_flight = 0
        self._closed = False
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._handoff: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._stream: queue.Queue[Any] = queue.Queue()
        self._threads = [threading.Thread(target=fn, name=f"defectnet-{name}", daemon=True)
                         for name, fn in (("gate", self._gate_loop), ("detector", self._detector_loop),
                                          ("delivery", self._delivery_loop))]
        for t in self._threads:
            t.start()

    @classmethod
    def from_engine(cls, engine: Engine | str | os.PathLike[str], backend: BackendName | str = BackendName.AUTO, *,
                    backend_options: BackendOptions | None = None, gate_threshold: float | None = None,
                    **options: Any) -> Inspector:
        """An inspector over an engine folder (validated by :func:`load_engine`): the
        :meth:`Pipeline.from_engine` of ``backend`` with ``backend_options`` (threads, device,
        providers); options: the keyword arguments of :class:`Inspector`."""
        pipeline = Pipeline.from_engine(engine, backend, backend_options=backend_options,
                                        gate_threshold=gate_threshold)
        return cls(pipeline, **options)

    # -- intake ---------------------------------------------------------------------------------
    def submit(self, image: Any, key: Any = None, *, timeout: float | None = None,
               deadline_ms: float | None = _UNSET) -> Future[InspectionResult]:
        """Accept one frame (any input of :mod:`defectnet.runtime.inspection.validation`); its record goes
        to the returned future, the ``on_result`` callback and :meth:`results`.

        key: the caller's id, copied into the record (default: the path for a file, else the
        sequence number). Blocks while ``max_in_flight`` frames are inside; timeout: seconds
        to wait, then :class:`InspectorBusyError`. Raises :class:`InspectorClosedError` after
        :meth:`close`. Bad input is *not* an exception: it gets an ERROR record.
        """
        return self._submit(image, key, timeout, deadline_ms, stream=True)

    def inspect(self, image: Any, key: Any = None, *, deadline_ms: float | None = _UNSET) -> InspectionResult:
        """The record of one frame (batched with concurrent callers; not streamed to
        :meth:`results` or the callback)."""
        return self._submit(image, key, None, deadline_ms, stream=False).result()

    def _submit(self, image: Any, key: Any, timeout: float | None, deadline_ms: Any, stream: bool
                ) -> Future[InspectionResult]:
        t0 = time.perf_counter()
        deadline = self.deadline_ms if deadline_ms is _UNSET else deadline_ms
        _check_deadline(deadline)
        if self._closed:
            raise InspectorClosedError("this Inspector is closed; create a new one to inspect more frames")
        if not self._slots.acquire(timeout=timeout):
            raise InspectorBusyError(f"no room for the frame after {timeout} s ({self.max_in_flight} frames in "
                                     "flight); consume results faster, raise max_in_flight or submit later")
        source = describe(image)
        future: Future[InspectionResult] = Future()
        decoded: Tensor | None = None
        error: tuple[Reason, str] | None = None
        try:
            decoded = to_image(image, self.limits, source)
        except InputError as e:
            error = (e.reason, str(e))
        except Exception as e:  # noqa: BLE001 - a bug must still give a record
            log.exception("validating %s", source)
            error = (Reason.INTERNAL_ERROR, f"{source}: {type(e).__name__}: {e}")
        with self._lock:
            if self._closed:
                self._slots.release()
                raise InspectorClosedError("this Inspector was closed while the frame was submitted; it was not "
                                           "accepted")
            seq = self._stream_seq if stream else -1
            self._stream_seq += stream
            self._seq += 1
            if key is None:
                key = source if isinstance(image, str | os.PathLike) else self._seq - 1
            frame = _Frame(seq, key, source, t0, deadline, stream, future, decoded)
            self._in_flight += 1
            self.metrics.count_submitted()
            if error is None:
                self._inbox.put(frame)
            else:
                self._fail(frame, *error)
        return future

    # -- output ---------------------------------------------------------------------------------
    def results(self, block: bool = True) -> Iterator[InspectionResult]:
        """Streamed records in submission order. With ``block`` the iterator ends after
        :meth:`close` once every record is out; without, it yields what is ready and stops."""
        if not self.keep_results:
            raise ConfigError("this Inspector does not keep results (it has an on_result callback); pass "
                              "keep_results=True to get both")
        while True:
            try:
                item = self._stream.get(block=block)
            except queue.Empty:
                return
            if item is _STOP:
                self._stream.put(_STOP)  # for any other iterator
                return
            yield item

    def metrics_text(self) -> str:
        """Counters, gauges and latency histograms in the Prometheus text format:
        ``prometheus_client.generate_latest`` of :attr:`registry`
        (:mod:`defectnet.runtime.inspection.metrics` lists the series)."""
        return self.metrics.text()

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve this inspector's metrics at ``http://host:port/metrics`` (a daemon thread).
        port 0 picks a free one (``handle.port``). Loopback by default: pass ``0.0.0.0`` only
        on a trusted network. ``handle.shutdown()`` stops it; :meth:`close` stops every
        server this inspector started (so it raises :class:`InspectorClosedError` after close)."""
        if self._closed:
            raise InspectorClosedError("this Inspector is closed; serve the metrics of a running one")
        server = serve_registry(self.registry, port, host)
        with self._lock:
            closed = self._closed
            if not closed:
                self._servers.append(server)
        if closed:  # close() ran meanwhile and will not see this server
            server.shutdown()
            raise InspectorClosedError("this Inspector was closed while its metrics server started")
        return server

    def stats(self) -> dict[str, Any]:
        """:meth:`InspectorMetrics.snapshot` (counts, p50/p90/p99 latency in ms, pass rate)."""
        return self.metrics.snapshot()

    def close(self) -> None:
        """Stop accepting frames, process and deliver every accepted one, stop the threads.
        Idempotent; ends :meth:`results` iterators once they have drained."""
        with self._lock:
            if self._closed:
                already = True
            else:
                already = False
                self._closed = True
                self._inbox.put(_STOP)
        if not already or any(t.is_alive() for t in self._threads):
            for t in self._threads:
                t.join()
            if self.review is not None:
                self.review.close()
        with self._lock:
            servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the gate thread ------------------------------------------------------------------------
    def _next_batch(self) -> tuple[list[_Frame], bool]:
        """Up to batch_size frames: the first waiting one plus those arriving within
        max_wait of it. Returns (frames, stop seen)."""
        first = self._inbox.get()
        if first is _STOP:
            return [], True
        frames, until = [first], time.perf_counter() + self.max_wait_s
        while len(frames) < self.batch_size:
            try:
                item = self._inbox.get(timeout=max(0.0, until - time.perf_counter()))
            except queue.Empty:
                break
            if item is _STOP:
                return frames, True
            frames.append(item)
        return frames, False

    def _gate_loop(self) -> None:
        stop = False
        while not stop:
            frames, stop = self._next_batch()
            try:
                if self.deadline_policy == "skip":
                    now = time.perf_counter()
                    for f in [f for f in frames if f.expired(now)]:
                        self._fail(f, Reason.TIMEOUT, f"{f.source}: waited {(now - f.t0) * 1e3:.1f} ms, past its "
                                                      f"{f.deadline_ms:g} ms deadline, so it was not inspected "
                                                      "(deadline_policy='skip')")
                    frames = [f for f in frames if f.result is None]
                if frames:
                    self._gate(frames)
            except Exception as e:  # noqa: BLE001 - keep the line running; every frame still gets a record
                log.exception("gate stage")
                for f in frames:
                    if f.result is None:
                        self._fail(f, Reason.INTERNAL_ERROR, f"{f.source}: {type(e).__name__}: {e}")
        self._handoff.put(_STOP)

    def _gate(self, frames: list[_Frame]) -> None:
        try:
            gated = self.pipeline.gate_stage([f.image for f in frames])  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - backends raise many types
            if len(frames) == 1:
                self._fail(frames[0], Reason.BACKEND_ERROR, _backend_message(frames[0], e))
                return
            log.warning("gate failed on a batch of %d (%s); retrying one frame at a time", len(frames), e)
            for f in frames:
                self._gate([f])
            return
        self.metrics.record_batch(len(frames), int(gated.ran_detector.sum()))
        self._handoff.put((frames, gated))

    # -- the detector thread --------------------------------------------------------------------
    def _detector_loop(self) -> None:
        while (item := self._handoff.get()) is not _STOP:
            frames, gated = item
            try:
                self._detect(frames, gated)
            except Exception as e:  # noqa: BLE001
                log.exception("detector stage")
                for f in frames:
                    if f.result is None:
                        self._fail(f, Reason.INTERNAL_ERROR, f"{f.source}: {type(e).__name__}: {e}")
        self._outbox.put(_STOP)

    def _detect(self, frames: list[_Frame], gated: GatedBatch) -> None:
        try:
            results = self.pipeline.detect_stage(gated)
        except Exception as e:  # noqa: BLE001
            if len(frames) > 1:
                log.warning("detector failed on a batch of %d (%s); retrying one frame at a time", len(frames), e)
            for f in frames:
                try:
                    (single,) = self.pipeline.run([f.image])  # type: ignore[list-item]
                except Exception as e1:  # noqa: BLE001
                    self._fail(f, Reason.BACKEND_ERROR, _backend_message(f, e1))
                else:
                    self._succeed(f, single)
            return
        self.metrics.record_stages(results[0].timings_ms if results else {})
        for f, r in zip(frames, results):
            self._succeed(f, r)

    def _succeed(self, frame: _Frame, r: ImageResult) -> None:
        boxes, scores, labels, names, suppressed = r.boxes, r.scores, r.labels, r.class_names, 0
        if self.post_filter.active and len(scores):
            keep = self.post_filter.keep(boxes, scores, names)
            suppressed = int((~keep).sum())
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            names = [n for n, k in zip(names, keep.tolist()) if k]
        result = InspectionResult(
            key=frame.key, source=frame.source, sequence=frame.seq, verdict=Verdict.NG if len(scores) else Verdict.OK,
            p_defective=r.p_defective, ran_detector=r.ran_detector, boxes=boxes, scores=scores, labels=labels,
            class_names=names, original_size=r.original_size, batch_size=r.batch_size,
            timings_ms=dict(r.timings_ms), suppressed=suppressed)
        if self.review is not None and frame.image is not None:
            kind = self.review.config.save_reason(result.verdict, result.p_defective, self.pipeline.gate_threshold)
            if kind is not None:
                result.review_image = self.review.offer(frame.image, self._stamp(frame, result).to_json(), kind,
                                                        frame.key)
        self._finish(frame, result)

    # -- records --------------------------------------------------------------------------------
    def _fail(self, frame: _Frame, reason: Reason, message: str) -> None:
        self._finish(frame, InspectionResult(key=frame.key, source=frame.source, sequence=frame.seq,
                                             verdict=Verdict.ERROR, reason=reason.value, message=message))

    def _stamp(self, frame: _Frame, result: InspectionResult) -> InspectionResult:
        result.latency_ms = (time.perf_counter() - frame.t0) * 1e3
        result.deadline_ms = frame.deadline_ms
        result.deadline_missed = frame.deadline_ms is not None and (
            result.latency_ms > frame.deadline_ms or result.reason == Reason.TIMEOUT)
        return result

    def _finish(self, frame: _Frame, result: InspectionResult) -> None:
        if frame.result is not None:  # never two records for one frame
            log.error("frame %s already has a record; dropping a second one", frame.key)
            return
        frame.result = self._stamp(frame, result)
        if self.keep_images and result.ok:
            result.image = frame.image
        frame.image = None  # release the pixels now (unless the record keeps them)
        self.metrics.record_result(result.verdict, result.latency_ms / 1e3, reason=result.reason,
                                   deadline_missed=result.deadline_missed, suppressed=result.suppressed)
        self._outbox.put(frame)

    # -- the delivery thread --------------------------------------------------------------------
    def _delivery_loop(self) -> None:
        pending: dict[int, _Frame] = {}
        next_seq = 0
        while (frame := self._outbox.get()) is not _STOP:
            if not frame.stream:
                self._deliver(frame)
                continue
            pending[frame.seq] = frame
            while next_seq in pending:
                self._deliver(pending.pop(next_seq))
                next_seq += 1
        for seq in sorted(pending):  # only reachable after a bug; still deliver everything
            self._deliver(pending.pop(seq))
        self._stream.put(_STOP)

    def _deliver(self, frame: _Frame) -> None:
        result = frame.result
        assert result is not None
        try:
            if frame.stream:
                if self.keep_results:
                    self._stream.put(result)
                if self.on_result is not None:
                    try:
                        self.on_result(result)
                    except Exception:  # noqa: BLE001 - the user's callback must not stop the line
                        log.exception("on_result callback failed for %s", frame.key)
                        self.metrics.count_callback_error()
            frame.future.set_result(result)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._slots.release()


def _check_deadline(deadline_ms: float | None) -> None:
    if deadline_ms is not None and not (isinstance(deadline_ms, int | float) and deadline_ms > 0
                                        and math.isfinite(deadline_ms)):
        raise ConfigError(f"deadline_ms must be a positive number of milliseconds or None, got {deadline_ms!r}")


def _backend_message(frame: _Frame, e: Exception) -> str:
    return (f"{frame.source}: the backend failed on this frame ({type(e).__name__}: {str(e)[:500]}); other "
            "frames go on -- if it repeats for valid images, check the engine with defectnet-infer")


__all__ = ["InspectionResult", "Inspector", "InspectorBusyError", "InspectorClosedError", "PostFilter"]
