"""Per-graph engines: each graph on the backend its manifest entry names.

``defectnet-build-engine --backend auto`` may choose, per graph, a different backend (for
example an ONNX Runtime INT8 gate and an OpenVINO INT8 detector). The manifest then says
``backend: auto`` and each ``graphs.NAME`` entry names its ``backend`` (and ``precision``,
``inference_precision``). :func:`backend_for_engine` assembles what such a folder needs:

* every graph on one backend -> that backend itself (no wrapper);
* otherwise -> a :class:`PerGraphBackend` over one backend per backend name, each loading
  only its own graphs.

Between the graphs, the gate backend's features become the detector backend's inputs
through :meth:`~defectnet.runtime.backends.base.Backend.features_as_arrays` and
:meth:`~defectnet.runtime.backends.base.Backend.features_from_arrays`: on the CPU both
ONNX Runtime (``OrtValue.numpy()`` / ``ortvalue_from_numpy``) and OpenVINO
(``Tensor.data`` / ``Tensor(array, shared_memory=True)``) share the memory, so the hand-over
copies nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from torch import Tensor

from defectnet.errors import ConfigError
from defectnet.runtime.backends.base import Backend, RawDetections
from defectnet.runtime.engine import CLASSIFIER, DETECTOR, GATE, Engine
from defectnet.runtime.types import BackendName


class PerGraphBackend(Backend):
    """One backend per graph (see the module docstring). backends: graph name -> backend
    (the same instance may serve several graphs); the gate's backend also selects the
    sub-batch, the detector's backend runs on features handed over without a copy."""

    name = BackendName.AUTO

    def __init__(self, backends: Mapping[str, Backend]) -> None:
        missing = [g for g in (GATE, DETECTOR) if g not in backends]
        if missing:
            raise ConfigError(f"a per-graph backend needs a backend for the {' and '.join(missing)} graph")
        self.backends = dict(backends)
        self.gate = self.backends[GATE]
        self.detector = self.backends[DETECTOR]
        self.device = str(getattr(self.gate, "device", "cpu"))

    def describe(self) -> dict[str, str]:
        """graph name -> backend name."""
        return {g: str(b.name) for g, b in self.backends.items()}

    @property
    def label(self) -> str:
        return ", ".join(f"{g} {b}" for g, b in self.describe().items())

    def load(self) -> None:
        for backend in {id(b): b for b in self.backends.values()}.values():
            backend.load()

    def run_classifier(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        backend = self.backends.get(CLASSIFIER)
        if backend is None:
            return super().run_classifier(images, image_sizes)
        return backend.run_classifier(images, image_sizes)

    def run_gate(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Any]:
        return self.gate.run_gate(images, image_sizes)

    def select(self, features: Any, index: Tensor) -> Any:
        return self.gate.select(features, index)

    def run_detector(self, features: Any, image_sizes: Tensor) -> RawDetections:
        if self.detector is self.gate:
            return self.detector.run_detector(features, image_sizes)
        handed = self.detector.features_from_arrays(self.gate.features_as_arrays(features))
        return self.detector.run_detector(handed, image_sizes)

    def features_to_host(self, features: Any) -> dict[str, np.ndarray]:
        return self.gate.features_to_host(features)

    def features_from_host(self, features: Mapping[str, np.ndarray]) -> Any:
        """Host arrays -> the gate backend's features (what :meth:`run_detector` takes)."""
        return self.gate.features_from_host(features)


def backend_for_engine(engine: Engine, make: Callable[[Engine, BackendName], Backend]) -> Backend:
    """The backend(s) an engine folder was built for (see the module docstring). make:
    builds one backend for an engine (restricted to some graphs) and a backend name."""
    manifest = engine.manifest
    per_graph = {g: manifest.graph_backend(g) for g in engine.graphs}
    names = list(dict.fromkeys(per_graph.values()))
    if len(names) == 1:
        return make(engine, names[0])
    backends: dict[str, Backend] = {}
    for name in names:
        graphs = {g: p for g, p in engine.graphs.items() if per_graph[g] == name}
        backend = make(replace(engine, graphs=graphs), name)
        for g in graphs:
            backends[g] = backend
    return PerGraphBackend(backends)


__all__ = ["PerGraphBackend", "backend_for_engine"]
