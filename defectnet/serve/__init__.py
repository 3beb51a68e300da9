"""Scale-out serving on Ray Serve: the gate and the detector as separately scaled deployments.

* :mod:`.options` -- :class:`ServeOptions` / :class:`Scaling` (no Ray needed);
* :mod:`.app` -- the deployments (Ingress, Gate, Detector, Fused) and the application
  builder (``defectnet.serve.app:app_builder`` in Serve config files);
* :mod:`.service` -- the HTTP API (``POST /v1/inspect``, ``GET /healthz``, ``GET /metrics``);
* :mod:`.local` -- a one-machine, loopback-only Ray cluster running it (``defectnet-serve``);
* :mod:`.config_file` -- ``defectnet-serve config``: a Serve config file;
* :mod:`.client` -- the HTTP client (``defectnet-infer --server URL``; no Ray needed).

Ray is an extra: ``pip install 'defectnet[serve]'``. This package imports it only in
:mod:`.app` and :mod:`.local`.
"""

from defectnet.serve.options import MODES, Scaling, ServeOptions

__all__ = ["MODES", "Scaling", "ServeOptions"]
