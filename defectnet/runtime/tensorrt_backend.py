"""TensorRT backend: serialized engines (plans) built by ``defectnet-build-engine --backend tensorrt``.

This module owns the plan file format (the builder in :mod:`defectnet.engine_build.tensorrt`
writes it, the runtime reads it)::

    MAGIC (b"DEFECTNET-TRT-PLAN\\n") | uint32 little-endian header length | JSON header | plan bytes

The JSON header is the engine's provenance: TensorRT version, CUDA version, GPU name and
compute capability, SHA-256 of the ONNX graph it was built from, precision, optimisation
profiles, SHA-256 of the plan bytes. A TensorRT engine only runs on the TensorRT version
and GPU model it was built for, so :func:`check_plan` refuses any mismatch with an
:class:`EngineError` that says to rebuild with ``defectnet-build-engine``.

Runtime (TensorRT 10/11 Python API): ``trt.Runtime.deserialize_cuda_engine``, one
execution context per graph, named I/O tensors (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Device buffers are PyTorch CUDA tensors and
the CUDA stream is PyTorch's current stream (no pycuda). The gate's C2..C5 stay on the
device: :meth:`TensorRtBackend.select` is a ``torch.index_select`` on the GPU and the
detector reads those tensors' device pointers directly, so features never visit the host.
Only P(defective) and the padded detections are copied back.

``tensorrt`` is imported lazily: this module, the package and the CLI import without it.
On a machine without an NVIDIA GPU and TensorRT, :meth:`TensorRtBackend.load` raises
:class:`BackendUnavailableError`. Note that ``import tensorrt`` can succeed without
TensorRT (the ``tensorrt-stubs`` type stubs install an empty namespace package), so
availability is tested with ``hasattr(trt, "Builder")``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from defectnet.errors import BackendUnavailableError, EngineError
from defectnet.runtime.backends import Backend, RawDetections
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

if TYPE_CHECKING:
    from defectnet.runtime import trt_api

PLAN_MAGIC = b"DEFECTNET-TRT-PLAN\n"
PLAN_FORMAT_VERSION = 1
PLAN_SUFFIX = ".plan"
INSTALL_HINT = ("needs an NVIDIA GPU with TensorRT (pip install tensorrt, or 'pip install defectnet[tensorrt]'; "
                "TensorRT 10+ and a CUDA build of PyTorch)")


def rebuild_hint(root: str | os.PathLike[str] | None) -> str:
    where = f" --out {root}" if root is not None else ""
    return (f"rebuild with defectnet-build-engine --backend tensorrt --engine EXPORTED_DIR{where} on this machine "
            "(TensorRT engines are tied to the TensorRT version and the GPU)")


# ----------------------------------------------------------------------------- availability
def import_tensorrt() -> Any:
    """The real ``tensorrt`` module, or :class:`BackendUnavailableError` (see the module docstring)."""
    try:
        import tensorrt as trt_module
    except ImportError:
        raise BackendUnavailableError(f"the TensorRT backend {INSTALL_HINT}: tensorrt is not installed") from None
    if not hasattr(trt_module, "Builder"):
        raise BackendUnavailableError(f"the TensorRT backend {INSTALL_HINT}: only the tensorrt type stubs are "
                                      "installed here, not TensorRT itself")
    return trt_module


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"the TensorRT backend {INSTALL_HINT}: PyTorch sees no CUDA device "
                                      f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")


def tensorrt_available() -> bool:
    """True when real TensorRT and a CUDA device are usable (never raises)."""
    try:
        import_tensorrt()
        require_cuda()
    except BackendUnavailableError:
        return False
    return True


def platform_info(device: int | str | torch.device = 0) -> dict[str, Any]:
    """What an engine is tied to, for this process: TensorRT, CUDA, GPU, compute capability."""
    trt_module = import_tensorrt()
    require_cuda()
    dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"tensorrt": str(trt_module.__version__), "cuda": str(torch.version.cuda),
            "gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


# ----------------------------------------------------------------------------- plan files
def write_plan(path: str | os.PathLike[str], header: Mapping[str, Any], plan: bytes) -> Path:
    """Write a plan file (atomic). ``header`` gets ``format``, ``plan_sha256``, ``plan_bytes``."""
    from defectnet.io import atomic_write

    full = {**header, "format": "defectnet-tensorrt-plan", "format_version": PLAN_FORMAT_VERSION,
            "plan_sha256": hashlib.sha256(plan).hexdigest(), "plan_bytes": len(plan)}
    blob = json.dumps(full, sort_keys=True).encode("utf-8")

    def write(f: Any) -> None:
        f.write(PLAN_MAGIC)
        f.write(struct.pack("<I", len(blob)))
        f.write(blob)
        f.write(plan)

    return atomic_write(path, write)


def read_plan_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    return _read(path, with_plan=False)[0]


def read_plan(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """(header, plan bytes); EngineError for a file that is not a complete plan file."""
    return _read(path, with_plan=True)


def _read(path: str | os.PathLike[str], *, with_plan: bool) -> tuple[dict[str, Any], bytes]:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(len(PLAN_MAGIC))
            if magic != PLAN_MAGIC:
                raise EngineError(f"{p} is not a defectnet TensorRT plan (no provenance header); {rebuild_hint(None)}")
            (n,) = struct.unpack("<I", f.read(4))
            header = json.loads(f.read(n).decode("utf-8"))
            plan = f.read() if with_plan else b""
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f"cannot read the TensorRT plan {p} ({e}); {rebuild_hint(None)}") from None
    if not isinstance(header, dict) or header.get("format_version") != PLAN_FORMAT_VERSION:
        raise EngineError(f"{p} has an unknown plan header version; {rebuild_hint(None)}")
    if with_plan and (len(plan) != header.get("plan_bytes")
                      or hashlib.sha256(plan).hexdigest() != header.get("plan_sha256")):
        raise EngineError(f"the TensorRT plan {p} is truncated or corrupt (size/SHA-256 differ from its header); "
                          f"copy it again or {rebuild_hint(None)}")
    return header, plan


def check_plan(header: Mapping[str, Any], platform: Mapping[str, Any], *, onnx_sha256: str | None,
               root: str | os.PathLike[str] | None, name: str) -> None:
    """Refuse a plan built for another TensorRT, GPU or CUDA major version, or from another
    ONNX graph than the engine folder's (EngineError naming each difference)."""
    problems = []
    for key, label in (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability")):
        if str(header.get(key)) != str(platform.get(key)):
            problems.append(f"{label} {header.get(key)} (built) vs {platform.get(key)} (here)")
    built_cuda, here_cuda = str(header.get("cuda", "")), str(platform.get("cuda", ""))
    if built_cuda.split(".")[0] != here_cuda.split(".")[0]:
        problems.append(f"CUDA {built_cuda} (built) vs {here_cuda} (here)")
    if onnx_sha256 is not None and header.get("onnx_sha256") != onnx_sha256:
        problems.append("ONNX graph SHA-256 differs from the engine folder's graph")
    if problems:
        raise EngineError(f"the TensorRT {name} engine in {root} does not match this machine: "
                          f"{'; '.join(problems)}; {rebuild_hint(root)}")


def plan_header(*, graph: str, platform: Mapping[str, Any], onnx_sha256: str, precision: str,
                profiles: list[dict[str, Any]], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import defectnet

    return {"graph": graph, **dict(platform), "onnx_sha256": onnx_sha256, "precision": precision,
            "profiles": profiles, "strongly_typed": True, "defectnet": defectnet.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **dict(extra or {})}


# ----------------------------------------------------------------------------- runtime
def _torch_dtype(dtype: trt_api.DataType) -> torch.dtype:
    from defectnet.runtime.trt_api import tensorrt_api

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
        from defectnet.runtime.trt_api import tensorrt_api

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

    name = "tensorrt"

    def __init__(self, engine: Engine, device: str | torch.device = "cuda") -> None:
        self.engine = engine
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendUnavailableError(f"the TensorRT backend runs on a CUDA device, not {self.device}; "
                                          "pass --device cuda")
        self._graphs: dict[str, _Graph] = {}

    def plan_paths(self) -> dict[str, tuple[Path, str | None]]:
        """graph name -> (plan file, expected ONNX SHA-256) from the manifest."""
        section = self.engine.manifest.get("tensorrt")
        entries = section.get("engines") if isinstance(section, Mapping) else None
        if not isinstance(entries, Mapping) or not entries:
            raise EngineError(f"engine folder {self.engine.root} has no TensorRT engines (manifest 'tensorrt' "
                              f"section); build them with defectnet-build-engine --backend tensorrt --engine "
                              f"{self.engine.root}")
        graphs = self.engine.manifest.get("graphs", {})
        out: dict[str, tuple[Path, str | None]] = {}
        for name in self.engine.graphs:
            entry = entries.get(name)
            if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
                raise EngineError(f"engine folder {self.engine.root} lacks the TensorRT {name} engine; "
                                  f"{rebuild_hint(self.engine.root)}")
            sha = graphs.get(name, {}).get("sha256") if isinstance(graphs.get(name), Mapping) else None
            out[name] = (self.engine.root / entry["file"], sha)
        return out

    def load(self) -> None:
        if self._graphs:
            return
        from defectnet.runtime.trt_api import tensorrt_api

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
        n = next(iter(features.values())).shape[0]
        if index.numel() == n and bool((index.cpu() == torch.arange(n)).all()):
            return features
        idx = index.to(self.device)
        return {k: v.index_select(0, idx) for k, v in features.items()}

    def run_detector(self, features: dict[str, Tensor], image_sizes: Tensor) -> RawDetections:
        inputs = {**features, "image_sizes": image_sizes.to(self.device, dtype=torch.int64)}
        out = self._run(DETECTOR, inputs)
        boxes, scores, labels, count = (out[k].cpu() for k in DETECTOR_OUTPUTS)
        return RawDetections(boxes.float(), scores.float(), labels.to(torch.int64), count.to(torch.int64))


__all__ = ["INSTALL_HINT", "PLAN_MAGIC", "PLAN_SUFFIX", "TensorRtBackend", "check_plan", "import_tensorrt",
           "plan_header", "platform_info", "read_plan", "read_plan_header", "rebuild_hint", "require_cuda",
           "tensorrt_available", "write_plan"]
