"""The OpenVINO backend: the engine's ONNX graphs compiled by OpenVINO for the CPU.

openvino is imported lazily (when the backend loads); the package imports without it.
OpenVINO reads the folder's ``.onnx`` files directly, the U8S8 and the symmetric Q/DQ INT8
graphs included, so an engine folder needs no second file format.

Precision. Each graph is compiled with an explicit ``INFERENCE_PRECISION_HINT``: the graph
entry's ``inference_precision`` (``f32``, ``bf16`` or ``f16``), ``f32`` when it names none.
Setting it always matters: on a CPU with AVX512-BF16 or AMX, OpenVINO's *default* is bf16,
which moved the gate's C5 by up to 0.43 on a random-init ResNet-18 (see
``docs/openvino.md``); the runtime must run what the accuracy gate measured.

Features between the graphs. :meth:`OpenVinoBackend.run_gate` gives each run fresh,
OpenVINO-owned output tensors for C2..C5 (empty tensors the CPU plugin resizes and writes
into), so the features of one batch stay valid while the next batch is gated (the
Inspector overlaps the two on different threads); an infer request's own output tensors are
reused by its next run. :meth:`OpenVinoBackend.select` cuts a consecutive sub-batch as ROI
tensors (views of the batch, no copy) and gathers any other sub-batch with one ``np.take``
on the tensors' host memory into new tensors (one copy, as any gather makes): OpenVINO's
CPU tensors *are* host memory, and a compiled ``Gather`` model took 7.2 ms where
``np.take`` took 0.95 ms and the ROI views 0.16 ms (2 of 4 images, 640x256, ResNet-18:
4.9 MB of features per image; ``benchmarks/openvino_graphs.py``).
:meth:`OpenVinoBackend.run_detector` binds the tensors as the detector's inputs with
``set_tensor`` (no copy). Only P(defective) and the padded detections come back as arrays.

Each graph has one infer request, guarded by a lock: the gate and the detector may run on
two threads at once (each request on one of them); a request itself is not re-entrant.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from defectnet.errors import BackendUnavailableError, ConfigError, EngineError
from defectnet.runtime.backends.base import Backend, RawDetections
from defectnet.runtime.engine import (
    CLASSIFIER,
    CLASSIFIER_OUTPUTS,
    DETECTOR,
    DETECTOR_OUTPUTS,
    FEATURE_NAMES,
    GATE,
    GATE_OUTPUTS,
    Engine,
)
from defectnet.runtime.manifest import INFERENCE_PRECISIONS
from defectnet.runtime.types import BackendName

#: What ``pip`` needs for this backend (the README's install commands include it).
OPENVINO_REQUIREMENT = "openvino>=2026.4,<2027"
#: The OpenVINO device this backend compiles for.
OV_DEVICE = "CPU"


def import_openvino() -> Any:
    """The ``openvino`` module, or a BackendUnavailableError saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise BackendUnavailableError(
            f"the openvino backend needs OpenVINO, which is not installed here ({e}); pip install "
            f"'{OPENVINO_REQUIREMENT}' (the README's install commands include it), or use --backend onnxruntime"
        ) from None
    return openvino


def openvino_available() -> bool:
    """True when ``import openvino`` works (nothing is compiled)."""
    try:
        import_openvino()
    except BackendUnavailableError:
        return False
    return True


def openvino_version() -> str | None:
    try:
        return str(import_openvino().get_version())
    except BackendUnavailableError:
        return None


