"""The Ray Serve application: an HTTP Ingress, and the model as ``Gate`` + ``Detector``
(``split``) or as one ``Fused`` deployment, each batched (``@serve.batch``) and scaled on
its own (:class:`~defectnet.serve.options.Scaling`).

::

    HTTP --proxy--> Ingress: body limit, input rule (to_image), deadline, record, metrics
        split:  --handle--> Gate (batched): preprocess, gate; negatives: the result;
                            positives: ray.put(features) -> an ObjectRef back to the Ingress
                --handle--> Detector (batched, only the positives): features from the
                            object store (straight from the Gate's node), detector, boxes
        fused:  --handle--> Fused (batched): Pipeline.run, the features never leave the backend

Only gate-positive images enter the Detector's queue, so with pass rate ``q`` and per-image
times ``t_gate`` / ``t_detector`` the Detector needs about
``gate replicas x q x t_detector / t_gate`` replicas.

A batch is run per image size (images of one size share one padding), so a result does not
depend on which requests happened to share its batch: it equals ``Pipeline.run([image])``.
A replica runs its batches one at a time on a worker thread (its event loop stays free for
health checks). A batch that fails is retried image by image (one bad image does not take its
batch-mates down). The Ingress retries a call whose replica died (until the deadline); the
Gate's features of a retried Detector call are still in the object store, and if they are
lost the image goes through the Gate again.

``app_builder`` is the import path for Serve config files (``serve run``, ``serve deploy``,
KubeRay): ``defectnet.serve.app:app_builder`` with :meth:`ServeOptions.to_args` as ``args``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import ray
import torch
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response
from torch import Tensor

from defectnet.runtime.inspection.validation import Reason
from defectnet.runtime.pipeline import ImageResult, Pipeline
from defectnet.serve.config_file import deployment_entries
from defectnet.serve.local import pin_replica_grpc_to_loopback
from defectnet.serve.metrics import ServeMetrics
from defectnet.serve.options import DETECTOR, FUSED, GATE, INGRESS, ServeOptions
from defectnet.serve.service import InspectService, Outcome

log = logging.getLogger(__name__)
#: Errors after which a call is sent again: the replica (or the owner of the features) died.
RETRIABLE = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, DeploymentUnavailableError)
T = TypeVar("T")


# ----------------------------------------------------------------------------------- messages
@dataclass
class GateJob:
    """Ingress -> Gate/Fused: one decoded image (uint8 ``[3, H, W]``) and the ``time.time()``
    after which nobody waits for it (the replica skips it then)."""

    image: np.ndarray
    expires_at: float


@dataclass
class DetectorJob:
    """What the Gate puts in the object store for one positive image: its features
    ``{level: [1, C, h, w]}``, model-input size ``(h, w)``, the preprocessing's scale factor and
    original size, P(defective), and the gate batch's size and stage times."""

    features: dict[str, np.ndarray]
    image_size: tuple[int, int]
    scale_factor: tuple[float, float]
    original_size: tuple[int, int]
    p_defective: float
    batch_size: int
    timings_ms: dict[str, float]


@dataclass
class DetectorCall:
    """Ingress -> Detector: the ObjectRef of a :class:`DetectorJob` (nested, so the Detector
    fetches it itself, from the Gate's node) and the expiry time."""

    job: Any
    expires_at: float


@dataclass
class StageReply:
    """A model deployment's answer for one image: the complete ``result``; or, from the Gate
    for a positive image in split mode, ``detector_job`` (an ObjectRef); or an error
    (``reason``, ``message``). batch_size / batch_ms: the batch the image ran in and its
    compute time (the Ingress books them as the deployment's busy time)."""

    result: ImageResult | None = None
    detector_job: Any = None
    reason: str | None = None
    message: str = ""
    batch_size: int = 0
    batch_ms: float = 0.0


