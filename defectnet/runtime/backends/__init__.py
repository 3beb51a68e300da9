"""Inference backends behind one small interface (:mod:`.base`), and the one factory.

* :class:`OnnxRuntimeBackend` (:mod:`.onnx_runtime`): the engine's ONNX graphs; CPU by default.
* :class:`TorchBackend` (:mod:`.pytorch`): the PyTorch checkpoint the engine was exported from.
* ``TensorRtBackend`` (:mod:`.trt`): the folder's TensorRT plans; imported lazily (NVIDIA GPU).

Build backends with :func:`make_backend`; every caller (Pipeline, Inspector, bench,
export verification) goes through it.
"""

from __future__ import annotations

from defectnet.errors import EngineError
from defectnet.runtime.backends.base import Backend, RawDetections
from defectnet.runtime.backends.onnx_runtime import CPU_PROVIDERS, OnnxRuntimeBackend, resolve_providers
from defectnet.runtime.backends.pytorch import TorchBackend
from defectnet.runtime.engine import Engine

BACKENDS: tuple[str, ...] = (OnnxRuntimeBackend.name, TorchBackend.name, "tensorrt")


def make_backend(engine: Engine, name: str = "onnxruntime", *, providers: str | list[str] | None = None,
                 device: str = "cpu") -> Backend:
    """``onnxruntime`` (the engine's graphs), ``torch`` (the checkpoint it was exported from)
    or ``tensorrt`` (the folder's serialized TensorRT engines; imported lazily, on ``cuda``
    when ``device`` is the CPU default)."""
    if name == OnnxRuntimeBackend.name:
        return OnnxRuntimeBackend(engine, providers)
    if name == TorchBackend.name:
        return TorchBackend.from_engine(engine, device)
    if name == "tensorrt":
        from defectnet.runtime.backends.trt import TensorRtBackend

        return TensorRtBackend(engine, "cuda" if device == "cpu" else device)
    raise EngineError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")



__all__ = ["BACKENDS", "CPU_PROVIDERS", "Backend", "OnnxRuntimeBackend", "RawDetections", "TorchBackend",
           "make_backend", "resolve_providers"]
