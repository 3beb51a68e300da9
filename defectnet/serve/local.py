"""A ``defectnet.serve`` application on a one-machine Ray cluster, everything on loopback.

How each Ray component is kept on 127.0.0.1 (Ray 2.60):

* node IP, GCS, raylet, object manager, agents: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the
  environment before Ray starts (and before ``ray`` is imported in this process: Ray reads it
  at import). It is Ray's local-only mode (its default on macOS and Windows):
  ``ray._private.services.get_node_ip_address`` then answers the loopback address, and the
  components bind to it. ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough on
  Linux. A multi-machine cluster (KubeRay) leaves the variable unset.
* the Serve HTTP proxy: ``http_options.host`` (default here 127.0.0.1), one proxy on the head
  node (``proxy_location="HeadOnly"``).
* the replicas' internal gRPC server: Serve 2.60 binds it to ``[::]:0`` (every interface)
  whatever the node IP, with no option to change it (the handles here do not use it: Serve
  calls replicas through Ray actor calls unless ``RAY_SERVE_USE_GRPC_BY_DEFAULT=1``). With
  ``ServeOptions.loopback`` each replica's constructor calls
  :func:`pin_replica_grpc_to_loopback`, which makes it bind 127.0.0.1 instead (Serve starts
  that server after the constructor). Ray's ``worker_process_setup_hook`` would be the
  cleaner place, but Ray applies it only to the job's own workers, not to Serve replicas.
* no dashboard (``include_dashboard=False``), no usage statistics (``RAY_USAGE_STATS_ENABLED=0``).

The test suite checks the node address in ``ray.nodes()``, the proxy's host and that every
listening socket of the cluster's processes is on loopback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from defectnet.errors import ConfigError
from defectnet.serve.options import ServeOptions

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
#: The environment of a loopback-only Ray (set before Ray starts; inherited by its processes).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
APP_NAME = "defectnet"


def pin_replica_grpc_to_loopback() -> None:
    """In a Serve replica, before its inter-deployment gRPC server starts: make it bind
    ``127.0.0.1:0`` instead of ``[::]:0`` (every interface). Written for ray 2.60.0 (the
    version the ``serve`` extra pins; the test suite checks every listening socket); on a
    Ray without the patched function it only logs a warning. Idempotent."""
    try:
        from ray.serve._private import replica
    except ImportError:  # pragma: no cover - a Ray without Serve
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_defectnet_loopback", False):
        if original is None:
            log.warning("ray %s: cannot pin the Serve replica's gRPC server to loopback (no add_port_to_grpc_server)",
                        getattr(sys.modules.get("ray"), "__version__", "?"))
        return

    def loopback(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = f"{LOOPBACK}:{address[len('[::]:'):]}"
        return original(server, address)

    loopback._defectnet_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback  # type: ignore[attr-defined]


def set_loopback_environment() -> None:
    """Put :data:`LOOPBACK_ENV` into this process's environment; raises :class:`ConfigError`
    when Ray was already imported with its cluster mode on (too late to change it)."""
    os.environ.update(LOOPBACK_ENV)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        raise ConfigError("ray was imported before the loopback environment was set, so it would bind to this "
                          "machine's network address; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray "
                          "(or start the service from a fresh process)")


@dataclass
class LocalService:
    """A running application on a local Ray cluster started by :func:`start_local`.

    url: the HTTP root (``http://127.0.0.1:8000``); handle: the Ingress ``DeploymentHandle``;
    options: what it runs. :meth:`shutdown` stops Serve and Ray (idempotent)."""

    url: str
    host: str
    port: int
    app_name: str
    options: ServeOptions
    handle: Any
    started_s: float
    _stopped: bool = False

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _signal_handlers() -> dict[signal.Signals, Any]:
    """The Python handlers of SIGINT and SIGTERM (main thread only: elsewhere none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    out = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None:
            out[sig] = handler
    return out


def start_local(options: ServeOptions, *, host: str = LOOPBACK, port: int = 8000, num_cpus: int | None = None,
                app_name: str = APP_NAME) -> LocalService:
    """Start a loopback Ray cluster in this process, Serve's HTTP proxy on ``host:port`` and
    the application of ``options``; returns once every replica is up. The caller's SIGINT and
    SIGTERM handlers stay in place (``ray.init`` would replace SIGTERM's).

    num_cpus: Ray CPUs of the node (default: this machine's cores); the replicas' reserved
    CPUs must fit (:meth:`ServeOptions.cpus_needed`), else :class:`ConfigError`.
    """
    from defectnet.runtime.engine import load_engine

    load_engine(options.engine)  # a bad engine folder fails here, with its message, not in a replica
    cpus = int(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
    if options.cpus_needed() > cpus:
        parts = ", ".join(f"{name}: {s.most_replicas} x {s.cpus:g}" for name, s in options.deployments().items())
        raise ConfigError(
            f"the replicas reserve {options.cpus_needed():g} CPUs ({parts}) but this node has {cpus}; lower the replica counts, reserve fewer CPUs per replica (--replica-cpus), "
            "or give the node more (--num-cpus)")
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be in 0..65535, got {port}")
    set_loopback_environment()
    t0 = time.perf_counter()
    import ray
    from ray import serve

    from defectnet.serve.app import build_app

    if ray.is_initialized():
        raise ConfigError("Ray is already running in this process; start the service from a fresh process")
    handlers = _signal_handlers()
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address=LOOPBACK, log_to_driver=False,
             configure_logging=False)
    for sig, handler in handlers.items():  # ray.init replaces the caller's SIGTERM handler: put it back
        signal.signal(sig, handler)
    try:
        serve.start(proxy_location="HeadOnly", http_options={
            "host": host, "port": port, "request_timeout_s": options.request_timeout_s + 10.0})
        handle = serve.run(build_app(options), name=app_name, route_prefix="/")
    except BaseException:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        raise
    shown = f"[{host}]" if ":" in host else host
    return LocalService(f"http://{shown}:{port}", host, port, app_name, options, handle,
                        time.perf_counter() - t0)


__all__ = ["APP_NAME", "LOOPBACK", "LOOPBACK_ENV", "LocalService", "pin_replica_grpc_to_loopback",
           "set_loopback_environment", "start_local"]