# ----------------------------------------------------------------------------------- replicas
def _groups(keys: Sequence[Hashable]) -> list[list[int]]:
    """Positions grouped by key, in first-seen order."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    return list(groups.values())


def _empty_detections() -> tuple[Tensor, Tensor, Tensor]:
    return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)


class _ModelReplica:
    """Shared by Gate, Detector and Fused: the pipeline, the worker thread, batching."""

    def __init__(self, args: dict[str, Any]) -> None:
        options = ServeOptions.from_args(args)
        if options.loopback:
            pin_replica_grpc_to_loopback()  # before Serve starts the replica's gRPC server
        if options.threads:
            torch.set_num_threads(options.threads)  # this replica process is ours: its torch pool is set once here
        self.config = options
        self.pipeline = Pipeline.from_engine(options.engine, options.backend, backend_options=options.backend_options(),
                                             gate_threshold=options.gate_threshold)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=type(self).__name__)
        batch = getattr(self, "infer")  # noqa: B009 - the subclass's @serve.batch method
        batch.set_max_batch_size(options.max_batch_size)
        batch.set_batch_wait_timeout_s(options.batch_wait_ms / 1e3)

    async def ready(self) -> bool:
        return True

    async def _on_worker(self, fn: Callable[..., list[StageReply]], *args: Any) -> list[StageReply]:
        t0 = time.perf_counter()
        replies = await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        batch_ms = (time.perf_counter() - t0) * 1e3
        for r in replies:
            r.batch_size, r.batch_ms = len(replies), batch_ms
        return replies

    def _each(self, items: list[T], run: Callable[[list[T]], list[StageReply]]) -> list[StageReply]:
        """``run`` on the whole group; if it raises, on each item alone (errors become replies)."""
        try:
            return run(items)
        except Exception as e:  # noqa: BLE001 - backends raise many types; every image gets a reply
            if len(items) == 1:
                log.exception("%s failed on an image", type(self).__name__)
                return [StageReply(reason=Reason.BACKEND_ERROR.value, message=(
                    f"the backend failed on this image ({type(e).__name__}: {str(e)[:500]}); other images go on -- if "
                    "it repeats for valid images, check the engine with defectnet-infer"))]
            log.warning("%s failed on a batch of %d (%s); retrying one image at a time", type(self).__name__,
                        len(items), e)
            return [self._each([item], run)[0] for item in items]

    @staticmethod
    def _expired() -> StageReply:
        return StageReply(reason=Reason.TIMEOUT.value, message="the request's deadline passed while it waited for "
                          "a replica, so it was not inspected")

    def _by_size(self, jobs: list[GateJob], run: Callable[[list[Tensor]], list[StageReply]]) -> list[StageReply]:
        """Skip expired jobs; run the rest grouped by image size."""
        now = time.time()
        replies: list[StageReply | None] = [self._expired() if j.expires_at <= now else None
                                            for j in jobs]
        live = [i for i, r in enumerate(replies) if r is None]
        for group in _groups([jobs[i].image.shape for i in live]):
            index = [live[g] for g in group]
            images = [torch.from_numpy(np.array(jobs[i].image, copy=True)) for i in index]  # writable copies
            for i, reply in zip(index, self._each(images, run)):
                replies[i] = reply
        return [r for r in replies if r is not None]


@serve.deployment(name=GATE, max_constructor_retry_count=3, health_check_period_s=2.0)
class Gate(_ModelReplica):
    """Preprocess + gate; a positive image's features go to the object store."""

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def infer(self, jobs: list[GateJob]) -> list[StageReply]:
        return await self._on_worker(self._by_size, jobs, self._gate)

    def _gate(self, images: list[Tensor]) -> list[StageReply]:
        gated = self.pipeline.gate_to_host(images)
        slot = {int(i): k for k, i in enumerate(gated.index.tolist())}
        replies = []
        for i in range(len(images)):
            p = float(gated.p_defective[i])
            if i in slot:
                k = slot[i]
                h, w = (int(v) for v in gated.image_sizes[k].tolist())
                job = DetectorJob(gated.positive_features(k), (h, w), gated.scale_factors[i], gated.original_sizes[i],
                                  p, len(images), dict(gated.timings_ms))
                replies.append(StageReply(detector_job=ray.put(job)))
            else:
                result = self.pipeline.image_result(p, False, *_empty_detections(), gated.scale_factors[i],
                                                    gated.original_sizes[i], len(images), gated.timings_ms)
                replies.append(StageReply(result=result))
        return replies


