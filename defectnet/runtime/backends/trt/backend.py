"""The TensorRT backend: serialized engines (plans, :mod:`.plan`) built by
``defectnet-build-engine --backend tensorrt``.

Runtime (TensorRT 10/11 Python API): ``trt.Runtime.deserialize_cuda_engine``, one
execution context per graph, named I/O tensors (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Device buffers are PyTorch CUDA tensors and
the CUDA stream is PyTorch's current stream (no pycuda). The gate's C2..C5 stay on the
device: :meth:`TensorRtBackend.select` is a ``torch.index_select`` on the GPU and the
detector reads those tensors' device pointers directly, so features never visit the host.
Only P(defective) and the padded detections are copied back.

``tensorrt`` is imported lazily: this module, the package and the CLI import without it.
On a machine without an NVIDIA GPU and TensorRT, :meth:`TensorRtBackend.load` raises
:class:`BackendUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from defectnet.errors import BackendUnavailableError, EngineError
from defectnet.runtime.backends.base import Backend, RawDetections, select_rows
from defectnet.runtime.backends.trt import api as trt_api
from defectnet.runtime.backends.trt.api import require_cuda, tensorrt_api
from defectnet.runtime.backends.trt.plan import check_plan, platform_info, read_plan, rebuild_hint
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
from defectnet.runtime.types import BackendName


# ----------------------------------------------------------------------------- runtime
def _torch_dtype(dtype: trt_api.DataType) -> torch.dtype:
    trt = tensorrt_api()
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8,
             trt.int32: torch.int32, trt.int64: torch.int64, trt.uint8: torch.uint8,
             trt.bool: torch.bool, trt.bfloat16: torch.bfloat16}
    try:
        return table[dtype]
    except KeyError:
        raise EngineError(f"TensorRT I/O type {dtype} has no PyTorch equivalent") from None


def _dims(dims: trt_api.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


class _Graph:
    """One deserialized engine + execution context with named I/O."""

    def __init__(self, runtime: trt_api.Runtime, plan: bytes, name: str) -> None:
        trt = tensorrt_api()
        self.name = name
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize the {name} engine; {rebuild_hint(None)}")
        self.engine: trt_api.ICudaEngine = engine
        context = engine.create_execution_context()
        if context is None:
            raise EngineError(f"TensorRT could not create an execution context for the {name} engine "
                              "(out of GPU memory?)")
        self.context: trt_api.IExecutionContext = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, inputs: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        """Run on PyTorch's current stream of ``device``; returns device tensors.

        Every buffer is allocated and consumed on that one stream, so PyTorch's caching
        allocator cannot hand an input's memory to a later allocation before TensorRT has
        read it (reuse is stream-ordered)."""
        ctx = self.context
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise EngineError(f"the {self.name} engine needs inputs {sorted(missing)}")
        for name in self.inputs:
            t = inputs[name].to(device=device, dtype=_torch_dtype(self.engine.get_tensor_dtype(name))).contiguous()
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise EngineError(f"input {name} shape {tuple(t.shape)} is outside the {self.name} engine's "
                                  "optimisation profile; rebuild with a larger --max-shape")
            ctx.set_tensor_address(name, t.data_ptr())
        outputs: dict[str, Tensor] = {}
        for name in self.outputs:
            shape = _dims(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"output {name} of the {self.name} engine has a data-dependent shape {shape}; "
                                  "the exported graphs pad their outputs, re-export with defectnet-export")
            out = torch.empty(shape, dtype=_torch_dtype(self.engine.get_tensor_dtype(name)), device=device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        stream = torch.cuda.current_stream(device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run the {self.name} engine")
        return outputs


class TensorRtBackend(Backend):
    """Serialized TensorRT engines of an engine folder (see the module docstring).

    The folder's manifest lists the plans under ``tensorrt.engines`` (graph name ->
    ``{"file", "sha256"}``); each plan's header must match this machine.
    """

    name = BackendName.TENSORRT

    def __init__(self, engine: Engine, device: str | torch.device = "cuda") -> None:
        self.engine = engine
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendUnavailableError(f"the TensorRT backend runs on a CUDA device, not {self.device}; "
                                          "pass --device cuda")
        self._graphs: dict[str, _Graph] = {}

    def plan_paths(self) -> dict[str, tuple[Path, str | None]]:
        """graph name -> (plan file, expected ONNX SHA-256) from the manifest."""
        manifest = self.engine.manifest
        if manifest.tensorrt is None or not manifest.tensorrt.engines:
            raise EngineError(f"engine folder {self.engine.root} has no TensorRT engines (manifest 'tensorrt' "
                              f"section); build them with defectnet-build-engine --backend tensorrt --engine "
                              f"{self.engine.root}")
        out: dict[str, tuple[Path, str | None]] = {}
        for name in self.engine.graphs:
            entry = manifest.tensorrt.engines.get(name)
            if entry is None:
                raise EngineError(f"engine folder {self.engine.root} lacks the TensorRT {name} engine; "
                                  f"{rebuild_hint(self.engine.root)}")
            graph = manifest.graphs.get(name)
            out[name] = (self.engine.root / entry.file, graph.sha256 if graph is not None else None)
        return out

    def load(self) -> None:
        if self._graphs:
            return
        trt = tensorrt_api()  # BackendUnavailableError without TensorRT
        require_cuda()

        here = platform_info(self.device)
        plans = {}
        for name, (path, onnx_sha) in self.plan_paths().items():
            header, plan = read_plan(path)
            check_plan(header, here, onnx_sha256=onnx_sha, root=self.engine.root, name=name)
            plans[name] = plan
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # ROIAlign_TRT for the detector's RoiAlign
        runtime = trt.Runtime(logger)
        with torch.cuda.device(self.device):
            self._graphs = {name: _Graph(runtime, plan, name) for name, plan in plans.items()}
        self._runtime = runtime

    def _run(self, name: str, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.load()
        with torch.cuda.device(self.device):
            return self._graphs[name](inputs, self.device)

    def _image_inputs(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        return {"images": images.to(self.device, non_blocking=True),
                "image_sizes": image_sizes.to(self.device, dtype=torch.int64, non_blocking=True)}

    def run_classifier(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        if CLASSIFIER not in self.engine.graphs:
            return super().run_classifier(images, image_sizes)
        out = self._run(CLASSIFIER, self._image_inputs(images, image_sizes))
        return out[CLASSIFIER_OUTPUTS[0]].float().cpu()

    def run_gate(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self._run(GATE, self._image_inputs(images, image_sizes))
        p = out[GATE_OUTPUTS[0]].float().cpu()  # synchronises the stream; features stay on the GPU
        return p, {k: out[k] for k in FEATURE_NAMES}

    def select(self, features: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        return select_rows(features, index)

    def run_detector(self, features: dict[str, Tensor], image_sizes: Tensor) -> RawDetections:
        inputs = {**features, "image_sizes": image_sizes.to(self.device, dtype=torch.int64)}
        out = self._run(DETECTOR, inputs)
        boxes, scores, labels, count = (out[k].cpu() for k in DETECTOR_OUTPUTS)
        return RawDetections(boxes.float(), scores.float(), labels.to(torch.int64), count.to(torch.int64))


__all__ = ["TensorRtBackend"]
