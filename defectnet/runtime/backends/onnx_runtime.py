"""The ONNX Runtime backend: the engine's ONNX graphs, features kept between them.

onnxruntime is imported lazily (when the backend loads). The features stay as
``OrtValue``s on the session's device between the graphs (IOBinding); the sub-batch
selection runs as a tiny in-memory ``Gather`` graph on the same device, so features never
visit numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from defectnet.errors import BackendUnavailableError, EngineError
from defectnet.runtime.backends.base import Backend, RawDetections
from defectnet.runtime.engine import (
    CLASSIFIER,
    DETECTOR,
    DETECTOR_OUTPUTS,
    FEATURE_NAMES,
    GATE,
    GATE_OUTPUTS,
    Engine,
)
from defectnet.runtime.types import BackendName

CPU_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
_ACCELERATED = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def resolve_providers(providers: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``None``/``"cpu"`` -> CPU only; ``"auto"`` -> TensorRT/CUDA providers when this
    onnxruntime has them, then CPU; a list -> exactly those (each must be available)."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    if providers is None or providers == "cpu":
        return list(CPU_PROVIDERS)
    if providers == "auto":
        return [p for p in _ACCELERATED if p in available] + list(CPU_PROVIDERS)
    wanted = [providers] if isinstance(providers, str) else list(providers)
    missing = [p for p in wanted if p not in available]
    if missing:
        raise BackendUnavailableError(
            f"onnxruntime {ort.__version__} here has no {', '.join(missing)} (available: {', '.join(available)}); "
            "install onnxruntime-gpu for CUDA/TensorRT, or use the CPU provider")
    return wanted


def _selector_model(opset: int = 17) -> bytes:
    """A 5-node graph: Gather(axis 0) of c2..c5 by an int64 index (sub-batch selection on
    the session's device)."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", f"ch_{n}", f"h_{n}", f"w_{n}"])
              for n in FEATURE_NAMES]
    inputs.append(helper.make_tensor_value_info("index", TensorProto.INT64, ["k"]))
    outputs = [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, ["k", f"ch_{n}", f"h_{n}", f"w_{n}"])
               for n in FEATURE_NAMES]
    nodes = [helper.make_node("Gather", [n, "index"], [f"{n}_out"], axis=0) for n in FEATURE_NAMES]
    graph = helper.make_graph(nodes, "select_sub_batch", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


class OnnxRuntimeBackend(Backend):
    """The engine's ONNX graphs in ONNX Runtime (see the module docstring).

    providers: see :func:`resolve_providers` (default: CPU). Features stay on the first
    provider's device as OrtValues; only P(defective) and the padded detections come back
    to the host. allow_spinning: let ONNX Runtime's intra-op threads busy-wait after a run
    (its default). Off here: the pipeline decodes and resizes with PyTorch in the same
    process, and spinning ORT threads made that preprocessing ~10x slower on 2 cores
    (12 ms vs 1.2 ms per 612x250 image, ResNet-18 INT8 gate, 2 threads each).
    """

    name = BackendName.ONNXRUNTIME

    def __init__(self, engine: Engine, providers: str | list[str] | tuple[str, ...] | None = None,
                 intra_op_threads: int = 0, allow_spinning: bool = False) -> None:
        self.engine = engine
        self._providers_arg = providers
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self._sessions: dict[str, Any] = {}
        self.providers: list[str] = []
        self.device = "cpu"

    def load(self) -> None:
        if self._sessions:
            return
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise BackendUnavailableError(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
        self.providers = resolve_providers(self._providers_arg)
        self.device = "cuda" if self.providers[0] in _ACCELERATED else "cpu"
        options = ort.SessionOptions()
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        graphs = {name: str(path) for name, path in self.engine.graphs.items()}
        for name, source in [*graphs.items(), ("select", _selector_model())]:
            try:
                self._sessions[name] = ort.InferenceSession(source, options, providers=self.providers)
            except Exception as e:  # noqa: BLE001 - ORT raises several types for bad graphs
                self._sessions.clear()
                raise EngineError(f"onnxruntime cannot load the {name} graph of {self.engine.root} "
                                  f"({type(e).__name__}: {e}); the file is corrupt or from an incompatible "
                                  f"exporter — re-export it with defectnet-export --out {self.engine.root}") from None

    # -- helpers ----------------------------------------------------------------------------
    def _ortvalue(self, array: np.ndarray) -> Any:
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def _run(self, name: str, inputs: dict[str, Any], outputs: dict[str, str]) -> list[Any]:
        """Run session ``name`` with OrtValue inputs; outputs bound to 'cpu' or the device."""
        self.load()
        session = self._sessions[name]
        binding = session.io_binding()
        for key, value in inputs.items():
            binding.bind_ortvalue_input(key, value)
        for key, where in outputs.items():
            binding.bind_output(key, where, 0)
        session.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def _image_inputs(self, images: Tensor, image_sizes: Tensor) -> dict[str, Any]:
        return {"images": self._ortvalue(images.contiguous().numpy()),
                "image_sizes": self._ortvalue(image_sizes.to(torch.int64).numpy())}

    # -- the interface ----------------------------------------------------------------------
    def run_classifier(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        if CLASSIFIER not in self.engine.graphs:
            return super().run_classifier(images, image_sizes)
        (p,) = self._run(CLASSIFIER, self._image_inputs(images, image_sizes), {"p_defective": "cpu"})
        return torch.from_numpy(p.numpy()).float()

    def run_gate(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, dict[str, Any]]:
        where = {"p_defective": "cpu", **dict.fromkeys(FEATURE_NAMES, self.device)}
        out = self._run(GATE, self._image_inputs(images, image_sizes), where)
        values = dict(zip(GATE_OUTPUTS, out))
        p = torch.from_numpy(values.pop("p_defective").numpy()).float()
        return p, values

    def select(self, features: dict[str, Any], index: Tensor) -> dict[str, Any]:
        n = int(features[FEATURE_NAMES[0]].shape()[0])
        if index.numel() == n and bool((index.cpu() == torch.arange(n)).all()):
            return features
        inputs = {**features, "index": self._ortvalue(index.to(torch.int64).numpy())}
        out = self._run("select", inputs, {f"{k}_out": self.device for k in FEATURE_NAMES})
        return dict(zip(FEATURE_NAMES, out))

    def features_to_host(self, features: dict[str, Any]) -> dict[str, np.ndarray]:
        """OrtValues (on the session's device) -> new numpy arrays."""
        return {name: np.array(value.numpy(), copy=True) for name, value in features.items()}

    def features_as_arrays(self, features: dict[str, Any]) -> dict[str, np.ndarray]:
        """Views of the OrtValues' memory on the CPU (no copy); copies from a GPU."""
        if self.device != "cpu":
            return self.features_to_host(features)
        return {name: value.numpy() for name, value in features.items()}

    def features_from_host(self, features: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """numpy arrays -> OrtValues on the session's device (what :meth:`run_detector` binds;
        on the CPU they share the arrays' memory, which ``OrtValue`` keeps referenced)."""
        self.load()
        return {name: self._ortvalue(value) for name, value in features.items()}

    def run_detector(self, features: dict[str, Any], image_sizes: Tensor) -> RawDetections:
        inputs = {**features, "image_sizes": self._ortvalue(image_sizes.to(torch.int64).numpy())}
        out = self._run(DETECTOR, inputs, dict.fromkeys(DETECTOR_OUTPUTS, "cpu"))
        boxes, scores, labels, count = (torch.from_numpy(v.numpy()) for v in out)
        return RawDetections(boxes.float(), scores.float(), labels.to(torch.int64), count.to(torch.int64))



__all__ = ["CPU_PROVIDERS", "OnnxRuntimeBackend", "resolve_providers"]
