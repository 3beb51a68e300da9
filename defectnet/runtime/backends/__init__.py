"""Inference backends behind one small interface (:mod:`.base`), and the one factory.

* :class:`OnnxRuntimeBackend` (:mod:`.onnx_runtime`): the engine's ONNX graphs; CPU by default.
* :class:`TorchBackend` (:mod:`.pytorch`): the PyTorch checkpoint the engine was exported from.
* ``TensorRtBackend`` (:mod:`.trt`): the folder's TensorRT plans; imported lazily (NVIDIA GPU).
* ``OpenVinoBackend`` (:mod:`.openvino`): the engine's ONNX graphs on OpenVINO's CPU plugin;
  imported lazily (the package imports without openvino).
* ``auto``: each graph on the backend the engine's manifest names for it
  (:mod:`.per_graph`; one backend when every graph names the same).

Build backends with :func:`make_backend` and a :class:`BackendOptions` (:mod:`.options`:
threads, device, providers, spinning; validated on creation); every caller (Pipeline,
Inspector, bench, soak benchmark, export verification) goes through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from defectnet.errors import ConfigError, EngineError
from defectnet.runtime.backends.base import Backend, RawDetections
from defectnet.runtime.backends.onnx_runtime import CPU_PROVIDERS, OnnxRuntimeBackend, resolve_providers
from defectnet.runtime.backends.options import BackendOptions
from defectnet.runtime.backends.pytorch import TorchBackend
from defectnet.runtime.engine import Engine
from defectnet.runtime.types import BackendName

if TYPE_CHECKING:
    from defectnet.model import DefectNet, TwoModel

#: The backend names as plain strings (click choices), in BackendName order.
BACKENDS: tuple[str, ...] = tuple(b.value for b in BackendName)


def make_backend(source: Engine | DefectNet | TwoModel, name: BackendName | str = BackendName.AUTO,
                 options: BackendOptions | None = None) -> Backend:
    """The one backend factory (not loaded yet: :meth:`Backend.load` or the Pipeline does that).

    source: an :class:`Engine` (every backend: ``onnxruntime`` and ``openvino`` run its
    graphs, ``torch`` the checkpoint it was exported from, ``tensorrt`` its serialized plans,
    ``auto`` each graph on the backend the manifest names for it), or a PyTorch model in
    memory (``torch``, or ``auto``, which means torch there). options: :class:`BackendOptions` (default:
    CPU, the libraries' thread defaults); see :mod:`.options` for which backend uses which
    field, and why the torch thread count is process-wide.
    """
    opts = options if options is not None else BackendOptions()
    if not isinstance(opts, BackendOptions):
        raise ConfigError(f"options must be a BackendOptions, got {type(opts).__name__}")
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if not isinstance(source, Engine):
        if name not in (TorchBackend.name, BackendName.AUTO):
            raise ConfigError(f"a PyTorch model in memory runs only on the torch backend, not {name!r}; export it "
                              "to an engine folder (defectnet-export) for onnxruntime or tensorrt")
        _check_torch_threads(opts.threads)
        return TorchBackend(source, opts.device)
    if name == OnnxRuntimeBackend.name:
        return OnnxRuntimeBackend(source, opts.provider_list, intra_op_threads=opts.threads,
                                  allow_spinning=opts.allow_spinning)
    if name == TorchBackend.name:
        _check_torch_threads(opts.threads)
        return TorchBackend.from_engine(source, opts.device)
    if name == BackendName.AUTO:
        from defectnet.runtime.backends.per_graph import backend_for_engine

        return backend_for_engine(source, lambda engine, backend: make_backend(engine, backend, opts))
    if name == BackendName.OPENVINO:
        from defectnet.runtime.backends.openvino import OpenVinoBackend

        if opts.device != "cpu":
            raise ConfigError(f"the openvino backend runs on the CPU here, not on {opts.device!r}; use device 'cpu' "
                              "(or --backend tensorrt / onnxruntime with CUDA providers for an NVIDIA GPU)")
        return OpenVinoBackend(source, threads=opts.threads)
    from defectnet.runtime.backends.trt import TensorRtBackend

    return TensorRtBackend(source, "cuda" if opts.device == "cpu" else opts.device)


def _check_torch_threads(threads: int) -> None:
    """PyTorch has one intra-op pool per process: never change it here, only check it."""
    import torch

    if threads and torch.get_num_threads() != threads:
        raise ConfigError(
            f"the torch backend was asked for {threads} threads, but this process runs {torch.get_num_threads()} "
            f"torch threads and PyTorch has one thread pool per process; call torch.set_num_threads({threads}) "
            "once at start-up (defectnet-bench --threads does), or leave threads at 0")


__all__ = ["BACKENDS", "CPU_PROVIDERS", "Backend", "BackendOptions", "OnnxRuntimeBackend", "RawDetections",
           "TorchBackend", "make_backend", "resolve_providers"]