@serve.deployment(name=DETECTOR, max_constructor_retry_count=3, health_check_period_s=2.0)
class Detector(_ModelReplica):
    """The detector on the features of gate-positive images."""

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def infer(self, calls: list[DetectorCall]) -> list[StageReply]:
        fetched = await asyncio.gather(*(c.job for c in calls), return_exceptions=True)
        return await self._on_worker(self._detect_all, calls, fetched)

    def _detect_all(self, calls: list[DetectorCall], fetched: list[Any]) -> list[StageReply]:
        now = time.time()
        replies: list[StageReply | None] = [None] * len(calls)
        live: list[int] = []
        for i, (call, job) in enumerate(zip(calls, fetched)):
            if isinstance(job, BaseException):
                replies[i] = StageReply(reason=Reason.UNAVAILABLE.value, message=(
                    f"the gate's features of this image were lost ({type(job).__name__}); the Ingress sends it through "
                    "the gate again"))
            elif call.expires_at <= now:
                replies[i] = self._expired()
            else:
                live.append(i)
        shapes = [tuple(v.shape[1:] for v in fetched[i].features.values()) for i in live]  # any backend's levels
        for group in _groups(shapes):
            index = [live[g] for g in group]
            for i, reply in zip(index, self._each([fetched[i] for i in index], self._detect)):
                replies[i] = reply
        return [r for r in replies if r is not None]

    def _detect(self, jobs: list[DetectorJob]) -> list[StageReply]:
        t0 = time.perf_counter()
        features = {name: np.concatenate([j.features[name] for j in jobs]) for name in jobs[0].features}
        sizes = torch.tensor([j.image_size for j in jobs], dtype=torch.int64)
        raw = self.pipeline.detect_on_host(features, sizes)
        detector_ms = (time.perf_counter() - t0) * 1e3
        replies = []
        for k, job in enumerate(jobs):
            t1 = time.perf_counter()
            boxes, scores, labels = raw.image(k)
            result = self.pipeline.image_result(job.p_defective, True, boxes, scores, labels, job.scale_factor,
                                                job.original_size, job.batch_size)
            result.timings_ms = {**job.timings_ms, "detector": detector_ms,
                                 "postprocess": (time.perf_counter() - t1) * 1e3}
            replies.append(StageReply(result=result))
        return replies


@serve.deployment(name=FUSED, max_constructor_retry_count=3, health_check_period_s=2.0)
class Fused(_ModelReplica):
    """Gate and detector in one replica (``Pipeline.run``): no feature hop."""

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def infer(self, jobs: list[GateJob]) -> list[StageReply]:
        return await self._on_worker(self._by_size, jobs, self._run)

    def _run(self, images: list[Tensor]) -> list[StageReply]:
        return [StageReply(result=r) for r in self.pipeline.run(images)]


# ----------------------------------------------------------------------------------- ingress
class _Retry(Exception):
    """The Detector lost the Gate's features: go through the Gate again."""


