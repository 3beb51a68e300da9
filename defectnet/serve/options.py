"""What a ``defectnet.serve`` application is made of: :class:`ServeOptions` (validated on
creation; no Ray import, so the client and the config writer work without Ray).

The options travel to the replicas as a JSON-able dict (:meth:`ServeOptions.to_args`, the
``args`` of a Serve config file) and come back with :meth:`ServeOptions.from_args`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from defectnet.errors import ConfigError
from defectnet.runtime.backends import BACKENDS, BackendOptions
from defectnet.runtime.types import BackendName

#: ``split``: Gate and Detector deployments (features through the object store); ``fused``:
#: one deployment runs both (the features never leave the backend).
MODES = ("split", "fused")
#: Deployment names (the ``deployments:`` entries of a Serve config file).
INGRESS, GATE, DETECTOR, FUSED = "Ingress", "Gate", "Detector", "Fused"


def _positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} {'>= 0' if zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class Scaling:
    """How many replicas one deployment runs.

    replicas: a fixed count (>= 1); or autoscaling, when ``max_replicas`` is set: Serve keeps
    between ``min_replicas`` (>= 0; 0 scales to zero) and ``max_replicas`` replicas, about
    ``target_ongoing_requests`` requests in flight per replica. cpus: Ray CPUs reserved per
    replica (``ray_actor_options.num_cpus``; what the scheduler packs onto nodes).
    """

    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    cpus: float = 1.0

    def __post_init__(self) -> None:
        _positive("replicas", self.replicas, integer=True)
        _positive("min_replicas", self.min_replicas, integer=True, zero=True)
        _positive("target_ongoing_requests", self.target_ongoing_requests)
        _positive("cpus", self.cpus, zero=True)
        if self.max_replicas is not None:
            _positive("max_replicas", self.max_replicas, integer=True)
            if self.max_replicas < self.min_replicas:
                raise ConfigError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    def __str__(self) -> str:
        """``2`` or ``1-4`` (autoscaling), as the command line takes it."""
        return f"{self.min_replicas}-{self.max_replicas}" if self.autoscaling else str(self.replicas)

    @property
    def most_replicas(self) -> int:
        """The most replicas this deployment can run (for a CPU budget check)."""
        return self.max_replicas if self.max_replicas is not None else self.replicas

    def deployment_options(self) -> dict[str, Any]:
        """``num_replicas`` or ``autoscaling_config``, and ``ray_actor_options`` (Serve's names)."""
        out: dict[str, Any] = {"ray_actor_options": {"num_cpus": self.cpus}}
        if self.autoscaling:
            out["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                         "target_ongoing_requests": self.target_ongoing_requests}
        else:
            out["num_replicas"] = self.replicas
        return out


def _ingress_scaling() -> Scaling:
    return Scaling(cpus=0.0)  # awaits the model deployments; decoding is its only CPU work


@dataclass(frozen=True)
class ServeOptions:
    """A ``defectnet.serve`` application.

    engine: the engine folder (a path every node can read: the replicas load it).
    backend / providers / device / threads: the backend each model replica builds
    (:class:`~defectnet.runtime.backends.BackendOptions`; threads: intra-op threads per
    replica, 0 = the library's default). gate_threshold: override the engine's.
    mode: ``split`` or ``fused`` (:data:`MODES`). ingress / gate / detector / fused: the
    :class:`Scaling` of each deployment (gate and detector in split mode, fused in fused mode).
    max_batch_size / batch_wait_ms: ``@serve.batch`` of the model deployments.
    max_ongoing: requests one Ingress replica works on at once. max_queued: requests that may
    wait for a replica, per caller and deployment (``max_queued_requests``); beyond it the
    service answers 503 with ``Retry-After: retry_after_s``. max_body_bytes: larger request
    bodies get 413. request_timeout_s: every request is answered by then (or by its own
    ``deadline_ms``, whichever is first; then 504 with a ``timeout`` record).
    loopback: pin the replicas' internal gRPC servers to 127.0.0.1 (a one-machine service;
    off for a cluster).
    """

    engine: str
    backend: str = BackendName.AUTO.value
    providers: str = "cpu"
    device: str = "cpu"
    threads: int = 1
    gate_threshold: float | None = None
    mode: str = "split"
    ingress: Scaling = field(default_factory=_ingress_scaling)
    gate: Scaling = field(default_factory=Scaling)
    detector: Scaling = field(default_factory=Scaling)
    fused: Scaling = field(default_factory=Scaling)
    max_batch_size: int = 4
    batch_wait_ms: float = 10.0
    max_ongoing: int = 64
    max_queued: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    request_timeout_s: float = 30.0
    retry_after_s: float = 1.0
    loopback: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.engine, str) or not self.engine:
            raise ConfigError(f"engine must be the engine folder's path, got {self.engine!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.backend_options()  # validates threads, device, providers
        if self.gate_threshold is not None and not (isinstance(self.gate_threshold, int | float)
                                                    and self.gate_threshold >= 0):
            raise ConfigError(f"gate_threshold must be a probability >= 0, got {self.gate_threshold!r}")
        for name in ("ingress", "gate", "detector", "fused"):
            if not isinstance(getattr(self, name), Scaling):
                raise ConfigError(f"{name} must be a Scaling, got {getattr(self, name)!r}")
        _positive("max_batch_size", self.max_batch_size, integer=True)
        _positive("batch_wait_ms", self.batch_wait_ms, zero=True)
        _positive("max_ongoing", self.max_ongoing, integer=True)
        _positive("max_queued", self.max_queued, integer=True)
        _positive("max_body_bytes", self.max_body_bytes, integer=True)
        _positive("request_timeout_s", self.request_timeout_s)
        _positive("retry_after_s", self.retry_after_s, zero=True)
        if not isinstance(self.loopback, bool):
            raise ConfigError(f"loopback must be True or False, got {self.loopback!r}")

    def backend_options(self) -> BackendOptions:
        return BackendOptions(threads=self.threads, device=self.device, providers=self.providers)

    @property
    def model_deployments(self) -> dict[str, Scaling]:
        """The model deployments of this mode and their scaling, in pipeline order."""
        if self.mode == "fused":
            return {FUSED: self.fused}
        return {GATE: self.gate, DETECTOR: self.detector}

    def deployments(self) -> dict[str, Scaling]:
        """Every deployment of the application (Ingress first)."""
        return {INGRESS: self.ingress, **self.model_deployments}

    def cpus_needed(self) -> float:
        """Ray CPUs the replicas reserve at their most (autoscaling: max_replicas)."""
        return sum(s.most_replicas * s.cpus for s in self.deployments().values())

    def to_args(self) -> dict[str, Any]:
        """A JSON-able dict (the application builder's ``args``)."""
        return asdict(self)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeOptions:
        """The inverse of :meth:`to_args`; unknown keys are an error (a typo in a config file
        would otherwise be ignored silently)."""
        if not isinstance(args, dict):
            raise ConfigError(f"the application's args must be a mapping, got {type(args).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"unknown defectnet.serve option(s) {unknown}; known: {sorted(known)}")
        values = dict(args)
        scaling_names = {f.name for f in fields(Scaling)}
        for name in ("ingress", "gate", "detector", "fused"):
            if isinstance(values.get(name), dict):
                bad = sorted(set(values[name]) - scaling_names)
                if bad:
                    raise ConfigError(f"unknown {name} scaling option(s) {bad}; known: {sorted(scaling_names)}")
                values[name] = Scaling(**values[name])
        return cls(**values)


__all__ = ["DETECTOR", "FUSED", "GATE", "INGRESS", "MODES", "Scaling", "ServeOptions"]
