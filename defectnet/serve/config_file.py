"""``defectnet-serve config``: a Ray Serve config file (``ServeDeploySchema``) of the
application, for ``serve run FILE`` (one machine), ``serve deploy FILE`` (a running cluster)
or a KubeRay ``RayService`` (its ``serveConfigV2``).

The file names the application builder (``import_path: defectnet.serve.app:app_builder``),
its ``args`` (engine, backend, mode, batching, limits: :meth:`ServeOptions.to_args` without
the scaling), and one ``deployments:`` entry per deployment with its scaling and queue
limits -- the part a plant edits to scale: Serve applies these over the code's defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from defectnet.errors import ConfigError
from defectnet.io import atomic_write_text
from defectnet.serve.local import APP_NAME, LOOPBACK
from defectnet.serve.options import INGRESS, ServeOptions

IMPORT_PATH = "defectnet.serve.app:app_builder"
_SCALING_ARGS = ("ingress", "gate", "detector", "fused")


def deployment_entries(options: ServeOptions) -> list[dict[str, Any]]:
    """The ``deployments:`` entries (Serve's field names), Ingress first."""
    entries = []
    for name, scaling in options.deployments().items():
        entry: dict[str, Any] = {"name": name, **scaling.deployment_options(),
                                 "max_queued_requests": options.max_queued}
        if name == INGRESS:
            entry["max_ongoing_requests"] = options.max_ongoing
            entry["backpressure_config"] = {"status_code": 503, "retry_after_s": options.retry_after_s}
        else:
            entry["max_ongoing_requests"] = 2 * options.max_batch_size
        entries.append(entry)
    return entries


def serve_config(options: ServeOptions, *, host: str = LOOPBACK, port: int = 8000, cluster: bool = False,
                 app_name: str = APP_NAME) -> dict[str, Any]:
    """The config as a dict. cluster: one HTTP proxy per node (``EveryNode``) and no loopback
    pinning (a multi-machine cluster, e.g. KubeRay); else one proxy on the head node."""
    if cluster and options.loopback:
        options = ServeOptions.from_args({**options.to_args(), "loopback": False})
    args = {k: v for k, v in options.to_args().items() if k not in _SCALING_ARGS}
    return {
        "proxy_location": "EveryNode" if cluster else "HeadOnly",
        "http_options": {"host": host, "port": int(port), "request_timeout_s": options.request_timeout_s + 10.0},
        "applications": [{"name": app_name, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args,
                          "deployments": deployment_entries(options)}],
    }


def write_serve_config(path: str | os.PathLike[str], options: ServeOptions, **kwargs: Any) -> Path:
    """Write :func:`serve_config` as YAML to ``path`` (atomically); kwargs as there."""
    try:
        import yaml
    except ImportError:
        raise ConfigError("writing a Serve config needs PyYAML (it comes with Ray Serve): "
                          "pip install 'defectnet[serve]'") from None
    config = serve_config(options, **kwargs)
    header = ("# Ray Serve config of a defectnet.serve application (defectnet-serve config).\n"
              "# One machine: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 serve run THIS_FILE\n"
              "# A running cluster: serve deploy THIS_FILE; KubeRay: paste it as the RayService's serveConfigV2.\n"
              "# Scale with the deployments' num_replicas / autoscaling_config.\n")
    return atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False))


__all__ = ["IMPORT_PATH", "deployment_entries", "serve_config", "write_serve_config"]