def cpu_capabilities(core: Any | None = None) -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (e.g. ``FP32``, ``BF16``, ``FP16``,
    ``INT8``); which half precision the CPU runs natively."""
    ov = import_openvino()
    core = core if core is not None else ov.Core()
    return tuple(str(c) for c in core.get_property(OV_DEVICE, "OPTIMIZATION_CAPABILITIES"))


def compile_config(inference_precision: str = "f32", threads: int = 0) -> dict[str, Any]:
    """The CPU compile properties of one graph: explicit inference precision (see the module
    docstring), latency mode with one stream (one image or batch at a time, every thread on
    it), ``threads`` intra-op threads (0 = OpenVINO's default: all cores)."""
    ov = import_openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    if inference_precision not in INFERENCE_PRECISIONS:
        raise ConfigError(f"OpenVINO inference precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                          f"got {inference_precision!r}")
    ov_type = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}[inference_precision]
    config: dict[str, Any] = {hints.inference_precision: ov_type,
                              hints.performance_mode: hints.PerformanceMode.LATENCY, props.num_streams: 1}
    if threads:
        config[props.inference_num_threads] = threads
    return config


def compile_graph(core: Any, path: str | Path, inference_precision: str = "f32", threads: int = 0,
                  *, name: str = "graph", root: Path | None = None) -> Any:
    """``core.compile_model`` of one ONNX graph file with :func:`compile_config`;
    EngineError naming the graph when OpenVINO cannot read it."""
    try:
        return core.compile_model(core.read_model(str(path)), OV_DEVICE, compile_config(inference_precision, threads))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for bad graphs
        where = f" of {root}" if root is not None else ""
        raise EngineError(f"OpenVINO cannot compile the {name} graph{where} ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else e}); the file is corrupt or "
                          f"from an incompatible exporter -- re-export it with defectnet-export, or run it "
                          "with --backend onnxruntime") from None


def _fresh(ov: Any, element_type: Any) -> Any:
    """An empty OpenVINO-owned tensor the plugin resizes and fills (a new buffer per run)."""
    return ov.Tensor(element_type, ov.Shape([0, 0, 0, 0]))


class OvFeatures(dict[str, Any]):
    """``{level: openvino.Tensor}`` plus the host arrays they share memory with (kept alive)."""

    keep: Any = None


class _Request:
    """One compiled graph and its infer request (one at a time: a lock)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()
        self.inputs = [p.any_name for p in compiled.inputs]
        self.outputs = [p.any_name for p in compiled.outputs]


class OpenVinoBackend(Backend):
    """The engine's ONNX graphs on OpenVINO's CPU plugin (see the module docstring).

    threads: ``INFERENCE_NUM_THREADS`` per graph (0 = OpenVINO's default). inference_precision:
    one precision for every graph (the build's candidate timing uses it), None = each graph
    entry's ``inference_precision`` (``f32`` when absent).
    """

    name = BackendName.OPENVINO

    def __init__(self, engine: Engine, threads: int = 0, inference_precision: str | None = None) -> None:
        if inference_precision is not None and inference_precision not in INFERENCE_PRECISIONS:
            raise ConfigError(f"inference_precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                              f"got {inference_precision!r}")
        self.engine = engine
        self.threads = threads
        self._precision_override = inference_precision
        self._graphs: dict[str, _Request] = {}
        self._ov: Any = None
        self.device = "cpu"

    def inference_precision(self, graph: str) -> str:
        """The ``INFERENCE_PRECISION_HINT`` graph ``graph`` is compiled with."""
        if self._precision_override is not None:
            return self._precision_override
        entry = self.engine.manifest.graphs.get(graph)
        return (entry.inference_precision if entry is not None and entry.inference_precision else None) or "f32"

    def load(self) -> None:
        if self._graphs:
            return
        ov = import_openvino()
        core = ov.Core()
        graphs: dict[str, _Request] = {}
        for name, path in self.engine.graphs.items():
            graphs[name] = _Request(compile_graph(core, path, self.inference_precision(name), self.threads,
                                                  name=name, root=self.engine.root))
        self._ov = ov
        self._graphs = graphs

    # -- helpers ----------------------------------------------------------------------------
    def _graph(self, name: str) -> _Request:
        self.load()
        try:
            return self._graphs[name]
        except KeyError:
            raise EngineError(f"engine {self.engine.root} has no {name} graph for the openvino backend") from None

    def _host(self, array: np.ndarray) -> Any:
        """A tensor sharing the (C-contiguous) array's memory; the tensor keeps the array alive."""
        return import_openvino().Tensor(np.ascontiguousarray(array), shared_memory=True)

    def _image_inputs(self, images: Tensor, image_sizes: Tensor) -> dict[str, Any]:
        return {"images": self._host(images.contiguous().numpy()),
                "image_sizes": self._host(image_sizes.to(torch.int64).contiguous().numpy())}

    def _infer(self, name: str, inputs: Mapping[str, Any], fresh: tuple[str, ...] = ()) -> dict[str, Any]:
        """Run graph ``name``; outputs in ``fresh`` get new tensors (kept by the caller), the
        others are copied to new arrays (the request reuses its own output tensors)."""
        g = self._graph(name)
        with g.lock:
            req = g.request
            for key, value in inputs.items():
                req.set_tensor(key, value)
            out: dict[str, Any] = {}
            for key in fresh:
                out[key] = _fresh(self._ov, self._ov.Type.f32)
                req.set_tensor(key, out[key])
            req.infer()
            for key in g.outputs:
                if key not in out:
                    out[key] = np.array(req.get_tensor(key).data, copy=True)
        return out

    # -- the interface ----------------------------------------------------------------------
    def run_classifier(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        if CLASSIFIER not in self.engine.graphs:
            return super().run_classifier(images, image_sizes)
        out = self._infer(CLASSIFIER, self._image_inputs(images, image_sizes))
        return torch.from_numpy(out[CLASSIFIER_OUTPUTS[0]]).float()

    def run_gate(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, OvFeatures]:
        out = self._infer(GATE, self._image_inputs(images, image_sizes), FEATURE_NAMES)
        p = torch.from_numpy(out[GATE_OUTPUTS[0]]).float()
        return p, OvFeatures((k, out[k]) for k in FEATURE_NAMES)

    def select(self, features: Mapping[str, Any], index: Tensor) -> Mapping[str, Any]:
        idx = index.to(torch.int64).cpu()
        n = int(features[FEATURE_NAMES[0]].shape[0])
        k = int(idx.numel())
        first = int(idx[0]) if k else 0
        if k == n and bool((idx == torch.arange(n)).all()):
            return features
        if k and bool((idx == torch.arange(first, first + k)).all()):  # consecutive: ROI views
            self.load()
            ov = self._ov
            views = OvFeatures()
            for name in FEATURE_NAMES:
                t = features[name]
                shape = list(t.shape)
                views[name] = ov.Tensor(t, ov.Coordinate([first] + [0] * (len(shape) - 1)),
                                        ov.Coordinate([first + k, *shape[1:]]))
            views.keep = features  # the ROI tensors' owner
            return views
        rows = idx.numpy()
        gathered = {name: np.take(features[name].data, rows, axis=0) for name in FEATURE_NAMES}
        return self.features_from_host(gathered)  # new arrays, shared by the tensors (kept alive)

    def run_detector(self, features: Mapping[str, Any], image_sizes: Tensor) -> RawDetections:
        inputs = {**{name: features[name] for name in FEATURE_NAMES},
                  "image_sizes": self._host(image_sizes.to(torch.int64).contiguous().numpy())}
        out = self._infer(DETECTOR, inputs)
        boxes, scores, labels, count = (torch.from_numpy(out[k]) for k in DETECTOR_OUTPUTS)
        return RawDetections(boxes.float(), scores.float(), labels.to(torch.int64), count.to(torch.int64))

    def features_to_host(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """OpenVINO tensors -> new numpy arrays."""
        return {name: np.array(value.data, copy=True) for name, value in features.items()}

    def features_as_arrays(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Numpy views of the tensors' memory (no copy; valid while ``features`` lives)."""
        return {name: value.data for name, value in features.items()}

    def features_from_host(self, features: Mapping[str, np.ndarray]) -> OvFeatures:
        """Numpy arrays -> tensors that share their memory (the arrays are kept alive)."""
        self.load()
        out = OvFeatures((name, self._host(value)) for name, value in features.items())
        out.keep = dict(features)
        return out

    def features_from_arrays(self, features: Mapping[str, np.ndarray]) -> OvFeatures:
        return self.features_from_host(features)


__all__ = ["OPENVINO_REQUIREMENT", "OpenVinoBackend", "OvFeatures", "compile_config", "compile_graph",
           "cpu_capabilities", "import_openvino", "openvino_available", "openvino_version"]