@serve.deployment(name=INGRESS)
class Ingress:
    """HTTP in (:class:`~defectnet.serve.service.InspectService`), the model deployments behind."""

    def __init__(self, args: dict[str, Any], *models: DeploymentHandle) -> None:
        self.config = ServeOptions.from_args(args)
        if self.config.loopback:
            pin_replica_grpc_to_loopback()
        self.names = list(self.config.model_deployments)
        self.handles = dict(zip(self.names, models))
        self.metrics = ServeMetrics(self.names, [r.value for r in Reason])
        self.service = InspectService(self.config, self._infer, self._health, self.metrics)

    async def __call__(self, request: Request) -> Response:
        return await self.service(request)

    async def _call(self, name: str, payload: Any) -> StageReply:
        t0 = time.perf_counter()
        response = self.handles[name].options(method_name="infer").remote(payload)
        try:
            reply: StageReply = await response
        except asyncio.CancelledError:
            response.cancel()  # the request's time is up: do not leave it in the replica's queue
            raise
        self.metrics.record_call(name, time.perf_counter() - t0, reply.batch_size, reply.batch_ms)
        return reply

    async def _infer(self, image: Tensor, expires_at: float) -> Outcome:
        job = GateJob(image.numpy(), expires_at)
        delay, stage = 0.05, self.names[0]
        gated: StageReply | None = None  # the Gate's reply of a positive image (its features' ObjectRef)
        while True:
            try:
                if self.config.mode == "fused":
                    reply = await self._call(FUSED, job)
                    if reply.result is not None:
                        self.metrics.record_gate(reply.result.ran_detector)
                    return _outcome(reply)
                if gated is None:
                    stage = GATE
                    reply = await self._call(GATE, job)
                    if reply.reason is None:
                        self.metrics.record_gate(reply.detector_job is not None)
                    if reply.detector_job is None:
                        return _outcome(reply)
                    gated = reply
                stage = DETECTOR
                reply = await self._call(DETECTOR, DetectorCall(gated.detector_job, expires_at))
                if reply.reason == Reason.UNAVAILABLE:  # the features are gone: through the Gate again
                    gated = None
                    raise _Retry(reply.message)
                return _outcome(reply)
            except BackPressureError:
                return Outcome(reason=Reason.OVERLOADED, message=(
                    f"the {stage} deployment's queue is full (max_queued={self.config.max_queued}); send it again "
                    "after Retry-After, or add replicas"))
            except (*RETRIABLE, _Retry) as e:
                if time.time() + delay >= expires_at:
                    return Outcome(reason=Reason.UNAVAILABLE, message=(
                        f"the {stage} deployment failed on this request ({type(e).__name__}) and there was no time "
                        "left to retry it; send it again later"))
                log.warning("%s call failed (%s); retrying in %.2f s", stage, type(e).__name__, delay)
                self.metrics.record_retry(stage)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _health(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every deployment of this application has a running replica (Serve's
        controller says so)."""
        app_name = serve.get_replica_context().app_name
        status = await asyncio.get_running_loop().run_in_executor(None, serve.status)
        app = status.applications.get(app_name)
        if app is None:
            return False, {"application": app_name, "status": "missing"}
        running = {name: sum(int(n) for state, n in d.replica_states.items()
                             if str(getattr(state, "value", state)) == "RUNNING")
                   for name, d in app.deployments.items()}
        expected = [INGRESS, *self.names]
        ready = all(running.get(name, 0) > 0 for name in expected)
        return ready, {"application": app_name, "status": str(app.status.value), "running_replicas": running}


def _outcome(reply: StageReply) -> Outcome:
    if reply.result is not None:
        return Outcome(result=reply.result)
    return Outcome(reason=Reason(reply.reason or Reason.INTERNAL_ERROR), message=reply.message)


# ----------------------------------------------------------------------------------- building
def deployment_options(options: ServeOptions) -> dict[str, dict[str, Any]]:
    """Serve's options of every deployment (name -> ``Deployment.options`` keyword arguments):
    replicas or autoscaling, CPUs, ``max_ongoing_requests`` / ``max_queued_requests`` (503 +
    Retry-After beyond them) -- the ``deployments:`` entries of the config file."""
    return {entry.pop("name"): entry for entry in deployment_entries(options)}


def build_app(options: ServeOptions) -> serve.Application:
    """The application of ``options`` (for ``serve.run``)."""
    args = options.to_args()
    opts = deployment_options(options)
    kinds: dict[str, Any] = {GATE: Gate, DETECTOR: Detector, FUSED: Fused}
    models = [kinds[name].options(**opts[name]).bind(args) for name in options.model_deployments]
    ingress: Any = Ingress
    return ingress.options(**opts[INGRESS]).bind(args, *models)  # type: ignore[no-any-return]


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder (``import_path: defectnet.serve.app:app_builder``):
    ``args`` are :meth:`ServeOptions.to_args` (``engine`` at least)."""
    return build_app(ServeOptions.from_args(dict(args)))


__all__ = ["DetectorCall", "DetectorJob", "GateJob", "StageReply", "app_builder", "build_app", "deployment_options"]
